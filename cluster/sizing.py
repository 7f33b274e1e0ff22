"""Cluster sizing from a measured capacity test: how many workers finish a book of N accounts
in T minutes, how long a book takes on W workers, and how much memory a worker pod needs.

Pure functions over a :class:`Throughput` read from ``docs/capacity/capacity-<N>.json`` (what
``rebalance capacity`` wrote); nothing here imports ray or touches a cluster. See
docs/sizing.md.

What is **measured** (from the capacity file): task seconds per household
(``stages.total.task_seconds`` / ``run.households``), households per account, the book's mix of
lots and positions (which sets the number of shards), how well the CPUs were kept busy during
the fan-out, the driver's fixed time (Ray start and stop, planning, the kernel's warm-up,
summary), and the peak resident memory of a task process and of the driver.

What is **assumed** (:class:`Overheads`, parameters with defaults): how long a fresh cluster
takes to come up (head pod, image pull, job submission), how long workers take to join from
zero (node provisioning, image pull, Ray start), and how long a new worker process takes before
its first shard (imports, reference tables). Replace them with your cluster's figures.

The model of a run on ``W`` workers of ``C`` CPUs (one task per CPU, ``P = W C`` slots)::

    households  H = accounts * households_per_account                (measured ratio)
    work        = H * task_seconds_per_household                      (CPU-seconds)
    shards      S = shards the planner makes for a book of that mix   (cluster.plan.plan_shards)
    fan-out     = ceil(S / P) * (work / S) / efficiency               (waves of equal shards)
    wall        = fixed overheads + fan-out

``efficiency`` is the measured share of the fan-out the CPUs spent in tasks. More slots than
shards do not help: at ``P >= S`` the fan-out is one shard's time, so workers beyond
``ceil(S / C)`` are flagged as useless.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass

from rebalancer.book import BookInfo, BucketStats

from .plan import DEFAULT_SHARD_WORK, plan_shards

__all__ = ["SizingError", "Throughput", "Overheads", "Estimate", "Sizing", "PodMemory", "GIB",
           "RAY_NODE_BYTES", "RAY_HEAD_BYTES", "OBJECT_STORE_BYTES", "MEMORY_HEADROOM",
           "book_shards", "estimate", "workers_for", "worker_pod_memory", "head_pod_memory"]

GIB = 1 << 30
# Ray's own processes on a worker node (raylet, dashboard and runtime-env agents, log monitor):
# an assumption, not measured by the capacity test (which counts task processes only).
RAY_NODE_BYTES = 1 * GIB
# The head's Ray processes (GCS, dashboard, raylet, job supervisor) beside the driver: assumed.
RAY_HEAD_BYTES = 2 * GIB
# Object store per node, set with --object-store-memory in infra/: tasks take and return a few
# KB (the shard's plan and its completion record), never the book, so 1 GiB is ample.
OBJECT_STORE_BYTES = 1 * GIB
# Margin on the measured peaks: a shard of a heavier mix (more direct-indexed accounts) than the
# measured book's.
MEMORY_HEADROOM = 0.25


class SizingError(ValueError):
    """Bad sizing input: a capacity file that is not one, or a request that makes no sense."""


def _get(obj: dict, path: str, source: str):
    cur = obj
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            raise SizingError(f"{source}: missing {path}")
        cur = cur[key]
    return cur


def _positive(obj: dict, path: str, source: str) -> float:
    x = _get(obj, path, source)
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        raise SizingError(f"{source}: {path} must be a positive number (got {x!r})")
    return float(x)


@dataclass(frozen=True)
class Throughput:
    """What one complete capacity run measured (all figures from its JSON; see the module doc)."""
    source: str
    created: str
    solver: str
    cpu_model: str
    cpus: float                  # CPUs of the measured run
    accounts: int
    households: int
    buckets: int
    lots: int
    positions: int
    shards: int
    shard_work: float
    task_seconds: float          # stages.total.task_seconds: all shards, all stages
    fan_out_seconds: float
    driver_seconds: float        # Ray start and stop + planning + kernel warm-up + summary: the run's fixed time
    wall_seconds: float
    worker_peak_rss_bytes: int   # largest peak over the task processes
    driver_peak_rss_bytes: int

    def __post_init__(self):
        for name in ("cpus", "accounts", "households", "buckets", "shards", "shard_work", "task_seconds",
                     "fan_out_seconds", "wall_seconds", "worker_peak_rss_bytes", "driver_peak_rss_bytes"):
            if not getattr(self, name) > 0:
                raise SizingError(f"{self.source}: {name} must be > 0 (got {getattr(self, name)!r})")
        if self.driver_seconds < 0 or self.lots < 0 or self.positions < 0:
            raise SizingError(f"{self.source}: negative driver seconds, lots or positions")

    @classmethod
    def from_capacity(cls, obj: dict, source: str = "capacity JSON") -> "Throughput":
        """Read a ``rebalancer-capacity`` report (``docs/capacity/capacity-<N>.json``)."""
        if not isinstance(obj, dict) or obj.get("format") != "rebalancer-capacity":
            raise SizingError(f"{source}: not a capacity report (format {obj.get('format') if isinstance(obj, dict) else None!r}, "
                              "expected 'rebalancer-capacity')")
        if obj.get("version") != 1:
            raise SizingError(f"{source}: capacity report version {obj.get('version')!r} not supported (this code reads 1)")
        if _get(obj, "run.complete", source) is not True:
            raise SizingError(f"{source}: the measured run is not complete; its figures cannot size a cluster")
        run = _get(obj, "run", source)
        driver = sum(float(run.get(k) or 0.0)
                     for k in ("ray_start_seconds", "plan_seconds", "warm_up_seconds", "ray_stop_seconds", "summary_seconds"))
        return cls(
            source=source, created=str(obj.get("created", "")), solver=str(run.get("solver", "")),
            cpu_model=str(obj.get("machine", {}).get("cpu_model", "")),
            cpus=_positive(obj, "run.cpus", source),
            accounts=int(_positive(obj, "run.accounts_in", source)),
            households=int(_positive(obj, "run.households", source)),
            buckets=int(_positive(obj, "book.buckets", source)),
            lots=int(_get(obj, "book.lots", source)), positions=int(_get(obj, "book.positions", source)),
            shards=int(_positive(obj, "run.shards", source)),
            shard_work=_positive(obj, "run.shard_work", source),
            task_seconds=_positive(obj, "stages.total.task_seconds", source),
            fan_out_seconds=_positive(obj, "run.fan_out_seconds", source),
            driver_seconds=driver,
            wall_seconds=_positive(obj, "run.wall_seconds", source),
            worker_peak_rss_bytes=int(_positive(obj, "memory.worker_peak_rss_bytes", source)),
            driver_peak_rss_bytes=int(_positive(obj, "memory.driver_peak_rss_bytes", source)),
        )

    @classmethod
    def load(cls, path: str) -> "Throughput":
        try:
            with open(path) as f:
                obj = json.load(f)
        except FileNotFoundError:
            raise SizingError(f"capacity file not found: {path} (run from the repository root, or pass --capacity; "
                              "`rebalance capacity` writes docs/capacity/capacity-<N>.json)") from None
        except json.JSONDecodeError as e:
            raise SizingError(f"{path}: not JSON ({e})") from None
        return cls.from_capacity(obj, source=path)

    @property
    def task_seconds_per_household(self) -> float:
        return self.task_seconds / self.households

    @property
    def households_per_account(self) -> float:
        return self.households / self.accounts

    @property
    def efficiency(self) -> float:
        """Share of the fan-out's CPU time spent in tasks (scheduling, worker start and the
        run's tail are the rest); at most 1."""
        return min(1.0, self.task_seconds / (self.fan_out_seconds * self.cpus))

    @property
    def date(self) -> str:
        try:
            return dt.datetime.fromisoformat(self.created).date().isoformat()
        except ValueError:
            return self.created


