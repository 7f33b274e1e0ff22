"""cluster/sizing.py and ``rebalance size``: the sizing model on hand-computed cases, its
calibration against the measured capacity runs, and the command's output."""
from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.sizing import (GIB, Overheads, PodMemory, SizingError, Throughput, book_shards, estimate, head_pod_memory,
                            worker_pod_memory, workers_for)
from jobs.cli import main

ROOT = Path(__file__).resolve().parents[1]
CAPACITY_10K = ROOT / "docs" / "capacity" / "capacity-10000.json"
CAPACITY_50K = ROOT / "docs" / "capacity" / "capacity-50000.json"

# A capacity report small enough to work by hand: 1,000 accounts in one bucket of 500
# households, 100,000 lots and 40,000 positions, so the bucket's work is
# 100,000 + 40,000 + 40 * 500 = 160,000 units: at 60,000 per shard, round(2.67) = 3 parts.
# 150 task-seconds over 500 households = 0.3 s each; the fan-out kept 2 CPUs busy
# 150 / (100 * 2) = 75% of the time; the driver's fixed time is 2 + 0.5 + 0.5 = 3 s.
HAND = {
    "format": "rebalancer-capacity", "version": 1, "created": "2026-01-02T03:04:05+00:00",
    "machine": {"cpu_model": "test CPU"},
    "book": {"buckets": 1, "lots": 100_000, "positions": 40_000},
    "run": {"complete": True, "solver": "fast", "cpus": 2.0, "accounts_in": 1000, "households": 500,
            "shards": 3, "shard_work": 60_000, "fan_out_seconds": 100.0, "wall_seconds": 110.0,
            "ray_start_seconds": 2.0, "plan_seconds": 0.5, "summary_seconds": 0.5},
    "stages": {"total": {"task_seconds": 150.0}},
    "memory": {"worker_peak_rss_bytes": 512 * 2**20, "driver_peak_rss_bytes": 256 * 2**20},
}
OV = Overheads(cluster_start_seconds=10, scale_up_seconds=20, worker_start_seconds=5)  # fixed: 10+20+5+3 = 38 s


@pytest.fixture
def tp() -> Throughput:
    return Throughput.from_capacity(copy.deepcopy(HAND), "hand")


def test_measured_rates_from_the_report(tp):
    assert tp.task_seconds_per_household == pytest.approx(0.3)
    assert tp.households_per_account == pytest.approx(0.5)
    assert tp.efficiency == pytest.approx(0.75)
    assert tp.driver_seconds == pytest.approx(3.0)
    assert OV.total(tp) == pytest.approx(38.0)
    assert Overheads(0, 0, 0, driver_seconds=1.0).total(tp) == pytest.approx(1.0)


def test_shards_come_from_the_planner_on_a_book_of_the_measured_mix(tp):
    assert book_shards(tp, 1000) == 3
    assert book_shards(tp, 2000) == 6            # two buckets of 160,000 units, 3 parts each
    assert book_shards(tp, 1000, shard_work=160_000) == 1
    assert book_shards(tp, 1000, shard_work=20_000) == 8  # round(160,000 / 20,000) parts


def test_estimate_by_hand(tp):
    # 2,000 accounts: 1,000 households, 300 task-s, 6 shards of 50 s.
    e = estimate(tp, 2000, workers=1, cpus_per_worker=2, overheads=OV)
    assert (e.households, e.shards, e.waves, e.useful_workers) == (1000, 6, 3, 3)
    assert e.task_seconds == pytest.approx(300.0) and e.shard_seconds == pytest.approx(50.0)
    assert e.fan_out_seconds == pytest.approx(3 * 50 / 0.75)          # 200 s
    assert e.wall_seconds == pytest.approx(238.0) and e.minutes == pytest.approx(238 / 60)
    e2 = estimate(tp, 2000, workers=2, cpus_per_worker=2, overheads=OV)
    assert e2.waves == 2 and e2.wall_seconds == pytest.approx(38 + 2 * 50 / 0.75)
    e3 = estimate(tp, 2000, workers=3, cpus_per_worker=2, overheads=OV)
    assert e3.waves == 1 and e3.wall_seconds == pytest.approx(38 + 50 / 0.75) and not e3.idle_workers
    e4 = estimate(tp, 2000, workers=4, cpus_per_worker=2, overheads=OV)
    assert e4.idle_workers and e4.wall_seconds == pytest.approx(e3.wall_seconds), "more CPUs than shards do not help"
    assert e4.to_json()["cpus"] == 8 and e4.to_json()["idle_workers"] is True


