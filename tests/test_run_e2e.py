"""The full-book job end to end on a real local Ray cluster (2 CPUs), with the book and the
outputs on local files and on the local S3-compatible server.

- counts in equal counts out, per shard and in total, and the outputs agree with the summary;
- local files and S3 give byte-identical outputs;
- a book with planted bad rows (negative shares, unknown security, missing price, duplicate lot
  id, account with no household) and an unreadable shard file finishes with exactly those
  accounts rejected and that shard failed, everything else rebalanced; fixing the file and
  re-running the same run id finishes the run;
- a re-run after a deleted shard output rewrites only that shard, with identical bytes.
"""
from __future__ import annotations

import glob
import os
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import local_ray

from cluster.driver import RunRequest, run_book
from cluster.layout import OUTPUT_TABLES
from cluster.plan import bucket_work, plan_shards
from rebalancer.book import Book
from rebalancer.generate import GeneratorSettings, generate_book
from rebalancer.storage import S3Options, open_uri

pytestmark = pytest.mark.slow

BOOK = GeneratorSettings(accounts=240, seed=5, accounts_per_bucket=60)  # 4 buckets
SHARD_WORK = 8_000  # cuts each bucket into parts: several shards, some sharing a bucket


@pytest.fixture(scope="module")
def ray_cluster(s3_server):
    """A real local Ray cluster. Its environment holds the test S3 server's credentials, as an
    instance profile would give them to a real cluster's workers; endpoints travel with the job."""
    with local_ray(aws_env=True):
        yield


@pytest.fixture(scope="module")
def local_book(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("book"))
    generate_book(BOOK, uri, overwrite=True)
    return uri


@pytest.fixture(scope="module")
def local_run(ray_cluster, local_book, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs"))
    outcome = run_book(RunRequest(book=local_book, out=out, run_id="daily", shard_work=SHARD_WORK), stream=None)
    return outcome


def book_table(book_uri: str, name: str, s3=None) -> pa.Table:
    b = Book.open(book_uri, s3)
    return pa.concat_tables([b.read(name, k) for k in range(b.info.n_buckets)])


def outputs(run_uri: str, name: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(f"{run_uri}/{name}/*.parquet"))])


def test_counts_in_equal_counts_out(local_run, local_book):
    s = local_run.summary
    assert local_run.complete and s["complete"]
    manifest = open_uri(local_run.uri).read_json("manifest.json")
    plan = plan_shards(Book.open(local_book).info, SHARD_WORK)
    assert len(manifest["shards"]) == len(plan.shards) > 4  # buckets cut into parts
    assert any(p.parts > 1 for sh in plan.shards for p in sh.pieces)
    for sh in manifest["shards"]:
        assert sh["accounts_in"] == sh["accounts_out"] > 0
    assert manifest["accounts_in"] == manifest["accounts_out"] == manifest["accounts_in_book_json"] == BOOK.accounts

    # every account of the book in exactly one output: its household's row, or rejected
    accounts = book_table(local_book, "accounts")
    hh = outputs(local_run.uri, "households")
    rej = outputs(local_run.uri, "rejected")
    assert sorted(hh["household_id"].to_pylist()) == sorted(book_table(local_book, "households")["household_id"].to_pylist())
    rebalanced = set(pc.filter(hh, pc.not_equal(hh["status"], "rejected"))["household_id"].to_pylist())
    acc_hh = dict(zip(accounts["account_id"].to_pylist(), accounts["household_id"].to_pylist()))
    rejected = set(rej["account_id"].to_pylist())
    assert {a for a, h in acc_hh.items() if h in rebalanced} | rejected == set(acc_hh)
    assert not {a for a, h in acc_hh.items() if h in rebalanced} & rejected

    # trades: in rebalanced households, sells name the account's own lots, never more than held
    tr = outputs(local_run.uri, "trades")
    assert set(tr["household_id"].to_pylist()) <= rebalanced
    lots = book_table(local_book, "lots")
    held = {(l, a): s for l, a, s in zip(lots["lot_id"].to_pylist(), lots["account_id"].to_pylist(), lots["shares"].to_pylist())}
    sold: dict = {}
    for r in pc.filter(tr, pc.equal(tr["side"], "sell")).to_pylist():
        sold[(r["lot_id"], r["account_id"])] = sold.get((r["lot_id"], r["account_id"]), 0.0) + r["shares"]
    assert all(k in held and v <= held[k] + 1e-9 for k, v in sold.items())

    # the summary is the sum of the outputs
    t = s["totals"]
    assert t["trades"]["rows"] == tr.num_rows
    assert t["households"]["rebalanced"] == len(rebalanced)
    ok = pc.filter(hh, pc.not_equal(hh["status"], "rejected"))
    for k in ("taxes_saved", "bought", "sold", "realized_lt_gain", "fee"):
        assert t["usd"][k] == pytest.approx(pc.sum(ok[k]).as_py(), rel=1e-9, abs=1e-6)
    assert s["counts"]["accounts_in"] == BOOK.accounts
    assert s["shards"]["failed"] == [] and s["shards"]["ran_now"] == len(plan.shards)


