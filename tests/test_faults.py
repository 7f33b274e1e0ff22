"""Faults, end to end, on real multi-node Ray clusters on this one machine. Each run's outputs
are compared with those of a plain local run of the same book and plan (same shard work):
byte for byte (SHA-256 of every file but the two that hold timings: summary.json and the
shards' completion records, whose listed files and hashes are compared instead), and by count
(every account of the book in accounts/ or rejected/, once; every household once; no trade
row in two shards).

- autoscaling: a head of no CPUs with the autoscaler's fake multi-node provider. No worker node
  before the run; worker nodes come up for it (never more than the config's max) and go back
  to none after it, their processes gone; the outputs are the plain run's.
- a node lost mid-run: ``ray.cluster_utils.Cluster`` with two worker nodes; when some shards are
  complete and others are not, a worker node is killed whole (raylet, agents and the worker
  running a shard on it, frozen mid-shard first). The run finishes complete, its outputs the
  plain run's, and its summary counts the retried shard.
- the driver killed mid-run: SIGKILL once some shards are complete; the same command with the
  same run id resumes (keeps the complete shards, runs the others) and finishes complete, its
  outputs the plain run's, with no temporary file of the crashed attempt left in the run folder.

Clusters get free ports and their own temp dirs; every process they start is stopped however a
test ends (see ``raycluster``), and nothing here runs ``ray stop``.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from raycluster import BIN, AutoscalingHead, LocalCluster, alive_nodes, processes_of, ray_env, reap, \
    short_temp_dir, start_group, stop_group

from cluster.layout import OUTPUT_TABLES
from cluster.plan import plan_shards
from rebalancer.book import Book
from rebalancer.generate import GeneratorSettings, generate_book

pytestmark = pytest.mark.slow

BOOK = GeneratorSettings(accounts=240, seed=5, accounts_per_bucket=60)  # 108 households, 4 buckets
SHARD_WORK = 2_000  # 25 small shards: a run lasts long enough for a fault to land mid-run
RUN_ID = "faults"  # one run id everywhere: run.json and manifest.json name it, and must match byte for byte
RUN_TIMEOUT = 300.0


# --- the book and the plain run ------------------------------------------------------------

@pytest.fixture(scope="module")
def book(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("book"))
    generate_book(BOOK, uri, overwrite=True)
    return uri


@pytest.fixture(scope="module")
def n_shards(book) -> int:
    n = len(plan_shards(Book.open(book).info, SHARD_WORK).shards)
    assert n >= 20, n
    return n


def rebalance_run(book: str, out: str, *args: str) -> list[str]:
    return [os.path.join(BIN, "rebalance"), "run", "--book", book, "--out", out, "--run-id", RUN_ID,
            "--shard-work", str(SHARD_WORK), *args]


@pytest.fixture(scope="module")
def baseline(book, n_shards, tmp_path_factory) -> str:
    """A plain run of the book on a local Ray of 2 CPUs that the driver starts and stops (its
    temp dir a private one); returns the run's folder."""
    out = str(tmp_path_factory.mktemp("baseline"))
    temp = short_temp_dir("rfb")
    try:
        r = subprocess.run(rebalance_run(book, out, "--num-cpus", "2", "--quiet", "--json"),
                           env=ray_env(RAY_TMPDIR=temp), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    finally:
        reap(temp)
        shutil.rmtree(temp, ignore_errors=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = os.path.join(out, RUN_ID)
    summary = read_summary(run)
    assert summary["complete"] and summary["shards"]["ran_now"] == n_shards
    assert os.path.exists(os.path.join(run, "manifest.json"))
    return run


# --- comparing runs ------------------------------------------------------------------------

def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def output_hashes(run: str) -> dict[str, str]:
    """SHA-256 of every file of the run but those that hold timings (summary.json and the
    completion records under _shards/)."""
    out = {}
    for path in glob.glob(os.path.join(run, "**"), recursive=True):
        rel = os.path.relpath(path, run)
        if os.path.isfile(path) and rel != "summary.json" and not rel.startswith("_shards/"):
            out[rel] = _sha256(path)
    return out


def shard_records(run: str) -> dict[str, dict]:
    return {os.path.basename(p): json.load(open(p)) for p in sorted(glob.glob(os.path.join(run, "_shards", "*")))}


def table(run: str, name: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(os.path.join(run, name, "*.parquet")))])


