"""One shard's task body (``cluster.shard.run_shard``) in this process, on the hand-made tiny
book: counts in equal counts out, outputs as the contract says, bad files fail the shard with
the file named, bad records reject their household with table, key and field."""
from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest
from bookfactory import AS_OF, N_BUCKETS, add_row, get_row, set_cell, tiny_book_tables, write_book

from cluster.plan import Piece, Shard
from cluster.shard import ShardInputError, ShardJob, run_shard
from rebalancer.outputs import HOUSEHOLDS_SCHEMA, REJECTED_SCHEMA, TRADES_SCHEMA
from rebalancer.storage import open_uri

ALL_ACCOUNTS = {100, 101, 110, 111, 120, 130}


def job(book: str, out: str, pieces=None, run_id: str = "r1") -> ShardJob:
    pieces = pieces or tuple(Piece(b) for b in range(N_BUCKETS))
    return ShardJob(book_uri=book, book_fingerprint="test", out_uri=out, run_id=run_id,
                    shard=Shard(0, tuple(pieces), 4, 6, 100), n_buckets=N_BUCKETS, date=AS_OF)


def read(out: str, run_id: str, table: str):
    return pq.read_table(f"{out}/{run_id}/{table}/shard-00000.parquet")


def run_tables(tmp_path, tables) -> tuple[dict, str]:
    """Write ``tables`` as a book, run its one shard; (completion record, output URI)."""
    book = str(tmp_path / "book")
    write_book(book, tables)
    out = str(tmp_path / "runs")
    return run_shard(job(book, out)), out


@pytest.fixture
def book(tmp_path):
    uri = str(tmp_path / "book")
    write_book(uri, tiny_book_tables())
    return uri


def test_shard_outputs_hold_every_account_once(book, tmp_path):
    out = str(tmp_path / "runs")
    rec = run_shard(job(book, out))
    assert rec["counts"]["accounts_in"] == rec["counts"]["accounts_out"] == 6
    assert rec["counts"]["households_in"] == 4
    trades, hhs, rej = (read(out, "r1", t) for t in ("trades", "households", "rejected"))
    assert trades.schema.equals(TRADES_SCHEMA) and hhs.schema.equals(HOUSEHOLDS_SCHEMA)
    assert rej.schema.equals(REJECTED_SCHEMA) and rej.num_rows == 0
    assert hhs["household_id"].to_pylist() == [10, 11, 12, 13]
    assert sum(hhs["accounts"].to_pylist()) == 6
    assert set(trades["account_id"].to_pylist()) <= ALL_ACCOUNTS
    # the record lists the files as written
    for name, f in rec["files"].items():
        data = open_uri(out).child("r1").read_bytes(f["path"])
        assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"]
    assert rec["totals"]["trades"]["rows"] == trades.num_rows
    assert rec["totals"]["households"]["rebalanced"] == 4
    assert open_uri(out).child("r1").read_json("_shards/shard-00000.json") == rec


def test_shard_rewrites_identical_bytes(book, tmp_path):
    a = run_shard(job(book, str(tmp_path / "runs"), run_id="a"))
    b = run_shard(job(book, str(tmp_path / "runs"), run_id="b"))
    assert a["files"] == b["files"]


def test_parts_of_a_bucket_split_its_households(book, tmp_path):
    """Households 10 and 12 are bucket 0: (10 // 2) % 2 = 1, (12 // 2) % 2 = 0."""
    out = str(tmp_path / "runs")
    run_shard(job(book, out, (Piece(0, 0, 2),), run_id="p0"))
    run_shard(job(book, out, (Piece(0, 1, 2),), run_id="p1"))
    assert read(out, "p0", "households")["household_id"].to_pylist() == [12]
    assert read(out, "p1", "households")["household_id"].to_pylist() == [10]