def test_s3_run_gives_the_same_bytes_as_local_files(local_run, s3_bucket):
    s3 = S3Options.from_env()
    book = s3_bucket.uri("books/demo")
    generate_book(BOOK, book, s3=s3)
    outcome = run_book(RunRequest(book=book, out=s3_bucket.uri("runs"), run_id="daily", shard_work=SHARD_WORK,
                                  s3=s3), stream=None)
    assert outcome.complete
    local = open_uri(local_run.uri).read_json("manifest.json")
    remote = open_uri(outcome.uri, s3).read_json("manifest.json")
    assert remote["shards"] == local["shards"]  # same files, same sizes, same SHA-256
    assert remote["book_fingerprint"] == local["book_fingerprint"]
    keys = s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="runs/daily/trades/")["Contents"]
    assert len(keys) == len(local["shards"])


def test_rerun_after_a_deleted_output_rewrites_only_that_shard(local_run, tmp_path):
    out = str(tmp_path / "runs")
    shutil.copytree(os.path.dirname(local_run.uri), out, dirs_exist_ok=True)
    run_dir = f"{out}/daily"
    before = {p: open(p, "rb").read() for p in glob.glob(f"{run_dir}/*/*.parquet") + [f"{run_dir}/manifest.json"]}
    mtimes = {p: os.stat(p).st_mtime_ns for p in before}
    os.remove(f"{run_dir}/trades/shard-00002.parquet")
    with open(f"{run_dir}/households/shard-00004.parquet", "r+b") as f:  # cut short: not complete either
        f.truncate(100)

    outcome = run_book(RunRequest(book=local_run.summary["book"], out=out, run_id="daily",
                                  shard_work=SHARD_WORK), stream=None)
    assert outcome.complete
    sh = outcome.summary["shards"]
    assert sh["ran_now"] == 2 and sh["complete_before"] == sh["planned"] - 2
    after = {p: open(p, "rb").read() for p in before}
    assert after == before  # identical bytes, manifest included
    touched = {os.path.relpath(p, run_dir) for p in before if os.stat(p).st_mtime_ns != mtimes[p]}
    assert touched == {f"{t}/shard-0000{k}.parquet" for t in OUTPUT_TABLES for k in (2, 4)} | {
        "manifest.json"}


# --- a book with planted bad rows ----------------------------------------------------------

def _rewrite(loc, rel: str, fn) -> None:
    loc.write_parquet(rel, fn(loc.read_parquet(rel)))


def _set(t: pa.Table, row: int, col: str, value) -> pa.Table:
    vals = t[col].to_pylist()
    vals[row] = value
    i = t.schema.get_field_index(col)
    return t.set_column(i, t.schema.field(col).with_nullable(True), pa.array(vals, t.schema.field(col).type))