def book_table(book: str, name: str) -> pa.Table:
    b = Book.open(book)
    return pa.concat_tables([b.read(name, k) for k in range(b.info.n_buckets)])


def assert_same_as_baseline(run: str, baseline: str, book: str) -> None:
    got, want = output_hashes(run), output_hashes(baseline)
    assert sorted(got) == sorted(want)  # same files: none missing, none extra
    assert {k for k in got if got[k] != want[k]} == set()
    assert "manifest.json" in got and sum(k.endswith(".parquet") for k in got) == len(OUTPUT_TABLES) * len(
        shard_records(baseline))
    recs, base = shard_records(run), shard_records(baseline)
    assert sorted(recs) == sorted(base)
    assert {k: r["files"] for k, r in recs.items()} == {k: r["files"] for k, r in base.items()}
    assert {k: r["counts"] for k, r in recs.items()} == {k: r["counts"] for k, r in base.items()}

    # by count: every account once, in accounts/ (its household rebalanced) or in rejected/
    book_accounts = book_table(book, "accounts")["account_id"].to_pylist()
    rebalanced = table(run, "accounts")["account_id"].to_pylist()
    rejected = table(run, "rejected")["account_id"].to_pylist()
    assert len(rebalanced) == len(set(rebalanced)) and len(rejected) == len(set(rejected))
    assert not set(rebalanced) & set(rejected)
    assert sorted(rebalanced + rejected) == sorted(book_accounts)
    assert len(book_accounts) == BOOK.accounts
    households = table(run, "households")["household_id"].to_pylist()
    assert sorted(households) == sorted(book_table(book, "households")["household_id"].to_pylist())
    # no trade in two shards: a household's trades are in one shard file, and there are as many
    # trade rows as the households table and the manifest count
    seen: dict[int, str] = {}
    rows = 0
    for f in sorted(glob.glob(os.path.join(run, "trades", "*.parquet"))):
        t = pq.read_table(f)
        rows += t.num_rows
        for h in set(t["household_id"].to_pylist()):
            assert h not in seen, f"household {h} has trades in {seen[h]} and {f}"
            seen[h] = f
    manifest = json.load(open(os.path.join(run, "manifest.json")))
    assert rows == manifest["trades"] == pc.sum(table(run, "households")["trades"]).as_py() > 0
    assert manifest["accounts_in"] == manifest["accounts_out"] == BOOK.accounts


def complete_records(run: str) -> int:
    """Shard completion records written so far (a record is written last, after its files)."""
    d = os.path.join(run, "_shards")
    return sum(1 for n in os.listdir(d) if re.fullmatch(r"shard-\d{5}\.json", n)) if os.path.isdir(d) else 0


def read_summary(run: str) -> dict:
    """The run's summary.json (what ``--json`` prints; stdout may also carry Ray's log lines)."""
    with open(os.path.join(run, "summary.json")) as f:
        return json.load(f)


def temporaries(run: str) -> list[str]:
    return sorted(os.path.relpath(p, run) for p in glob.glob(os.path.join(run, "**", "*.tmp-*"), recursive=True))