def test_bad_records_reject_their_household_with_table_key_field(tmp_path):
    t = tiny_book_tables()
    set_cell(t, "lots", 3, "shares", -5.0)  # household 10 (accounts 100, 101)
    rec, out = run_tables(tmp_path, t)
    rej = read(out, "r1", "rejected").to_pylist()
    assert {r["account_id"] for r in rej} == {100, 101}
    assert {(r["table"], r["key"], r["field"], r["stage"]) for r in rej} == {("lots", "lot_id=3", "shares", "data")}
    hhs = read(out, "r1", "households").to_pylist()
    by_id = {h["household_id"]: h for h in hhs}
    assert by_id[10]["status"] == "rejected" and "shares" in by_id[10]["reason"] and by_id[10]["te_after"] is None
    assert {h["status"] for h in hhs if h["household_id"] != 10} <= {"optimal", "optimal_inaccurate", "budget_exceeded"}
    assert rec["counts"]["accounts_in"] == rec["counts"]["accounts_out"] == 6
    assert rec["totals"]["accounts"] == {"rebalanced": 4, "rejected": 2, "traded": rec["totals"]["accounts"]["traded"],
                                         "rejected_by_stage": {"data": 2, "optimization": 0, "error": 0}}


def test_a_target_without_price_rejects_the_households_that_need_it(tmp_path):
    """Security 3 (CCC) is in model 2's target. Household 12 holds it; household 11 does not,
    but its Roth account 111 (model 2, no screen) targets it; account 110's ESG screen removes
    it from 110's target, which does not save the household. Households 10 and 13 (model 1)
    neither hold nor target it."""
    t = tiny_book_tables()
    set_cell(t, "securities", 3, "price", None)
    rec, out = run_tables(tmp_path, t)
    rej = read(out, "r1", "rejected").to_pylist()
    assert {r["household_id"] for r in rej} == {11, 12}
    assert {(r["table"], r["key"], r["field"]) for r in rej} == {("securities", "security_id=3", "price")}
    assert rec["counts"]["accounts_out"] == 6


def test_an_unexpected_failure_rejects_only_that_household(book, tmp_path, monkeypatch):
    import rebalancer.optimize as optimize_mod

    real = optimize_mod._steps

    def flaky(market, hh, *a, **kw):
        if hh.household_id == 11:
            raise ZeroDivisionError("float division by zero")
        return (yield from real(market, hh, *a, **kw))

    monkeypatch.setattr(optimize_mod, "_steps", flaky)
    out = str(tmp_path / "runs")
    rec = run_shard(job(book, out))
    rej = read(out, "r1", "rejected").to_pylist()
    assert {r["account_id"] for r in rej} == {110, 111}
    assert all(r["stage"] == "error" and "ZeroDivisionError" in r["reason"] for r in rej)
    assert rec["totals"]["households"]["rebalanced"] == 3


def test_account_row_without_household_row_is_rejected(tmp_path):
    t = tiny_book_tables()
    row = dict(get_row(t, "accounts", 130), account_id=131, household_id=15, bucket=1)
    add_row(t, "accounts", row)  # household 15 has no households row
    rec, out = run_tables(tmp_path, t)
    rej = read(out, "r1", "rejected").to_pylist()
    assert [(r["account_id"], r["table"], r["key"], r["field"]) for r in rej] == [
        (131, "accounts", "account_id=131", "household_id")]
    assert rec["counts"]["accounts_in"] == rec["counts"]["accounts_out"] == 7


@pytest.mark.parametrize("damage, match", [
    ("delete", "lots/bucket-00001.parquet: file is missing"),
    ("garbage", "lots/bucket-00001.parquet: cannot be read"),
    ("drop_column", "lots/bucket-00001.parquet: cannot be read: lots: missing columns \\['cost_basis'\\]"),
    ("null_key", "lots/bucket-00001.parquet: 1 row\\(s\\) with a null account_id"),
])
def test_an_unusable_file_fails_the_shard_and_names_it(tmp_path, damage, match):
    t = tiny_book_tables()
    if damage == "drop_column":
        t["lots"][1] = t["lots"][1].drop_columns(["cost_basis"])
    if damage == "null_key":
        set_cell(t, "lots", 8, "account_id", None)
    book = str(tmp_path / "book")
    write_book(book, t)
    loc = open_uri(book)
    if damage == "delete":
        loc.delete("lots/bucket-00001.parquet")
    if damage == "garbage":
        loc.write_bytes("lots/bucket-00001.parquet", b"not a parquet file")
    out = str(tmp_path / "runs")
    with pytest.raises(ShardInputError, match=match):
        run_shard(job(book, out))
    assert not open_uri(out).exists("r1"), "a failed shard writes nothing"