def test_workers_for_a_target_by_hand(tp):
    s = workers_for(tp, 2000, minutes=2.5, cpus_per_worker=2, overheads=OV)  # 150 s: 238, 171.3, 104.7 s
    assert s.feasible and s.workers == 3 and s.estimate.wall_seconds <= 150
    s = workers_for(tp, 2000, minutes=4.0, cpus_per_worker=2, overheads=OV)   # 240 s: one worker's 238 s
    assert s.feasible and s.workers == 1
    s = workers_for(tp, 2000, minutes=1.0, cpus_per_worker=2, overheads=OV)   # 60 s < 38 + one 66.7 s shard
    assert not s.feasible and s.workers == 3 and "shard" in s.reason
    s = workers_for(tp, 2000, minutes=0.5, cpus_per_worker=2, overheads=OV)   # 30 s < 38 s fixed
    assert not s.feasible and "fixed overheads" in s.reason
    assert s.to_json()["feasible"] is False


def test_wall_time_never_rises_with_workers():
    tp = Throughput.load(str(CAPACITY_10K))
    walls = [estimate(tp, 350_000, w, 16).wall_seconds for w in range(1, 70)]
    assert all(b <= a for a, b in zip(walls, walls[1:]))
    assert walls[-1] == walls[-2], "past ceil(shards / CPUs) workers nothing changes"


def test_pod_memory_by_hand():
    m = PodMemory(processes=2, process_bytes=GIB, ray_bytes=GIB, object_store_bytes=GIB, headroom=0.5)
    assert m.required_bytes == int(5.5 * GIB) and m.gib == 6 and m.quantity == "6Gi"
    with pytest.raises(SizingError):
        PodMemory(processes=0, process_bytes=GIB, ray_bytes=0, object_store_bytes=0)


def test_pod_memory_from_the_measured_worker_peak():
    tp = Throughput.load(str(CAPACITY_10K))
    # The file is re-measured by every capacity run: read its peak, then do the sum by hand
    # (e.g. at a 610 MB peak, 16 x peak + 1 GiB, x 1.25, + 1 GiB = 13.61 GiB: 14Gi; 8 CPUs 7.93 GiB: 8Gi;
    # the head at a 406 MB driver peak, (peak + 2 GiB) x 1.25 + 1 GiB = 3.97 GiB: 4Gi).
    with open(CAPACITY_10K) as f:
        mem = json.load(f)["memory"]
    peak, driver = mem["worker_peak_rss_bytes"], mem["driver_peak_rss_bytes"]
    for cpus in (16, 8):
        m = worker_pod_memory(tp, cpus)
        assert m.required_bytes == int((cpus * peak + 2**30) * 1.25 + 2**30)
        assert m.quantity == f"{math.ceil(m.required_bytes / 2**30)}Gi"
    assert head_pod_memory(tp).quantity == f"{math.ceil(((driver + 2**31) * 1.25 + 2**30) / 2**30)}Gi"


def test_the_model_reproduces_the_measured_runs():
    """Calibration: sized for its own book on its own 2 CPUs with no cluster overheads, each
    measured run's wall time comes back within 5% (shard counts from the planner within 10%)."""
    for path in (CAPACITY_10K, CAPACITY_50K):
        tp = Throughput.load(str(path))
        e = estimate(tp, tp.accounts, workers=1, cpus_per_worker=int(tp.cpus),
                     overheads=Overheads(0, 0, 0), shard_work=tp.shard_work)
        assert e.shards == pytest.approx(tp.shards, rel=0.10), path.name
        assert e.wall_seconds == pytest.approx(tp.wall_seconds, rel=0.05), path.name


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="something-else"), "not a capacity report"),
    (lambda d: d.update(version=2), "version 2"),
    (lambda d: d["run"].update(complete=False), "not complete"),
    (lambda d: d["stages"].pop("total"), "stages.total"),
    (lambda d: d["run"].update(households=0), "run.households must be a positive number"),
])
def test_bad_capacity_reports_are_refused_by_name(change, message):
    d = copy.deepcopy(HAND)
    change(d)
    with pytest.raises(SizingError, match=message):
        Throughput.from_capacity(d, "hand")