def log(prefix: str) -> str:
    return "\n".join(open(f"{prefix}.{s}", errors="replace").read()[-3000:] for s in ("out", "err"))


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, interval: float = 0.05):
    """Poll ``cond()`` until it returns something true; fail after ``timeout`` or when ``proc``
    exits first."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the driver exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- 1. autoscaling ------------------------------------------------------------------------

def test_autoscaling_cluster_scales_up_for_the_run_and_back_down(book, baseline, n_shards, tmp_path):
    out, logs = str(tmp_path / "runs"), str(tmp_path / "driver")
    run = os.path.join(out, RUN_ID)
    with AutoscalingHead(worker_cpus=1, max_workers=2, idle_timeout_minutes=0.1) as head:
        assert head.monitor(), "the autoscaler is not running"
        assert head.worker_nodes() == [] and len(head.raylets()) == 1  # the head alone, no CPUs
        driver = start_group(rebalance_run(book, out, "--address", head.address, "--quiet", "--json"),
                             ray_env(), logs)
        max_workers, seen = 0, set()
        try:
            deadline = time.monotonic() + RUN_TIMEOUT
            while driver.poll() is None:
                nodes = head.worker_nodes()
                seen |= {n.node_id for n in nodes}
                max_workers = max(max_workers, len(nodes))
                # the provider's nodes (its ids end in a count), of the worker type's one CPU
                assert all(n.node_id.startswith("fffff") and n.resources.get("CPU") == 1 for n in nodes), nodes
                assert time.monotonic() < deadline, "the run did not finish"
                time.sleep(0.5)
        finally:
            stop_group(driver)
        assert driver.returncode == 0, log(logs)
        summary = read_summary(run)
        assert summary["complete"] and summary["shards"]["ran_now"] == n_shards
        assert 1 <= max_workers <= 2 and len(seen) >= 1, (max_workers, seen)

        # idle, the worker nodes go: in the GCS's view and as processes (only the head's raylet left)
        t0 = time.monotonic()
        wait_for(lambda: not head.worker_nodes() and len(head.raylets()) == 1, 120, "the cluster to scale down",
                 interval=0.5)
        scale_down_s = time.monotonic() - t0
        assert head.monitor()  # the autoscaler itself is still there
    assert not processes_of(head.temp)
    print(f"autoscaling: up to {max_workers} worker node(s), {len(seen)} started; "
          f"down to none {scale_down_s:.1f} s after the run; reaped after the head's group: "
          f"{[p.cmdline[:60] for p in head.leftovers]}")
    assert_same_as_baseline(run, baseline, book)


# --- 2 and 3: a cluster of a head (no CPUs) and two worker nodes ---------------------------

@pytest.fixture
def cluster():
    with LocalCluster(head_cpus=0, workers=2, worker_cpus=1) as c:
        yield c
    print(f"cluster stopped; reaped after Cluster.shutdown(): {[p.cmdline[:60] for p in c.leftovers]}")
    assert not processes_of(c.temp)


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _freeze_a_running_shard(cluster: LocalCluster, nodes) -> tuple | None:
    """A worker of one of ``nodes`` stopped (SIGSTOP) in the middle of a shard: (node, pid), or
    None if none of them runs a shard now."""
    for node, pids in cluster.running("shard_task").items():
        for pid in pids if node in nodes else ():
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            if _title(pid).startswith("ray::shard_task"):
                return node, pid
            os.kill(pid, signal.SIGCONT)  # it finished the shard meanwhile
    return None


def test_a_worker_node_lost_mid_run(book, baseline, n_shards, cluster, tmp_path):
    """The node goes with a shard running on it (its worker is frozen mid-shard first, so the shard
    cannot finish there): Ray runs the shard again on the other node. If the driver's progress
    actor is on a worker node (it belongs on the driver's), that node is the one lost: the run
    must ride that out too, and still count the retry in its summary."""
    out, logs = str(tmp_path / "runs"), str(tmp_path / "driver")
    run = os.path.join(out, RUN_ID)
    driver = start_group(rebalance_run(book, out, "--address", cluster.address, "--quiet", "--json"), ray_env(), logs)
    try:
        def mid_run():
            n = complete_records(run)
            if not 1 <= n < n_shards:
                return None
            progress_nodes = [node for node, pids in cluster.running("Progress").items() if pids]
            frozen = _freeze_a_running_shard(cluster, progress_nodes or cluster.worker_nodes)
            return frozen and (n, *frozen, bool(progress_nodes))

        before, victim, worker, had_progress = wait_for(mid_run, RUN_TIMEOUT, "a shard complete while another runs",
                                                        driver)
        cluster.cluster.remove_node(victim, allow_graceful=False)  # its raylet and agents
        os.kill(worker, signal.SIGKILL)  # and its worker: the whole machine is gone
        after = complete_records(run)
        driver.wait(timeout=RUN_TIMEOUT)
    finally:
        stop_group(driver)
    assert 1 <= before <= after < n_shards  # it went mid-run, with a shard of its own running
    assert driver.returncode == 0, log(logs)
    summary = read_summary(run)
    print(f"node lost with {before} shard(s) complete ({after} when it was gone) of {n_shards}"
          f"{', the progress actor on it' if had_progress else ''}; faults in the summary: {summary.get('faults')}")
    assert summary["complete"] and summary["shards"]["failed"] == [] and summary["shards"]["ran_now"] == n_shards
    assert os.path.exists(os.path.join(run, "manifest.json"))
    # the shard lost with the node ran again, and the summary says so
    assert summary["faults"]["task_retries"] >= 1 and summary["faults"]["retried_shards"], summary["faults"]
    # the GCS knows the node is gone (the run went on with one)
    wait_for(lambda: len([n for n in alive_nodes(cluster.address) if not n.is_head]) == 1, 60,
             "the GCS to see the node dead", interval=0.5)
    assert_same_as_baseline(run, baseline, book)
    assert temporaries(run) == []


def test_driver_killed_mid_run_then_resumed(book, baseline, n_shards, cluster, tmp_path):
    out, logs = str(tmp_path / "runs"), str(tmp_path / "driver")
    run = os.path.join(out, RUN_ID)
    cmd = rebalance_run(book, out, "--address", cluster.address)
    first = start_group(cmd, ray_env(), logs + "-1")
    try:
        at_kill = wait_for(lambda: (n := complete_records(run)) >= 1 and n, RUN_TIMEOUT, "a shard complete", first)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        stop_group(first)
    assert first.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(run, "manifest.json"))

    # The killed driver's tasks end (Ray stops a dead driver's workers, or they finish): then
    # nothing writes to the run folder any more.
    wait_for(lambda: not any(cluster.running("shard_task").values()), 60, "the killed driver's tasks to end",
             interval=0.2)
    k = complete_records(run)
    time.sleep(1.0)
    assert not any(cluster.running("shard_task").values()) and complete_records(run) == k
    assert 1 <= at_kill <= k < n_shards, (at_kill, k)
    left_by_crash = temporaries(run)
    # A worker killed mid-write leaves its temporary behind: one as it would be (a shard not
    # complete, its trades file half written), since a kill cannot be timed to land mid-write.
    incomplete = sorted(set(range(n_shards)) - {int(n[6:11]) for n in os.listdir(os.path.join(run, "_shards"))
                                                 if n.endswith(".json")})[0]
    planted = os.path.join(run, "trades", f"shard-{incomplete:05d}.parquet.tmp-{uuid.uuid4().hex}")
    with open(planted, "wb") as f:
        f.write(b"PAR1 half written")

    second = subprocess.run(cmd + ["--json"], env=ray_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = read_summary(run)
    assert f"run {RUN_ID}: {n_shards} shards" in second.stderr and f"resuming, {k} complete" in second.stderr
    sh = summary["shards"]
    assert summary["complete"] and sh["complete_before"] == k and sh["ran_now"] == n_shards - k
    assert sh["failed"] == [] and sh["not_run"] == []
    assert os.path.exists(os.path.join(run, "manifest.json"))
    print(f"driver killed with {at_kill} shard(s) complete, {k} when its tasks had ended; "
          f"temporaries the crash left: {left_by_crash}")
    assert temporaries(run) == [], "temporaries left in the run folder after the resumed run"
    assert_same_as_baseline(run, baseline, book)
