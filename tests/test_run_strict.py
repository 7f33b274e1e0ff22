"""A generated book's run on a real local Ray (2 CPUs), checked as a desk would (issue 21,
points 4-6):

- every JSON file the run, its report and its review write parses with a strict parser, and
  no float column of its tables holds NaN or infinity (nulls where figures are missing: the
  dual residual of a household whose trades are the naive ones, the room of no budget);
- ``rebalance household`` gives the run's trades, row for row and bit for bit, for every
  household of the book (multi-account and direct-indexed ones among them), by its library
  path and by the command with ``--json``, with the job's defaults and with ``--run``;
- ``rebalance review`` counts what it should on the run, and fails (exit 1) a copy of the run
  with one dust trade planted in ``trades/``.
"""
from __future__ import annotations

import glob
import math
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import local_ray

from cluster.driver import RunRequest, run_book
from cluster.history import write_report
from cluster.shard import run_household
from jobs.cli import main
from rebalancer import jsonout
from rebalancer.book import Book
from rebalancer.generate import GeneratorSettings, generate_book
from rebalancer.review import REVIEW_FILE, review_run

pytestmark = pytest.mark.slow

BOOK = GeneratorSettings(accounts=200, seed=21, accounts_per_bucket=100)  # 2 buckets


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    book = str(tmp_path_factory.mktemp("book"))
    generate_book(BOOK, book, overwrite=True)
    out = str(tmp_path_factory.mktemp("runs"))
    with local_ray():
        outcome = run_book(RunRequest(book=book, out=out, run_id="daily", shard_work=6_000), stream=None)
    assert outcome.complete
    return book, f"{out}/daily"


def table(run_uri: str, name: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(f"{run_uri}/{name}/*.parquet"))])


def test_every_json_file_is_strict_and_no_column_holds_nan(run):
    book, run_uri = run
    write_report(run_uri)
    review_run(run_uri, book)
    files = glob.glob(f"{run_uri}/**/*.json", recursive=True)
    names = {f[len(run_uri) + 1:] for f in files}
    assert {"run.json", "summary.json", "manifest.json", "report.json", REVIEW_FILE} <= names
    assert any(n.startswith("_shards/") for n in names)
    for f in files:
        jsonout.loads_strict(open(f).read())  # raises on NaN, Infinity, -Infinity
    for name in ("trades", "households", "accounts", "rejected"):
        t = table(run_uri, name)
        for field in t.schema:
            if pa.types.is_floating(field.type):
                for bad in (pc.is_nan, pc.is_inf):
                    assert (pc.sum(bad(t[field.name])).as_py() or 0) == 0, (name, field.name, bad.__name__)
    per = pq.read_table(f"{run_uri}/report-households.parquet")
    for field in per.schema:
        if pa.types.is_floating(field.type):
            assert (pc.sum(pc.is_inf(per[field.name])).as_py() or 0) == 0, field.name
    # Missing figures are null, exactly where they are missing.
    h = table(run_uri, "households")
    naive = pc.ends_with(h["solver"], "+naive").fill_null(False)
    assert pc.sum(naive).as_py() > 0, "the book has households whose trades are the naive ones (4 when written)"
    assert h.filter(naive)["dual_residual"].null_count == pc.sum(naive).as_py()
    assert h.filter(pc.invert(naive))["dual_residual"].null_count == 0
    b = Book.open(book)
    no_budget = pa.concat_tables([b.read("households", k) for k in range(b.info.n_buckets)]).filter(
        pc.is_null(pc.field("tax_budget")))["household_id"]
    assert sorted(h.filter(h["budget_room"].is_null())["household_id"].to_pylist()) == sorted(no_budget.to_pylist())
    s = jsonout.loads_strict(open(f"{run_uri}/summary.json").read())
    assert s["totals"]["solver"]["max_dual_residual"] == pytest.approx(pc.max(h["dual_residual"]).as_py())


def test_the_household_command_gives_the_runs_trades(run, capsys):
    book, run_uri = run
    trades, households, accounts = (table(run_uri, n) for n in ("trades", "households", "accounts"))
    ids = households["household_id"].to_pylist()
    for hid in ids:
        hr = run_household(book, hid)
        assert hr.outputs["trades"].equals(trades.filter(pc.equal(trades["household_id"], hid))), hid
        assert hr.outputs["households"].equals(households.filter(pc.equal(households["household_id"], hid))), hid
    # The command itself, on the households that exercise the most: several accounts, a direct index.
    per_hh = accounts.group_by("household_id").aggregate([("account_id", "count"), ("direct_indexed", "max")])
    multi = per_hh.filter(pc.greater(per_hh["account_id_count"], 1))["household_id"].to_pylist()
    direct = per_hh.filter(per_hh["direct_indexed_max"])["household_id"].to_pylist()
    both = sorted(set(multi) & set(direct))
    assert multi and direct and both, "the book needs multi-account and direct-indexed households"
    chosen = sorted({multi[0], direct[0], both[0], both[-1]})
    for hid, flags in [(h, ["--book", book]) for h in chosen] + [(both[0], ["--run", run_uri])]:
        assert main(["household", "--household", str(hid), "--json"] + flags) == 0
        printed = jsonout.loads_strict(capsys.readouterr().out)
        rows = [{k: v for k, v in x.items() if k not in ("symbol", "account_type")} for x in printed["trades"]]
        assert rows == trades.filter(pc.equal(trades["household_id"], hid)).to_pylist(), hid
        assert printed["objective"] == households.filter(pc.equal(households["household_id"], hid))["objective"][0].as_py()


def test_review_fails_a_run_with_a_planted_dust_trade(run, tmp_path, capsys):
    book, run_uri = run
    trades = table(run_uri, "trades")
    before = review_run(run_uri, book, write=False)
    forced = pc.is_in(trades["reason"], value_set=pa.array(["screen", "restriction"]))
    assert before["rules"]["dust"]["count"] == pc.sum(pc.and_(pc.less(trades["value"], 1.0), pc.invert(forced))).as_py()
    assert before["counts"]["trades"] == trades.num_rows

    copy = str(tmp_path / "planted")
    shutil.copytree(run_uri, copy)
    first = sorted(glob.glob(f"{copy}/trades/*.parquet"))[0]
    t = pq.read_table(first)
    buy = t.filter(pc.equal(t["side"], "buy")).slice(0, 1).to_pylist()[0]
    planted = {**buy, "shares": 0.4 / buy["price"], "value": 0.4}
    pq.write_table(pa.concat_tables([t, pa.Table.from_pylist([planted], schema=t.schema)]), first)
    assert main(["review", "--book", book, "--run", copy]) == 1
    assert "FAIL  dust" in capsys.readouterr().out
    after = jsonout.loads_strict(open(f"{copy}/{REVIEW_FILE}").read())
    assert after["rules"]["dust"]["count"] == before["rules"]["dust"]["count"] + 1
    assert after["rules"]["dust"]["value"] == pytest.approx(before["rules"]["dust"]["value"] + 0.4)
    assert "dust" in after["broken"] and after["counts"]["trades"] == trades.num_rows + 1
    assert not math.isnan(after["rules"]["dust"]["value"])
