"""The full-book run: plan shards, fan out Ray tasks with a bound in flight, gather, report.

The driver reads only ``book.json`` (and, on a resumed run, the small completion records of
finished shards). Each task reads its own shard and writes its own outputs; the driver sums
their records into ``summary.json`` and, when every shard is complete, writes
``manifest.json`` last. See :mod:`cluster.layout` for the files of a run.

Ray: with no address (and no ``RAY_ADDRESS``) a local Ray is started for the run and stopped
after it; with one the driver joins that cluster; if Ray is already initialized in this
process (a test, a notebook) the driver uses it as is.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TextIO

import ray
from ray.exceptions import GetTimeoutError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rebalancer import fastsolve
from rebalancer.book import Book, book_fingerprint
from rebalancer.errors import StorageError
from rebalancer.settings import OptimizerSettings
from rebalancer.storage import S3Options, open_uri

from .layout import RunLayout, new_run_id, validate_run_id
from .plan import DEFAULT_SHARD_WORK, plan_shards
from rebalancer.solvers import DEFAULT_SOLVER, SOLVERS

from .shard import ShardJob, settings_to_json
from .summary import build_manifest, build_summary, format_summary
from .tasks import Progress, shard_task

__all__ = ["RunRequest", "RunOutcome", "run_book", "book_fingerprint", "connect_ray"]


# Tasks in flight at least, whatever the cluster's CPUs now: an autoscaling cluster that starts
# with no workers scales to the demand it sees, so a bound of twice the CPUs of an empty cluster
# would grow it one node at a time. Queued tasks cost Ray little (a ShardJob is a few hundred bytes).
MIN_IN_FLIGHT = 64


@dataclass(frozen=True)
class RunRequest:
    """A full-book run. ``run_id`` None: a new id (``<date>-<time>-<hex>``); an existing id
    resumes that run. ``max_in_flight`` None: twice the cluster's CPUs (re-read as the
    cluster scales), at least ``MIN_IN_FLIGHT``. ``num_cpus``: CPUs of a local Ray started for the run (None: all)."""
    book: str
    out: str
    run_id: str | None = None
    date: dt.date | None = None
    address: str | None = None
    solver: str = DEFAULT_SOLVER
    settings: OptimizerSettings = field(default_factory=OptimizerSettings)
    shard_work: float = DEFAULT_SHARD_WORK
    max_in_flight: int | None = None
    num_cpus: int | None = None
    s3: S3Options | None = None

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose from {sorted(SOLVERS)}")
        if self.run_id is not None:
            validate_run_id(self.run_id)
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    uri: str
    complete: bool
    summary: dict
    text: str  # the one-screen summary


class _Bar:
    """Households done, households/s, ETA: one updating line on a terminal, a line every
    ``every`` seconds in a log."""

    def __init__(self, total: float, stream: TextIO | None, every: float = 10.0):
        self.total, self.stream, self.every = max(int(round(total)), 1), stream, every
        self.tty = bool(stream) and stream.isatty()
        self.t0 = time.perf_counter()
        self.last = -1e9
        self.start_done = 0

    def update(self, done: int, shards_done: int, shards_total: int, running: int, failed: int, final=False):
        if self.stream is None:
            return
        now = time.perf_counter()
        if not final and not self.tty and now - self.last < self.every:
            return
        self.last = now
        el = now - self.t0
        rate = (done - self.start_done) / el if el > 0 else 0.0
        left = max(self.total - done, 0)
        eta = f"{int(left / rate) // 60}:{int(left / rate) % 60:02d}" if rate > 0 else "--:--"
        width = 24
        fill = int(width * min(done / self.total, 1.0))
        line = (f"[{'#' * fill}{'.' * (width - fill)}] {done:,}/{self.total:,} households "
                f"{rate:,.1f}/s ETA {eta} | shards {shards_done}/{shards_total} done, {running} in flight"
                + (f", {failed} FAILED" if failed else ""))
        if self.tty:
            print("\r" + line + ("\n" if final else ""), end="", file=self.stream, flush=True)
        else:
            print(line, file=self.stream, flush=True)


def connect_ray(address: str | None, num_cpus: int | None) -> bool:
    """Initialize Ray if needed: join ``address`` (else ``RAY_ADDRESS``), or start a local Ray
    with ``num_cpus`` CPUs (None: all). True if this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # A private Ray for this run: its start-up notices are not the desk's business.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR)
    return True


def _cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0.0))