def test_planted_bad_rows_and_an_unreadable_shard(ray_cluster, tmp_path):
    book = str(tmp_path / "book")
    info = generate_book(BOOK, book)
    loc = open_uri(book)
    lots0 = loc.read_parquet("lots/bucket-00000.parquet")
    hh_of_lot = lots0["household_id"].to_pylist()
    a = hh_of_lot[0]  # negative shares
    b_row = next(i for i, h in enumerate(hh_of_lot) if h != a)
    b = hh_of_lot[b_row]  # unknown security
    _rewrite(loc, "lots/bucket-00000.parquet", lambda t: _set(_set(t, 0, "shares", -10.0), b_row, "security_id", 999_999))
    lots1 = loc.read_parquet("lots/bucket-00001.parquet")
    c = lots1["household_id"][0].as_py()  # duplicate lot id
    _rewrite(loc, "lots/bucket-00001.parquet", lambda t: pa.concat_tables([t, t.slice(0, 1)]))
    hh1 = loc.read_parquet("households/bucket-00001.parquet")
    d = next(h for h in hh1["household_id"].to_pylist() if h != c)  # accounts with no household
    _rewrite(loc, "households/bucket-00001.parquet", lambda t: t.filter(pc.not_equal(t["household_id"], d)))
    # missing price: a security held in bucket 2 and by none of the households above
    held = pa.concat_tables([lots0, lots1, loc.read_parquet("lots/bucket-00002.parquet")])
    pairs = list(zip(held["household_id"].to_pylist(), held["security_id"].to_pylist()))
    taken = {s_ for h, s_ in pairs if h in (a, b, c, d)}
    x = next(s_ for h, s_ in pairs if h % 4 == 2 and s_ not in taken)
    _rewrite(loc, "securities/part-0.parquet",
             lambda t: _set(t, t["security_id"].to_pylist().index(x), "price", None))
    loc.write_bytes("lots/bucket-00003.parquet", b"PAR1 this is not a parquet file")

    shard_work = max(bucket_work(b_) for b_ in info.buckets)  # one shard per bucket
    plan = plan_shards(info, shard_work)
    assert [[p.bucket for p in s.pieces] for s in plan.shards] == [[0], [1], [2], [3]]

    out = str(tmp_path / "runs")
    req = RunRequest(book=book, out=out, run_id="bad", shard_work=shard_work)
    first = run_book(req, stream=None)
    s = first.summary
    assert not first.complete and not os.path.exists(f"{out}/bad/manifest.json")
    assert [f["shard_id"] for f in s["shards"]["failed"]] == [3]
    assert "lots/bucket-00003.parquet" in s["shards"]["failed"][0]["error"]
    assert "FAILED shard 3 (bucket 3)" in first.text and "INCOMPLETE" in first.text

    accounts = pa.concat_tables([loc.read_parquet(f"accounts/bucket-{k:05d}.parquet") for k in range(4)])
    acc_hh = dict(zip(accounts["account_id"].to_pylist(), accounts["household_id"].to_pylist()))
    rej = outputs(f"{out}/bad", "rejected").to_pylist()
    by_hh: dict = {}
    for r in rej:
        by_hh.setdefault(r["household_id"], []).append(r)
    # exactly the planted households, whole, each for its planted field
    planted = {a: ("lots", "shares"), b: ("lots", "security_id"), c: ("lots", "lot_id"), d: ("accounts", "household_id")}
    for h, (table, field) in planted.items():
        assert {r["account_id"] for r in by_hh[h]} == {k for k, v in acc_hh.items() if v == h}
        assert {(r["table"], r["field"]) for r in by_hh[h]} == {(table, field)}, by_hh[h]
    price = {h for h, rs in by_hh.items() if h not in planted}
    assert all(r["field"] == "price" and r["key"] == f"security_id={x}" for h in price for r in by_hh[h])
    holders = {h for h, s_ in pairs if s_ == x}
    assert holders and holders <= price
    # bucket 3 is in no output; every other account is in exactly one
    hh_out = outputs(f"{out}/bad", "households")
    rebalanced = set(pc.filter(hh_out, pc.not_equal(hh_out["status"], "rejected"))["household_id"].to_pylist())
    in_0_2 = {k for k, v in acc_hh.items() if v % 4 != 3}
    rejected = {r["account_id"] for r in rej}
    assert {k for k in in_0_2 if acc_hh[k] in rebalanced} | rejected == in_0_2
    assert not {k for k in in_0_2 if acc_hh[k] in rebalanced} & rejected
    assert s["counts"]["accounts_in"] == len(in_0_2) == s["counts"]["accounts_out"]

    # the file is fixed (regenerated as it was): the same run id finishes the run
    good = str(tmp_path / "good")
    generate_book(BOOK, good)
    loc.write_bytes("lots/bucket-00003.parquet", open_uri(good).read_bytes("lots/bucket-00003.parquet"))
    second = run_book(req, stream=None)
    assert second.complete and second.summary["shards"]["ran_now"] == 1
    assert second.summary["counts"]["accounts_in"] == second.summary["counts"]["accounts_out"]
    assert os.path.exists(f"{out}/bad/manifest.json")
