"""The capacity test end to end on a real local Ray (2 CPUs), through the ``rebalance
capacity`` command, on a small generated book:

- the report holds every figure (per-stage task seconds, wall time, accounts/s, peak memory of
  driver and workers, both solvers side by side per kind and on the standard mix, machine
  facts), and its stage and memory figures are those of the shards' completion records;
- accounts in = accounts out, as in the run's manifest;
- the JSON is in the run's folder and in the docs folder, and ``capacity.md`` has one row per
  JSON there;
- the book is reused when it matches and never silently replaced when it does not; the sample
  is the same for the same seed.
"""
from __future__ import annotations

import contextlib
import copy
import glob
import io
import json
import os
import subprocess
import sys

import pytest
from conftest import local_ray

from cluster.capacity import MIX, REPORT_FILE, CapacityRequest, draw_sample, ensure_book, load_reports, render_markdown
from cluster.summary import TASK_STAGES
from jobs.cli import build_parser, cmd_capacity, main
from rebalancer.book import Book
from rebalancer.errors import RunError
from rebalancer.kinds import KINDS
from rebalancer.settings import OptimizerSettings

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCOUNTS, SEED, PER_BUCKET = 200, 3, 100  # 2 buckets
PER_KIND, MIX_SIZE = 2, 6


@pytest.fixture(scope="module")
def ray_cluster():
    with local_ray():
        yield


@pytest.fixture(scope="module")
def done(ray_cluster, tmp_path_factory):
    """One capacity test through the command line: (exit status, printed JSON, book, docs)."""
    root = tmp_path_factory.mktemp("capacity")
    book, docs = str(root / "book"), str(root / "docs")
    argv = ["capacity", "--accounts", str(ACCOUNTS), "--seed", str(SEED), "--accounts-per-bucket", str(PER_BUCKET),
            "--book", book, "--out", str(root / "runs"), "--solver", "reference", "--shard-work", "8000",
            "--sample", str(PER_KIND), "--sample-mix", str(MIX_SIZE), "--docs", docs, "--json", "--quiet"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, json.loads(out.getvalue()), book, docs


def test_report_has_every_figure(done):
    rc, r, _, _ = done
    assert rc == 0
    run, stages, mem = r["run"], r["stages"], r["memory"]
    assert run["complete"] and run["solver"] == "reference" and run["cpus"] == 2
    assert run["shards"] >= 2  # the small shard work cuts the book: both CPUs have work
    assert run["wall_seconds"] > 0 and run["ray_start_seconds"] is not None
    assert run["accounts_per_second"] == pytest.approx(run["accounts_in"] / run["wall_seconds"])
    assert run["households_per_second"] == pytest.approx(run["households"] / run["wall_seconds"])
    assert 0 < run["cpu_busy_share"] <= 1
    assert set(stages) == {*TASK_STAGES, "other", "total"}
    assert stages["solve"]["task_seconds"] > 0 and stages["read"]["task_seconds"] > 0
    parts = sum(stages[s]["task_seconds"] for s in (*TASK_STAGES, "other"))
    assert parts == pytest.approx(stages["total"]["task_seconds"])
    assert sum(stages[s]["share"] for s in (*TASK_STAGES, "other")) == pytest.approx(1.0)
    for v in stages.values():
        assert v["wall_seconds_est"] == pytest.approx(v["task_seconds"] / 2)
    assert mem["driver_peak_rss_bytes"] > 50 * 2**20 and mem["worker_peak_rss_bytes"] > 50 * 2**20
    assert r["book"]["generated"] and r["book"]["generate_seconds"] > 0
    assert r["book"]["accounts"] == ACCOUNTS and r["book"]["buckets"] == 2
    for k in ("cpu_count", "python", "numpy", "ray", "cvxpy"):
        assert r["machine"][k]
    assert r["created"][:4].isdigit()


def test_both_solvers_side_by_side_on_every_kind(done):
    _, r, _, _ = done
    s = r["sample"]
    assert s["tolerance"] == OptimizerSettings().solver_tolerance and s["buckets"] == [0, 1]
    assert set(s["sets"]) == {MIX, *KINDS}
    assert s["sets"][MIX]["households"] == MIX_SIZE
    compared = 0
    for name, v in s["sets"].items():
        want = min(MIX_SIZE if name == MIX else PER_KIND, v["candidates"])
        assert v["households"] == want, name
        if not want:
            continue
        assert v["reference_seconds"] > 0 and v["fast_seconds"] > 0
        assert v["speed_ratio"] == pytest.approx(v["reference_seconds"] / v["fast_seconds"])
        assert sum(v["fast_status"].values()) == want == sum(v["reference_status"].values())
        assert v["compared"] <= want
        if v["compared"]:
            compared += 1
            assert v["gap_over_allowance_max"] >= v["gap_over_allowance_median"] >= 0
            assert v["worst_household_id"] in s["household_ids"][name]
    # a 200-account book has households of most kinds, and both solvers solve them
    assert sum(1 for k in KINDS if s["sets"][k]["households"]) >= 4 and compared >= 4


def test_accounts_in_equal_accounts_out(done):
    _, r, _, _ = done
    run = r["run"]
    manifest = json.load(open(os.path.join(run["uri"], "manifest.json")))
    assert run["accounts_in"] == run["accounts_out"] == ACCOUNTS == manifest["accounts_in"] == manifest["accounts_out"]
    assert run["accounts_rebalanced"] + run["accounts_rejected"] == ACCOUNTS
    assert run["households"] == r["book"]["households"]


def test_stage_and_memory_figures_are_the_shard_records(done):
    _, r, _, _ = done
    recs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(r["run"]["uri"], "_shards", "*.json")))]
    assert len(recs) == r["run"]["shards"]
    for s in (*TASK_STAGES, "total"):
        assert r["stages"][s]["task_seconds"] == pytest.approx(sum(x["timings"][s] for x in recs))
    assert r["memory"]["worker_peak_rss_bytes"] == max(x["worker_peak_rss_bytes"] for x in recs)