@dataclass(frozen=True)
class Overheads:
    """Fixed seconds of a run beside its tasks. Defaults are assumptions for a RayJob on EKS
    whose workers start from zero; ``driver_seconds`` None takes the capacity file's measured
    driver time.

    cluster_start_seconds : the RayJob's head pod scheduled, image pulled, Ray started, the job
        submitted (0 when joining a running cluster).
    scale_up_seconds : workers from zero: nodes provisioned by the node autoscaler, image pulled,
        Ray joined (0 when the workers are already up).
    worker_start_seconds : a new worker process before its first shard: imports and the
        reference tables read once per process.
    """
    cluster_start_seconds: float = 90.0
    scale_up_seconds: float = 180.0
    worker_start_seconds: float = 10.0
    driver_seconds: float | None = None

    def __post_init__(self):
        for name in ("cluster_start_seconds", "scale_up_seconds", "worker_start_seconds", "driver_seconds"):
            x = getattr(self, name)
            if x is not None and not (math.isfinite(x) and x >= 0):
                raise SizingError(f"{name} must be >= 0 (got {x!r})")

    def total(self, tp: Throughput) -> float:
        driver = tp.driver_seconds if self.driver_seconds is None else self.driver_seconds
        return self.cluster_start_seconds + self.scale_up_seconds + self.worker_start_seconds + driver