def test_bad_requests_are_refused(tp):
    for bad in (dict(accounts=0), dict(workers=0), dict(cpus_per_worker=0)):
        kw = dict(accounts=1000, workers=1, cpus_per_worker=2) | bad
        with pytest.raises(SizingError):
            estimate(tp, kw["accounts"], kw["workers"], kw["cpus_per_worker"])
    with pytest.raises(SizingError):
        workers_for(tp, 1000, minutes=0, cpus_per_worker=2)
    with pytest.raises(SizingError):
        Overheads(scale_up_seconds=-1)


def test_sizing_does_not_import_ray():
    code = "import sys, cluster.sizing, jobs.size; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# the command


@pytest.fixture
def hand_file(tmp_path) -> str:
    p = tmp_path / "capacity-1000.json"
    p.write_text(json.dumps(HAND))
    return str(p)


HAND_OV = ["--cluster-start-seconds", "10", "--scale-up-seconds", "20", "--worker-start-seconds", "5"]


def test_size_json(hand_file, capsys):
    assert main(["size", "--accounts", "2000", "--minutes", "2.5", "--workers", "2", "--cpus-per-worker", "2",
                 "--capacity", hand_file, "--json", *HAND_OV]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sizings"][0]["workers"] == 3 and out["sizings"][0]["feasible"] is True
    assert out["estimates"][0]["wall_seconds"] == pytest.approx(38 + 2 * 50 / 0.75)
    assert out["overheads"]["total_seconds"] == pytest.approx(38.0)
    assert out["capacity"]["task_seconds_per_household"] == pytest.approx(0.3)
    assert out["worker_pods"]["2"]["quantity"] == PodMemory(2, 512 * 2**20, GIB, GIB).quantity


def test_size_text_prints_the_figures(hand_file, capsys):
    assert main(["size", "--accounts", "2000", "--minutes", "2.5", "--cpus-per-worker", "2",
                 "--capacity", hand_file, *HAND_OV]) == 0
    out = capsys.readouterr().out
    assert "3 worker(s) (6 CPUs)" in out and "1.7 min" in out          # 104.7 s
    assert "--max-in-flight 12" in out and "maxReplicas >= 3" in out
    assert "300 task-s" in out and "~6 shards" in out


def test_size_table_for_lists(hand_file, capsys):
    assert main(["size", "--accounts", "1000,2000", "--minutes", "1,4", "--cpus-per-worker", "2,4",
                 "--capacity", hand_file, *HAND_OV]) == 0
    out = capsys.readouterr().out
    assert "| accounts | shards | minutes | 2-CPU workers | 4-CPU workers |" in out
    assert "| 2,000 | 6 | 4 | 1 (4.0 min) |" in out
    assert "not reachable" in out                                      # 2,000 accounts in 1 minute


def test_size_default_capacity_file_from_the_repository_root(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["size", "--accounts", "350000", "--workers", "8"]) == 0
    out = capsys.readouterr().out
    assert "docs/capacity/capacity-10000.json" in out and "8 worker(s) of 16 CPUs" in out


def test_size_usage_errors(hand_file, capsys):
    assert main(["size", "--accounts", "1000", "--capacity", hand_file]) == 2
    assert "--minutes" in capsys.readouterr().err
    assert main(["size", "--accounts", "1000", "--minutes", "5", "--capacity", hand_file + ".missing"]) == 2
    assert "capacity file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["size", "--accounts", "10,x", "--minutes", "5"])