def test_json_in_run_folder_and_docs(done):
    _, r, _, docs = done
    in_run = json.load(open(os.path.join(r["run"]["uri"], REPORT_FILE)))
    in_docs = json.load(open(os.path.join(docs, "capacity", f"capacity-{ACCOUNTS}.json")))
    assert in_run == in_docs == {k: v for k, v in r.items() if k != "files"}
    assert r["files"]["docs_markdown"] == os.path.join(docs, "capacity.md")


def test_markdown_has_a_row_per_report(done, tmp_path):
    _, r, _, docs = done
    md = open(os.path.join(docs, "capacity.md")).read()
    assert f"| {ACCOUNTS:,} | {r['run']['households']:,} |" in md
    # Two more book sizes recorded: the table has a row for each, by accounts.
    folder = tmp_path / "capacity"
    folder.mkdir()
    for n in (50_000, 10_000, ACCOUNTS):
        x = copy.deepcopy({k: v for k, v in r.items() if k != "files"})
        x["accounts"] = n
        (folder / f"capacity-{n}.json").write_text(json.dumps(x))
    (folder / "notes.json").write_text(json.dumps({"not": "a report"}))
    reports = load_reports(str(tmp_path))
    text = render_markdown(reports)
    scaling = text.split("## Scaling")[1].split("## Latest")[0]
    rows = [ln for ln in scaling.splitlines() if ln.startswith("| ") and not ln.startswith("| accounts")]
    assert [int(ln.split("|")[1].replace(",", "")) for ln in rows] == [ACCOUNTS, 10_000, 50_000]
    for name in (MIX, *KINDS):
        assert f"| {name} |" in text


def test_book_reused_when_it_matches_and_never_replaced_silently(done):
    _, _, book, _ = done
    info = os.path.join(book, "book.json")
    before = os.stat(info).st_mtime_ns
    ready = ensure_book(CapacityRequest(accounts=ACCOUNTS, seed=SEED, accounts_per_bucket=PER_BUCKET, book=book))
    assert not ready.generated and ready.generate_seconds is None and ready.info.total("accounts") == ACCOUNTS
    with pytest.raises(RunError, match="seed"):
        ensure_book(CapacityRequest(accounts=ACCOUNTS, seed=SEED + 1, accounts_per_bucket=PER_BUCKET, book=book))
    assert os.stat(info).st_mtime_ns == before


def test_sample_is_seeded(done):
    _, r, book, _ = done
    b = Book.open(book)
    s = OptimizerSettings()
    a1 = draw_sample(b, s, b.as_of, PER_KIND, MIX_SIZE, n_buckets=2, seed=0).household_ids()
    a2 = draw_sample(b, s, b.as_of, PER_KIND, MIX_SIZE, n_buckets=2, seed=0).household_ids()
    other = draw_sample(b, s, b.as_of, PER_KIND, MIX_SIZE, n_buckets=2, seed=1).household_ids()
    assert a1 == a2 == r["sample"]["household_ids"]
    assert other != a1
    for ids in a1.values():
        assert len(set(ids)) == len(ids)


def test_cli_parses():
    a = build_parser().parse_args(["capacity", "--accounts", "10000"])
    assert a.func is cmd_capacity
    assert (a.accounts, a.seed, a.book, a.solver, a.sample, a.sample_mix, a.docs, a.no_docs) == (
        10000, 1, None, None, 20, 100, "docs", False)
    a = build_parser().parse_args(["capacity", "--accounts", "50", "--num-cpus", "4", "--address", "auto",
                                   "--s3-endpoint-url", "http://127.0.0.1:9000", "--no-docs"])
    assert (a.num_cpus, a.address, a.s3_endpoint_url, a.no_docs) == (4, "auto", "http://127.0.0.1:9000", True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["capacity"])  # --accounts is required
    assert CapacityRequest(accounts=10000, seed=1).book_uri == "data/capacity/book-10000-s1"
    # the ray job submit entrypoint takes the same arguments
    p = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "capacity_test.py"), "--help"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "--accounts" in p.stdout and "--sample-mix" in p.stdout


@pytest.mark.parametrize("command", ["run", "capacity"])
def test_json_output_is_the_json_alone_whatever_ray_prints(command, monkeypatch, capsys, tmp_path):
    """With --json, lines printed during the run (Ray forwards worker and raylet lines to the
    driver's stdout: "Task Progress.report failed..." under load) go to stderr."""
    import cluster.capacity
    import cluster.driver

    noise = "(raylet) Task Progress.report failed. There are infinite retries remaining"

    def run_book(req, stream=None):
        print(noise)
        return cluster.driver.RunOutcome(run_id="r", uri="u", complete=True, summary={"ok": 1}, text="text")

    def run_capacity(req, stream=None):
        print(noise)
        return {"run": {"complete": True}, "ok": 1}

    monkeypatch.setattr(cluster.driver, "run_book", run_book)
    monkeypatch.setattr(cluster.capacity, "run_capacity", run_capacity)
    monkeypatch.setattr(cluster.capacity, "format_report", lambda report: "text")
    argv = (["run", "--book", str(tmp_path), "--out", str(tmp_path)] if command == "run"
            else ["capacity", "--accounts", "10"]) + ["--json", "--quiet"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["ok"] == 1 and noise in err
    main(argv[:-2])  # without --json the lines stay where they were printed
    assert noise in capsys.readouterr().out