@dataclass(frozen=True)
class Estimate:
    """A run of ``accounts`` on ``workers`` workers of ``cpus_per_worker`` CPUs."""
    accounts: int
    households: int
    shards: int
    workers: int
    cpus_per_worker: int
    task_seconds: float       # CPU-seconds of all tasks
    shard_seconds: float      # one shard, mean
    waves: int                # ceil(shards / CPUs)
    fan_out_seconds: float
    fixed_seconds: float
    useful_workers: int       # ceil(shards / cpus_per_worker): more do not help

    @property
    def cpus(self) -> int:
        return self.workers * self.cpus_per_worker

    @property
    def wall_seconds(self) -> float:
        return self.fixed_seconds + self.fan_out_seconds

    @property
    def minutes(self) -> float:
        return self.wall_seconds / 60.0

    @property
    def idle_workers(self) -> bool:
        """More workers than the shards can keep busy."""
        return self.workers > self.useful_workers

    def to_json(self) -> dict:
        return {**asdict(self), "cpus": self.cpus, "wall_seconds": self.wall_seconds, "minutes": self.minutes,
                "idle_workers": self.idle_workers}


@dataclass(frozen=True)
class Sizing:
    """The fewest workers that finish within ``target_minutes`` (``feasible``), or, when no
    number does, the estimate at the most workers that help and the reason."""
    target_minutes: float
    feasible: bool
    estimate: Estimate
    reason: str = ""

    @property
    def workers(self) -> int:
        return self.estimate.workers

    def to_json(self) -> dict:
        return {"target_minutes": self.target_minutes, "feasible": self.feasible, "workers": self.workers,
                "reason": self.reason, "estimate": self.estimate.to_json()}


def _check_request(accounts: int, cpus_per_worker: int, shard_work: float) -> None:
    if isinstance(accounts, bool) or not isinstance(accounts, int) or accounts < 1:
        raise SizingError(f"accounts must be a whole number >= 1 (got {accounts!r})")
    if isinstance(cpus_per_worker, bool) or not isinstance(cpus_per_worker, int) or cpus_per_worker < 1:
        raise SizingError(f"cpus per worker must be a whole number >= 1 (got {cpus_per_worker!r})")
    if not (math.isfinite(shard_work) and shard_work > 0):
        raise SizingError(f"shard work must be > 0 (got {shard_work!r})")


