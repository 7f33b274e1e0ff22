"""Shard planning and household selection: every household in exactly one shard, shards
balanced by work, the plan a pure function of book.json."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.layout import new_run_id, validate_run_id
from cluster.plan import Piece, Plan, bucket_work, part_mask, plan_shards
from rebalancer.book import BookInfo, BucketStats
from rebalancer.errors import RunError
from rebalancer.household import select_households


def info_of(sizes: list[tuple[int, int]]) -> BookInfo:
    """A book.json with buckets of (households, lots)."""
    return BookInfo(as_of=dt.date(2021, 4, 21), n_buckets=len(sizes), buckets=tuple(
        BucketStats(bucket=b, households=h, accounts=2 * h, lots=lots, recent_trades=0, positions=lots // 3,
                    value=1e6) for b, (h, lots) in enumerate(sizes)))


buckets = st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 400_000)), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(buckets, st.floats(1_000, 500_000))
def test_plan_partitions_every_bucket(sizes, shard_work):
    info = info_of(sizes)
    plan = plan_shards(info, shard_work)
    assert [s.shard_id for s in plan.shards] == list(range(len(plan.shards)))
    pieces = [p for s in plan.shards for p in s.pieces]
    # each bucket is cut into parts 0..parts-1, each part in exactly one shard
    for b in range(info.n_buckets):
        mine = sorted((p.part, p.parts) for p in pieces if p.bucket == b)
        assert mine == [(k, mine[0][1]) for k in range(mine[0][1])]
    assert sum(s.work for s in plan.shards) == pytest.approx(sum(bucket_work(b) for b in info.buckets))
    assert plan.households == pytest.approx(info.total("households"))
    # same book.json, same plan; the plan survives run.json
    assert plan_shards(info, shard_work) == plan
    assert Plan.from_json(plan.to_json()) == plan


@settings(max_examples=100, deadline=None)
@given(buckets.filter(lambda s: sum(h * 40 + lots * 4 // 3 for h, lots in s) > 0), st.floats(5_000, 200_000))
def test_plan_balances_work(sizes, shard_work):
    """A piece of a cut bucket is at most 1.5x the target, a shard at most 2x it unless it is
    one whole (small enough not to cut) bucket; two neighbouring shards together always carry
    more than the target (small buckets are packed, not left alone)."""
    plan = plan_shards(info_of(sizes), shard_work)
    for s in plan.shards:
        assert s.work <= 2 * shard_work + 1e-6
        for p in s.pieces:
            if p.parts > 1:
                assert s.work / len(s.pieces) <= 1.5 * shard_work + 1e-6
    for a, b in zip(plan.shards, plan.shards[1:]):
        assert a.work + b.work > shard_work - 1e-6


def test_plan_cuts_big_buckets_and_packs_small_ones():
    plan = plan_shards(info_of([(1000, 200_000), (10, 1_000), (10, 1_000), (10, 1_000)]), 60_000)
    big = [s for s in plan.shards if s.pieces[0].bucket == 0]
    # bucket 0: 200,000 lots + 66,666 positions + 40 x 1,000 households = 306,666 -> 5 parts
    assert len(big) == 5 and all(len(s.pieces) == 1 and s.pieces[0].parts == 5 for s in big)
    assert [tuple(p.bucket for p in s.pieces) for s in plan.shards[5:]] == [(1, 2, 3)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=200, unique=True), st.integers(1, 50), st.integers(1, 7))
def test_parts_partition_a_bucket(ids, n_buckets, parts):
    hh = np.array(ids, np.int64) * n_buckets  # all in bucket 0
    masks = [part_mask(hh, n_buckets, Piece(0, k, parts)) for k in range(parts)]
    assert (np.sum(masks, axis=0) == 1).all()


def _tables(rows_acc, rows_lots):
    accounts = pa.table({"account_id": pa.array([a for a, _ in rows_acc], pa.int64()),
                         "household_id": pa.array([h for _, h in rows_acc], pa.int64())})
    lots = pa.table({"lot_id": pa.array(range(len(rows_lots)), pa.int64()),
                     "account_id": pa.array([a for a, _ in rows_lots], pa.int64()),
                     "household_id": pa.array([h for _, h in rows_lots], pa.int64())})
    households = pa.table({"household_id": pa.array(sorted({h for _, h in rows_acc}), pa.int64())})
    return {"households": households, "accounts": accounts, "lots": lots, "recent_trades": lots.slice(0, 0)}


def test_select_households_files_rows_under_their_accounts_household():
    # lot 1 says household 20 but its account 1 is in household 10: it goes with household 10;
    # lot 2's account 9 is unknown: it goes with its own household 20.
    t = _tables([(1, 10), (2, 20)], [(1, 10), (1, 20), (9, 20), (2, 20)])
    ten = select_households(t, lambda ids: ids == 10)
    twenty = select_households(t, lambda ids: ids == 20)
    assert ten["lots"]["lot_id"].to_pylist() == [0, 1]
    assert twenty["lots"]["lot_id"].to_pylist() == [2, 3]
    assert ten["accounts"]["account_id"].to_pylist() == [1]
    assert twenty["households"]["household_id"].to_pylist() == [20]


@pytest.mark.parametrize("bad", ["", "..", "a/b", "../x", "-x", "a..b", "x" * 129, "a b", "é"])
def test_bad_run_ids_are_refused(bad):
    with pytest.raises(RunError, match="bad run id"):
        validate_run_id(bad)


def test_new_run_ids_are_valid_and_dated():
    rid = new_run_id(dt.date(2021, 4, 21), dt.datetime(2026, 11, 21, 9, 31, 12, tzinfo=dt.timezone.utc))
    assert validate_run_id(rid) == rid and rid.startswith("2021-04-21-093112-")