def _error_text(e: BaseException) -> str:
    if isinstance(e, RayTaskError):
        cause = e.cause if getattr(e, "cause", None) is not None else e
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def run_book(req: RunRequest, stream: TextIO | None = sys.stderr) -> RunOutcome:
    """Run (or resume) a full-book rebalance; returns the outcome with its summary."""
    t0 = time.perf_counter()
    book = Book.open(req.book, req.s3)
    date = req.date or book.as_of
    run_id = req.run_id or new_run_id(date)
    layout = RunLayout(open_uri(req.out, req.s3), run_id)
    run = {"run_id": run_id, "book": req.book, "book_fingerprint": book_fingerprint(book), "date": date.isoformat(),
           "solver": req.solver, "settings": settings_to_json(req.settings)}
    plan, resumed = layout.start(run, plan_shards(book.info, req.shard_work))
    layout.clear_manifest()  # the run is complete again only when this attempt says so
    records = layout.complete_records(plan) if resumed else {}
    todo = deque(s for s in plan.shards if s.shard_id not in records)
    t_plan = time.perf_counter() - t0
    if stream is not None:
        print(f"run {run_id}: {len(plan.shards)} shards of {plan.households:,.0f} households"
              + (f"; resuming, {len(records)} complete" if resumed else "") + f" -> {layout.uri}", file=stream)

    t = time.perf_counter()
    if todo and req.solver != "reference":
        # Compile the fast solver's kernel here, once, or load it from numba's cache: the workers
        # of this machine then load it (under a second) instead of each compiling it (~40 s).
        fastsolve.warm_up()
    t_warm = time.perf_counter() - t
    t = time.perf_counter()
    started_ray = connect_ray(req.address, req.num_cpus) if todo else False
    t_init = time.perf_counter() - t
    failed: dict[int, str] = {}
    ran_now: set[int] = set()
    attempts: dict[int, int] = {}
    t_fan = time.perf_counter()
    cpus = 0.0
    try:
        if todo:
            cpus = _cluster_cpus()
            # The progress actor lives on the driver's node, strictly: a soft pin lets Ray place
            # it on a worker node (it does so when the head has 0 CPUs), and losing that node
            # would reset its counts (the bar, the retries in the summary). The driver's node goes
            # only with the driver. If the actor is lost anyway, Ray restarts it and the run goes on.
            progress = Progress.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False)).remote()
            done_before = int(sum(r["counts"]["households_in"] for r in records.values()))
            bar = _Bar(plan.households, stream)
            bar.start_done = done_before
            pending: dict = {}
            polled = 0  # households done in this attempt, as the progress actor last said
            last_cpu_check = time.perf_counter()
            limit = req.max_in_flight or max(MIN_IN_FLIGHT, int(2 * cpus))
            while todo or pending:
                if req.max_in_flight is None and time.perf_counter() - last_cpu_check > 5.0:
                    now_cpus = _cluster_cpus()
                    cpus = max(cpus, now_cpus)
                    limit = max(MIN_IN_FLIGHT, int(2 * now_cpus))
                    last_cpu_check = time.perf_counter()
                while todo and len(pending) < limit:
                    s = todo.popleft()
                    job = ShardJob(book_uri=req.book, book_fingerprint=run["book_fingerprint"], out_uri=req.out,
                                   run_id=run_id, shard=s, n_buckets=plan.n_buckets, date=date, solver=req.solver,
                                   settings=req.settings, s3=req.s3)
                    pending[shard_task.remote(job, progress)] = s
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.5, fetch_local=True)
                for ref in ready:
                    s = pending.pop(ref)
                    try:
                        rec = ray.get(ref)
                    except RayError as e:
                        rec = {"shard_id": s.shard_id, "failed": _error_text(e)}
                    if "failed" in rec:
                        failed[s.shard_id] = rec["failed"]
                    else:
                        records[s.shard_id] = rec
                        ran_now.add(s.shard_id)
                polled = _poll(progress.total.remote(), polled)
                bar.update(done_before + polled, len(records), len(plan.shards), len(pending), len(failed))
            done = done_before + sum(records[k]["counts"]["households_in"] for k in ran_now)
            bar.update(done, len(records), len(plan.shards), 0, len(failed), final=True)
            attempts = _poll(progress.attempts.remote(), {}, timeout=10.0)
            ray.kill(progress)
    finally:
        t_fan = time.perf_counter() - t_fan
        t = time.perf_counter()
        if started_ray:
            ray.shutdown()  # a local Ray this run started (about 1.5 s); none where it joined a cluster
        t_stop = time.perf_counter() - t

    t = time.perf_counter()
    timings = {"plan": t_plan, "warm_up": t_warm, "ray_init": t_init, "fan_out": t_fan if ran_now or failed else 0.0,
               "ray_stop": t_stop}
    summary = build_summary(run, plan, book.info, records, ran_now, failed, timings, cpus, attempts)
    summary["out"] = layout.uri
    summary["timings"]["summary"] = time.perf_counter() - t
    summary["timings"]["wall"] = time.perf_counter() - t0
    text = format_summary(summary, layout.uri)
    try:
        layout.write_summary(summary)
        if summary["complete"]:
            layout.sweep_temporaries()  # left by tasks killed mid-write (a lost node, a killed driver)
            layout.write_manifest(build_manifest(run, plan, book.info, records))  # last: makes the run complete
    except StorageError as e:
        if stream is not None:
            print(text, file=stream)
        raise StorageError(f"run {run_id}: the shards above are written, but the run's "
                           f"{'summary and manifest' if summary['complete'] else 'summary'} could not be: {e}; "
                           "re-run with the same --run-id to finish it") from e
    return RunOutcome(run_id=run_id, uri=layout.uri, complete=summary["complete"], summary=summary, text=text)


def _poll(ref, default, timeout: float = 2.0):
    """The progress actor's answer, or ``default`` (its last one) if it is restarting or gone:
    the bar must never stall the run."""
    try:
        return ray.get(ref, timeout=timeout)
    except (GetTimeoutError, RayError):
        return default