def _spread(total: float, n: int) -> list[int]:
    """``round(total)`` split into ``n`` whole parts differing by at most one."""
    whole = int(round(total))
    return [whole // n + (1 if i < whole % n else 0) for i in range(n)]


def book_shards(tp: Throughput, accounts: int, shard_work: float = DEFAULT_SHARD_WORK) -> int:
    """Shards the planner (:func:`cluster.plan.plan_shards`) makes for a book of ``accounts``
    with the measured book's mix: its accounts per bucket, households, lots and positions per
    account. A real book's count is in its run's ``run.json``."""
    _check_request(accounts, 1, shard_work)
    n_buckets = max(1, math.ceil(accounts / (tp.accounts / tp.buckets)))
    per = {name: _spread(accounts * getattr(tp, name) / tp.accounts, n_buckets)
           for name in ("households", "lots", "positions")}
    acc = _spread(accounts, n_buckets)
    buckets = tuple(BucketStats(bucket=b, households=per["households"][b], accounts=acc[b], lots=per["lots"][b],
                                recent_trades=0, positions=per["positions"][b], value=0.0) for b in range(n_buckets))
    info = BookInfo(as_of=dt.date(2000, 1, 3), n_buckets=n_buckets, buckets=buckets)
    return len(plan_shards(info, shard_work).shards)


def estimate(tp: Throughput, accounts: int, workers: int, cpus_per_worker: int,
             overheads: Overheads = Overheads(), shard_work: float = DEFAULT_SHARD_WORK) -> Estimate:
    """Expected wall time of a run of ``accounts`` on ``workers`` workers of ``cpus_per_worker``
    CPUs (the model in the module doc)."""
    _check_request(accounts, cpus_per_worker, shard_work)
    return _estimate(tp, accounts, workers, cpus_per_worker, overheads, book_shards(tp, accounts, shard_work))


def _estimate(tp: Throughput, accounts: int, workers: int, cpus_per_worker: int, overheads: Overheads,
              shards: int) -> Estimate:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SizingError(f"workers must be a whole number >= 1 (got {workers!r})")
    households = accounts * tp.households_per_account
    work = households * tp.task_seconds_per_household
    shard_seconds = work / shards
    waves = math.ceil(shards / (workers * cpus_per_worker))
    return Estimate(accounts=accounts, households=int(round(households)), shards=shards, workers=workers,
                    cpus_per_worker=cpus_per_worker, task_seconds=work, shard_seconds=shard_seconds, waves=waves,
                    fan_out_seconds=waves * shard_seconds / tp.efficiency, fixed_seconds=overheads.total(tp),
                    useful_workers=math.ceil(shards / cpus_per_worker))


def workers_for(tp: Throughput, accounts: int, minutes: float, cpus_per_worker: int,
                overheads: Overheads = Overheads(), shard_work: float = DEFAULT_SHARD_WORK) -> Sizing:
    """The fewest workers of ``cpus_per_worker`` CPUs that run ``accounts`` in ``minutes``,
    never more than the shards can use (``ceil(shards / cpus_per_worker)``)."""
    if not (math.isfinite(minutes) and minutes > 0):
        raise SizingError(f"minutes must be > 0 (got {minutes!r})")
    _check_request(accounts, cpus_per_worker, shard_work)
    shards = book_shards(tp, accounts, shard_work)
    most = math.ceil(shards / cpus_per_worker)
    for w in range(1, most + 1):  # the wall time only falls with w; shards number in the thousands at most
        e = _estimate(tp, accounts, w, cpus_per_worker, overheads, shards)
        if e.wall_seconds <= minutes * 60.0:
            return Sizing(target_minutes=minutes, feasible=True, estimate=e)
    e = _estimate(tp, accounts, most, cpus_per_worker, overheads, shards)
    if e.fixed_seconds >= minutes * 60.0:
        why = (f"the fixed overheads alone take {e.fixed_seconds / 60:.1f} min; start from a running cluster "
               "(warm workers) or allow more time")
    else:
        why = (f"{e.shards:,} shards keep at most {most} workers of {cpus_per_worker} CPUs busy, and then one shard "
               f"({e.shard_seconds:.1f} s) plus {e.fixed_seconds / 60:.1f} min fixed take {e.minutes:.1f} min; "
               "a smaller --shard-work makes more, shorter shards")
    return Sizing(target_minutes=minutes, feasible=False, estimate=e, reason=f"not reachable in {minutes:g} min: {why}")


@dataclass(frozen=True)
class PodMemory:
    """Memory of a Ray pod, derived from measured process peaks::

        required = (processes * process_bytes + ray_bytes) * (1 + headroom) + object_store_bytes

    rounded up to whole GiB for the pod's request and limit (equal: memory cannot be borrowed
    back, and a pod over its limit is killed)."""
    processes: int           # task processes (one per CPU), or 1 for the head's driver
    process_bytes: int       # measured peak resident memory of one such process
    ray_bytes: int           # Ray's own processes on the node (assumed)
    object_store_bytes: int  # --object-store-memory (a /dev/shm tmpfs, counted in the pod's memory)
    headroom: float = MEMORY_HEADROOM

    def __post_init__(self):
        if self.processes < 1 or self.process_bytes <= 0 or self.ray_bytes < 0 or self.object_store_bytes < 0:
            raise SizingError(f"bad pod memory inputs: {self}")
        if not 0 <= self.headroom <= 4:
            raise SizingError(f"memory headroom must be in [0, 4] (got {self.headroom!r})")

    @property
    def required_bytes(self) -> int:
        return math.ceil((self.processes * self.process_bytes + self.ray_bytes) * (1 + self.headroom)) \
            + self.object_store_bytes

    @property
    def gib(self) -> int:
        return math.ceil(self.required_bytes / GIB)

    @property
    def quantity(self) -> str:
        """The Kubernetes quantity of the request and limit, e.g. ``14Gi``."""
        return f"{self.gib}Gi"

    def to_json(self) -> dict:
        return {**asdict(self), "required_bytes": self.required_bytes, "gib": self.gib, "quantity": self.quantity}


def worker_pod_memory(tp: Throughput, cpus: int, headroom: float = MEMORY_HEADROOM,
                      object_store_bytes: int = OBJECT_STORE_BYTES, ray_bytes: int = RAY_NODE_BYTES) -> PodMemory:
    """A worker pod of ``cpus`` CPUs runs one task process per CPU, each up to the measured
    worker peak (a process's peak does not grow with the book: shards are of fixed work)."""
    return PodMemory(processes=cpus, process_bytes=tp.worker_peak_rss_bytes, ray_bytes=ray_bytes,
                     object_store_bytes=object_store_bytes, headroom=headroom)


def head_pod_memory(tp: Throughput, headroom: float = MEMORY_HEADROOM,
                    object_store_bytes: int = OBJECT_STORE_BYTES, ray_bytes: int = RAY_HEAD_BYTES) -> PodMemory:
    """The head (``num-cpus 0``) runs the driver, whose peak the capacity test measures, beside
    Ray's head processes."""
    return PodMemory(processes=1, process_bytes=tp.driver_peak_rss_bytes, ray_bytes=ray_bytes,
                     object_store_bytes=object_store_bytes, headroom=headroom)
