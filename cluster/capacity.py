"""The capacity test (issue 5): how big a book, how many CPUs, how long, and at what accuracy.

One call of :func:`run_capacity`:

1. **Book.** Reuses the book at ``book`` when its ``book.json`` says it was generated with the
   same accounts, seed and accounts per bucket; otherwise generates it
   (:func:`rebalancer.generate.generate_book`). Generation is timed apart from the run.
2. **Run.** The full job, :func:`cluster.driver.run_book`, always as a new run. Its wall time
   (book opened to summary written, Ray start included and also given apart) gives
   accounts/s and households/s. Per stage (read, split, build, solve, post-process, write)
   the task seconds are summed from the shards' completion records (``_shards/*.json``),
   with their shares and an estimated wall time (task seconds / CPUs).
3. **Memory.** Driver: the peak resident memory of this process during the run (the book is
   generated in a child process, and the high-water mark is reset just before the run where
   Linux allows it; Ray's own processes, children of this one, never count). Workers: the
   largest ``worker_peak_rss_bytes`` of the shard records.
4. **Both solvers side by side** on a seeded sample of households from a few buckets: per
   kind of :data:`rebalancer.kinds.KINDS`, ``per_kind`` households, and a standard mix of
   ``mix`` households taken at random, in book order. For each set the fast solver runs once
   over the whole set (batched, as the job runs it) against the sum of one reference solve
   per household: the speed ratio reference / fast, the fast solver's statuses, and the
   objective gaps ``|f - r|`` over their allowance ``max(1e-3 |r|, 1e-5)`` (units of
   household value, as in ``tests/test_fastsolve.py``).

Figures go to ``capacity.json`` in the run's folder and, for a complete run, to
``<docs>/capacity/capacity-<accounts>.json``; ``<docs>/capacity.md`` is then regenerated from
every JSON there (:func:`render_markdown`), one row per book size.
"""
from __future__ import annotations

import datetime as dt
import glob
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from typing import TextIO

import numpy as np

from rebalancer import jsonout
from rebalancer.book import Book, BookInfo
from rebalancer.errors import BookDataError, BookLayoutError, RunError
from rebalancer.fastsolve import solve_batch
from rebalancer.generate import GeneratorSettings, generate_book
from rebalancer.household import Household, split_households
from rebalancer.kinds import KINDS, household_kinds
from rebalancer.market import Market
from rebalancer.problem import HouseholdProblem, build_problem
from rebalancer.reference import solve_reference
from rebalancer.schema import HOUSEHOLD_TABLES, REFERENCE_TABLES
from rebalancer.settings import OptimizerSettings
from rebalancer.solution import SolveResult, SolveStatus
from rebalancer.solvers import DEFAULT_SOLVER, SOLVERS
from rebalancer.storage import S3Options, open_uri

from .driver import RunRequest, run_book
from .layout import RunLayout
from .plan import DEFAULT_SHARD_WORK, Plan
from .shard import settings_to_json
from .summary import TASK_STAGES

__all__ = ["CapacityRequest", "BookReady", "Sample", "default_book_uri", "ensure_book",
           "draw_sample", "compare_solvers", "run_capacity", "load_reports", "render_markdown", "write_docs",
           "format_report", "MIX", "REPORT_FILE"]

FORMAT, VERSION = "rebalancer-capacity", 1
REPORT_FILE = "capacity.json"  # in the run's folder
MIX = "mix"  # the standard-mix sample set
STAGE_LABELS = {"read": "read", "split": "split", "build": "build", "solve": "solve", "postprocess": "post",
                "write": "write"}
_MB = 1024.0 * 1024.0


def default_book_uri(accounts: int, seed: int) -> str:
    return f"data/capacity/book-{accounts}-s{seed}"


@dataclass(frozen=True)
class CapacityRequest:
    """A capacity test.

    accounts, seed, accounts_per_bucket : the generated book's settings.
    book : its URI (None: :func:`default_book_uri`). A book there with other settings is
        replaced only at the default path or with ``overwrite_book``.
    generate_workers : processes generating the book (0: one per CPU, at most one per bucket).
    out, date, address, num_cpus, solver, shard_work, max_in_flight, settings, s3 : the run's
        (:class:`cluster.driver.RunRequest`); solver None: the job's default (``fast``).
    per_kind, mix, sample_buckets, sample_seed : the side-by-side sample: households per kind,
        households of the standard mix, buckets read, seed. ``per_kind = mix = 0``: no sample.
    docs : folder for ``capacity/capacity-<accounts>.json`` and ``capacity.md`` (None: none).
    """
    accounts: int
    seed: int = 1
    book: str | None = None
    overwrite_book: bool = False
    accounts_per_bucket: int = 2500
    generate_workers: int = 0
    out: str = "data/capacity/runs"
    date: dt.date | None = None
    address: str | None = None
    num_cpus: int | None = None
    solver: str | None = None
    shard_work: float = DEFAULT_SHARD_WORK
    max_in_flight: int | None = None
    settings: OptimizerSettings = field(default_factory=OptimizerSettings)
    s3: S3Options | None = None
    per_kind: int = 20
    mix: int = 100
    sample_buckets: int = 2
    sample_seed: int = 0
    docs: str | None = "docs"

    def __post_init__(self):
        GeneratorSettings(accounts=self.accounts, seed=self.seed, accounts_per_bucket=self.accounts_per_bucket)
        for name in ("per_kind", "mix", "generate_workers", "sample_seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.sample_buckets < 1:
            raise ValueError(f"sample_buckets must be >= 1, got {self.sample_buckets}")
        if self.solver is not None and self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose from {sorted(SOLVERS)}")

    @property
    def book_uri(self) -> str:
        return self.book or default_book_uri(self.accounts, self.seed)

    @property
    def generator(self) -> GeneratorSettings:
        return GeneratorSettings(accounts=self.accounts, seed=self.seed, accounts_per_bucket=self.accounts_per_bucket)


# The book ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BookReady:
    uri: str
    info: BookInfo
    generated: bool
    generate_seconds: float | None = None  # None: reused
    generate_peak_rss_bytes: int | None = None  # the generating process's (its workers' not counted)


def _mismatch(info: BookInfo, g: GeneratorSettings) -> str | None:
    """Why the book is not the one ``g`` would generate (None: it is)."""
    src = info.source
    want = {"generator": "rebalancer.generate", "accounts": g.accounts, "seed": g.seed,
            "accounts_per_bucket": g.accounts_per_bucket}
    diff = [f"{k} {src.get(k)!r} (want {v!r})" for k, v in want.items() if src.get(k) != v]
    if not diff and info.total("accounts") != g.accounts:
        diff.append(f"{info.total('accounts'):,} accounts in book.json (want {g.accounts:,})")
    return ", ".join(diff) or None


def ensure_book(req: CapacityRequest) -> BookReady:
    """The book of ``req``: reused if it is there with the same settings, else generated."""
    uri = req.book_uri
    g = req.generator
    try:
        info = Book.open(uri, req.s3).info
    except BookLayoutError:
        info = None  # no book.json: nothing there, or a generation that did not finish
    if info is not None:
        why = _mismatch(info, g)
        if why is None:
            return BookReady(uri, info, generated=False, generate_seconds=None)
        if req.book is not None and not req.overwrite_book:
            raise RunError(f"{uri} holds another book ({why}); pass --overwrite-book to replace it, "
                           "or another --book")
    workers = req.generate_workers or min(os.cpu_count() or 1, g.n_buckets)
    t = time.perf_counter()
    # In a child process: the driver's peak memory is then the run's alone, and the
    # generator's universe does not stay in the driver.
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        info_json, peak = ex.submit(_generate, g, uri, req.s3, workers).result()
    return BookReady(uri, BookInfo.from_json(info_json), generated=True, generate_seconds=time.perf_counter() - t,
                     generate_peak_rss_bytes=peak)


def _generate(g: GeneratorSettings, uri: str, s3: S3Options | None, workers: int) -> tuple[dict, int]:
    info = generate_book(g, uri, s3=s3, overwrite=True, workers=workers)
    return info.to_json(), _peak_rss_bytes()


# The sample ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """Households drawn for the side-by-side comparison.

    sets : set name (:data:`MIX` or a kind) -> its households' problems, in book order.
    candidates : set name -> households of the read buckets eligible for it.
    """
    seed: int
    buckets: tuple[int, ...]
    households_read: int
    not_buildable: int  # households whose problem cannot be built (bad data): not sampled
    sets: dict[str, list[HouseholdProblem]]
    candidates: dict[str, int]

    def household_ids(self) -> dict[str, list[int]]:
        return {k: [p.household_id for p in ps] for k, ps in self.sets.items()}


def _pick(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``min(k, n)`` of ``range(n)`` at random, in increasing order."""
    return np.sort(rng.choice(n, size=min(k, n), replace=False)) if n and k else np.zeros(0, int)


def draw_sample(book: Book, settings: OptimizerSettings, date: dt.date, per_kind: int, mix: int,
                n_buckets: int = 2, seed: int = 0) -> Sample:
    """A seeded sample: ``n_buckets`` buckets at random; in them ``per_kind`` households of every
    kind and ``mix`` households of any kind. Same book and arguments, same households."""
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    nb = book.info.n_buckets
    buckets = tuple(int(b) for b in _pick(rng, nb, n_buckets))
    market = Market.from_tables({t.name: book.read(t.name) for t in REFERENCE_TABLES}, book.as_of)
    day = np.datetime64(date, "D")
    households: list[Household] = []
    for b in buckets:
        hhs, _ = split_households(market, {t.name: book.read(t.name, b) for t in HOUSEHOLD_TABLES})
        households.extend(hhs)
    # Kinds need the problem; problems of direct-indexed households are large, so only the
    # sampled ones are kept (built again below).
    kinds: list[frozenset[str]] = []
    ok: list[int] = []
    for i, hh in enumerate(households):
        try:
            p = build_problem(market, hh, settings, day)
        except BookDataError:
            continue
        ok.append(i)
        kinds.append(household_kinds(market, hh, p, settings.wash_window_days))
    picked: dict[str, np.ndarray] = {}
    candidates: dict[str, int] = {}
    pool = np.asarray(ok, int)
    candidates[MIX] = len(pool)
    picked[MIX] = pool[_pick(rng, len(pool), mix)]
    for k in KINDS:
        pool = np.asarray([i for i, ks in zip(ok, kinds) if k in ks], int)
        candidates[k] = len(pool)
        picked[k] = pool[_pick(rng, len(pool), per_kind)]
    built: dict[int, HouseholdProblem] = {}
    sets = {}
    for name, idx in picked.items():
        for i in idx:
            if int(i) not in built:
                built[int(i)] = build_problem(market, households[int(i)], settings, day)
        sets[name] = [built[int(i)] for i in idx]
    return Sample(seed=seed, buckets=buckets, households_read=len(households),
                  not_buildable=len(households) - len(ok), sets=sets, candidates=candidates)


def _status_counts(results: list[SolveResult]) -> dict[str, int]:
    return {s.value: sum(r.status == s for r in results) for s in SolveStatus}


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    return (max(values), statistics.median(values)) if values else (None, None)


def compare_solvers(problems: list[HouseholdProblem], tolerance: float) -> dict:
    """Fast (one batched call over ``problems``) against the reference (one solve each)."""
    n = len(problems)
    out: dict = {"households": n}
    if not n:
        return out
    t = time.perf_counter()
    fast = solve_batch(problems, tolerance)
    fast_s = time.perf_counter() - t
    ref, ref_s = [], 0.0
    for p in problems:
        t = time.perf_counter()
        ref.append(solve_reference(p, tolerance))
        ref_s += time.perf_counter() - t
    rel, gaps_usd, worst = [], [], (None, -1.0)
    for p, f, r in zip(problems, fast, ref):
        if not (f.status.usable and r.status.usable):
            continue
        gap = abs(f.objective - r.objective)
        q = gap / max(1e-3 * abs(r.objective), 1e-5)
        rel.append(q)
        gaps_usd.append(gap * p.value)
        if q > worst[1]:
            worst = (p.household_id, q)
    mx, med = _stats(rel)
    usable_f = [f.primal_residual for f in fast if f.status.usable]
    out.update({
        "lots": int(sum(len(p.lots.value) for p in problems)),
        "variables": int(sum(p.n_vars for p in problems)),
        "reference_seconds": ref_s,
        "fast_seconds": fast_s,
        "speed_ratio": ref_s / fast_s if fast_s > 0 else None,
        "reference_ms_per_household": 1e3 * ref_s / n,
        "fast_ms_per_household": 1e3 * fast_s / n,
        "fast_status": _status_counts(fast),
        "reference_status": _status_counts(ref),
        "compared": len(rel),
        "gap_over_allowance_max": mx,
        "gap_over_allowance_median": med,
        "over_allowance": sum(q > 1.0 for q in rel),
        "gap_usd_max": max(gaps_usd) if gaps_usd else None,
        "worst_household_id": worst[0],
        "fast_primal_residual_max": max(usable_f) if usable_f else None,
    })
    return out


# Figures of the run --------------------------------------------------------------------------

def _reset_peak_rss() -> bool:
    """Reset this process's resident-memory high-water mark (Linux: ``clear_refs`` 5), so
    ``ru_maxrss`` from here on is the peak of what follows. False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb if sys.platform == "darwin" else kb * 1024)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("numpy", "scipy", "pyarrow", "ray", "cvxpy", "clarabel"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _machine() -> dict:
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model, "memory_bytes": mem, "platform": platform.platform(),
        "python": platform.python_version(), **_versions(),
    }


def _stages(records: list[dict], cpus: float) -> dict:
    task = {s: sum(r["timings"].get(s, 0.0) for r in records) for s in TASK_STAGES}
    total = sum(r["timings"].get("total", 0.0) for r in records)
    task["other"] = max(total - sum(task.values()), 0.0)  # in a task, outside the stages
    out = {s: {"task_seconds": v, "share": v / total if total > 0 else None,
               "wall_seconds_est": v / cpus if cpus > 0 else None} for s, v in task.items()}
    out["total"] = {"task_seconds": total, "share": 1.0 if total > 0 else None,
                    "wall_seconds_est": total / cpus if cpus > 0 else None}
    return out


def run_capacity(req: CapacityRequest, stream: TextIO | None = sys.stderr) -> dict:
    """Run the capacity test of ``req``; returns its report (also written as JSON)."""
    created = dt.datetime.now(dt.timezone.utc)
    solver = req.solver or DEFAULT_SOLVER
    ready = ensure_book(req)
    if stream is not None:
        how = f"generated in {ready.generate_seconds:,.1f} s" if ready.generated else "reused"
        print(f"capacity: book {ready.uri} ({ready.info.total('accounts'):,.0f} accounts) {how}", file=stream)

    reset = _reset_peak_rss()
    t = time.perf_counter()
    outcome = run_book(RunRequest(book=ready.uri, out=req.out, date=req.date, address=req.address, solver=solver,
                                  settings=req.settings, shard_work=req.shard_work, max_in_flight=req.max_in_flight,
                                  num_cpus=req.num_cpus, s3=req.s3), stream)
    measured = time.perf_counter() - t
    driver_peak = _peak_rss_bytes()

    s = outcome.summary
    tm, c, tot = s["timings"], s["counts"], s["totals"]
    layout = RunLayout(open_uri(req.out, req.s3), outcome.run_id)
    plan = Plan.from_json(layout.read_run()["plan"])
    records = [r for _, r in sorted(layout.complete_records(plan).items())]
    cpus = float(tm.get("cpus") or 0.0)
    wall = float(tm.get("wall") or measured)
    households = c["households_in"]
    task_total = sum(r["timings"].get("total", 0.0) for r in records)
    worker_peaks = [r["worker_peak_rss_bytes"] for r in records if r.get("worker_peak_rss_bytes")]
    info = ready.info

    sample = None
    if req.per_kind or req.mix:
        if stream is not None:
            print("capacity: sampling households and solving them both ways ...", file=stream)
        book = Book.open(ready.uri, req.s3)
        date = req.date or book.as_of
        sm = draw_sample(book, req.settings, date, req.per_kind, req.mix, req.sample_buckets, req.sample_seed)
        _warm_up(sm, req.settings.solver_tolerance)
        sets = {name: {"candidates": sm.candidates[name], **compare_solvers(ps, req.settings.solver_tolerance)}
                for name, ps in sm.sets.items()}
        sample = {"seed": sm.seed, "buckets": list(sm.buckets), "households_read": sm.households_read,
                  "not_buildable": sm.not_buildable, "per_kind": req.per_kind, "mix": req.mix,
                  "tolerance": req.settings.solver_tolerance, "allowance": "max(1e-3 * |reference|, 1e-5)",
                  "sets": sets, "household_ids": sm.household_ids()}

    report = {
        "format": FORMAT, "version": VERSION, "created": created.isoformat(timespec="seconds"),
        "accounts": req.accounts, "seed": req.seed,
        "machine": _machine(),
        "book": {"uri": ready.uri, "generated": ready.generated, "generate_seconds": ready.generate_seconds,
                 "generate_peak_rss_bytes": ready.generate_peak_rss_bytes,
                 "as_of": info.as_of.isoformat(), "buckets": info.n_buckets,
                 **{k: info.total(k) for k in ("households", "accounts", "lots", "positions", "recent_trades", "value")}},
        "run": {
            "run_id": outcome.run_id, "uri": outcome.uri, "complete": outcome.complete, "solver": solver,
            "settings": settings_to_json(req.settings), "cpus": cpus, "shards": s["shards"]["planned"],
            "shards_failed": len(s["shards"]["failed"]), "shard_work": req.shard_work,
            "wall_seconds": wall, "ray_start_seconds": tm.get("ray_init"), "plan_seconds": tm.get("plan"),
            "warm_up_seconds": tm.get("warm_up"), "ray_stop_seconds": tm.get("ray_stop"),
            "fan_out_seconds": tm.get("fan_out"), "summary_seconds": tm.get("summary"),
            "accounts_in": c["accounts_in"], "accounts_out": c["accounts_out"],
            "accounts_rebalanced": tot["accounts"]["rebalanced"], "accounts_rejected": tot["accounts"]["rejected"],
            "households": households, "households_rebalanced": tot["households"]["rebalanced"],
            "households_rejected": tot["households"]["rejected"], "household_status": tot["households"]["status"],
            "lots": c["lots"], "trades": tot["trades"]["rows"],
            "solver_totals": tot.get("solver"),  # solves, fallbacks to the reference, residuals
            "accounts_per_second": c["accounts_in"] / wall if wall > 0 else None,
            "households_per_second": households / wall if wall > 0 else None,
            # Task seconds over wall x CPUs: what is left went to Ray start, scheduling, worker
            # start-up and the tail with fewer shards than CPUs.
            "cpu_busy_share": task_total / (wall * cpus) if wall > 0 and cpus > 0 else None,
        },
        "stages": _stages(records, cpus),
        "memory": {
            "driver_peak_rss_bytes": driver_peak,
            "driver_peak_scope": "run" if reset else "process",  # process: since it started
            "worker_peak_rss_bytes": max(worker_peaks) if worker_peaks else None,
            "worker_peak_rss_bytes_median": statistics.median(worker_peaks) if worker_peaks else None,
        },
        "sample": sample,
    }
    report = jsonout.strict(report)  # JSON has no NaN or infinity: null
    layout.loc.write_json(REPORT_FILE, report)
    report["files"] = {"run": f"{outcome.uri}/{REPORT_FILE}"}
    if req.docs and outcome.complete:
        report["files"].update(write_docs(report, req.docs))
    return report


def _warm_up(sm: Sample, tolerance: float) -> None:
    """One untimed solve each way: imports and first-call caches are not the solvers' speed."""
    p = next((ps[0] for ps in sm.sets.values() if ps), None)
    if p is not None:
        solve_batch([p], tolerance)
        solve_reference(p, tolerance)


# Docs ----------------------------------------------------------------------------------------

def load_reports(docs: str) -> list[dict]:
    """Every ``<docs>/capacity/*.json`` of this format, by accounts then date."""
    out = []
    for path in sorted(glob.glob(os.path.join(docs, "capacity", "*.json"))):
        with open(path) as f:
            r = json.load(f)
        if r.get("format") == FORMAT:
            out.append(r)
    return sorted(out, key=lambda r: (r["accounts"], r["created"]))


def write_docs(report: dict, docs: str) -> dict[str, str]:
    """Write ``report`` as ``<docs>/capacity/capacity-<N>.json`` and regenerate
    ``<docs>/capacity.md`` from every report there."""
    folder = os.path.join(docs, "capacity")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"capacity-{report['accounts']}.json")
    body = {k: v for k, v in report.items() if k != "files"}
    with open(path + ".tmp", "w") as f:
        jsonout.dump(body, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
    md = os.path.join(docs, "capacity.md")
    with open(md + ".tmp", "w") as f:
        f.write(render_markdown(load_reports(docs)))
    os.replace(md + ".tmp", md)
    return {"docs_json": path, "docs_markdown": md}


def _n(x, fmt: str = ",.0f", none: str = "n/a") -> str:
    return none if x is None else format(x, fmt)


def _usd(x: float) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"${x / div:,.2f}{unit}"
    return f"${x:,.0f}"


def _plural(n, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _ordered(d: dict, first: tuple[str, ...]) -> list[tuple[str, dict]]:
    """Items of ``d`` with the keys of ``first`` first, in that order (JSON read back may be sorted)."""
    return [(k, d[k]) for k in first if k in d] + [(k, v) for k, v in d.items() if k not in first]


_STAGE_ORDER = (*TASK_STAGES, "other", "total")
_SET_ORDER = (MIX, *KINDS)


def _mb(x) -> str:
    return "n/a" if x is None else f"{x / _MB:,.0f}"


def _ratio(x) -> str:
    return "n/a" if x is None else f"{x:,.1f}x"


def _worst_gap(r: dict) -> float | None:
    sets = (r.get("sample") or {}).get("sets", {})
    vals = [v["gap_over_allowance_max"] for v in sets.values() if v.get("gap_over_allowance_max") is not None]
    return max(vals) if vals else None


def _mix_ratio(r: dict) -> float | None:
    return ((r.get("sample") or {}).get("sets", {}).get(MIX) or {}).get("speed_ratio")


def _fast_counts(v: dict) -> str:
    st = v.get("fast_status")
    if not st:
        return "n/a"
    return f"{st['optimal']}/{st['optimal_inaccurate']}/{st['infeasible'] + st['failed']}"


_INTRO = """\
# Capacity

Generated by `rebalance capacity` from every `docs/capacity/*.json`; do not edit by hand.

## How to run it

```sh
make capacity ACCOUNTS=10000                 # = rebalance capacity --accounts 10000
rebalance capacity --accounts 50000 --num-cpus 16 --sample 20 --sample-mix 100
ray job submit --address http://HEAD:8265 -- \\
    python jobs/capacity_test.py --accounts 350000 --book s3://bucket/books/cap-350k --out s3://bucket/runs
```

One command generates the book (or reuses `data/capacity/book-<N>-s<seed>` when its `book.json`
has the same accounts, seed and accounts per bucket), runs the full job on it as a new run
(`rebalance run`; a local Ray with `--num-cpus`, or the cluster at `--address` /
`RAY_ADDRESS`), then solves a seeded sample of households both ways. It writes
`capacity.json` into the run's folder and, when the run is complete,
`docs/capacity/capacity-<N>.json` (one per book size: a new run at the same size replaces it),
and regenerates this page. Exit status as `rebalance run` (3: incomplete; docs untouched).

## How to read it

- **wall s**: the run's wall time, from opening the book to the summary written, Ray start
  included (given apart in the JSON, `run.ray_start_seconds`); book generation is not in it
  (`book.generate_seconds`). **accounts/s** is accounts over that wall time.
- **read, build, solve, post, write**: task seconds summed over all shards (CPU-seconds of
  the workers, from the shards' completion records): reading the shard's rows, building the
  problems and the naive counterfactual, the solves, rounding and repair, writing the
  outputs. Divided by the CPUs they estimate each stage's share of the wall time. "CPUs busy"
  (below, and `run.cpu_busy_share`) is all task seconds over wall x CPUs: the rest is Ray
  start, scheduling, worker start-up and the tail of the run with fewer shards than CPUs.
- **driver MB**: peak resident memory of the driver process during the run (Ray's own
  processes not counted); **worker MB**: the largest peak over the workers that ran shards.
- **speed ratio (mix)**: on the standard mix of households (taken at random from the book)
  the time of one reference solve (cvxpy + Clarabel) per household, summed, over the time of
  one batched fast solve of the whole set; one solve per household, not the job's full
  household pipeline.
- **worst gap**: largest `|fast - reference|` objective gap over its allowance
  `max(1e-3 |reference|, 1e-5)` (units of household value) over every sample set; below 1
  means within the allowance. Statuses are the fast solver's: optimal / inaccurate / failed.
"""


def render_markdown(reports: list[dict]) -> str:
    """``capacity.md``: the scaling table (one row per report, by accounts), then the latest
    report's machine, stages and per-kind comparison."""
    lines = [_INTRO, "## Scaling", ""]
    if not reports:
        lines += ["No capacity runs recorded yet.", ""]
        return "\n".join(lines)
    head = ["accounts", "households", "lots", "CPUs", "solver", "wall s", "accounts/s", "read", "build", "solve",
            "post", "write", "driver MB", "worker MB", "speed ratio (mix)", "worst gap", "date"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reports:
        run, st, mem, book = r["run"], r["stages"], r["memory"], r["book"]
        row = [_n(r["accounts"]), _n(run["households"]), _n(run["lots"]), _n(run["cpus"], "g"), run["solver"],
               _n(run["wall_seconds"], ",.1f"), _n(run["accounts_per_second"], ",.1f"),
               *(_n(st[s]["task_seconds"], ",.1f") for s in ("read", "build", "solve", "postprocess", "write")),
               _mb(mem["driver_peak_rss_bytes"]), _mb(mem["worker_peak_rss_bytes"]), _ratio(_mix_ratio(r)),
               _n(_worst_gap(r), ".3g"), r["created"][:10]]
        lines.append("| " + " | ".join(row) + " |")
    latest = max(reports, key=lambda r: r["created"])
    run, m, book = latest["run"], latest["machine"], latest["book"]
    lines += [
        "", f"## Latest: {latest['accounts']:,} accounts ({latest['created']})", "",
        f"Machine: {m.get('cpu_count')} CPUs ({m.get('cpu_model') or 'unknown model'}), "
        f"{_n(m.get('memory_bytes') and m['memory_bytes'] / 2**30, ',.0f')} GiB; {m.get('platform')}; "
        f"Python {m.get('python')}, numpy {m.get('numpy')}, ray {m.get('ray')}, cvxpy {m.get('cvxpy')}, "
        f"clarabel {m.get('clarabel')}.",
        "",
        f"Book `{book['uri']}`: {_n(book['households'])} households, {_n(book['accounts'])} accounts, "
        f"{_n(book['lots'])} lots, {_usd(book['value'])}, {_plural(book['buckets'], 'bucket')}; "
        + (f"generated in {book['generate_seconds']:,.1f} s." if book["generated"] else "reused."),
        "",
        f"Run `{run['run_id']}` ({run['solver']} solver, {_n(run['cpus'], 'g')} CPUs, "
        f"{_plural(run['shards'], 'shard')}): "
        f"{'complete' if run['complete'] else 'INCOMPLETE'}, {run['wall_seconds']:,.1f} s wall "
        f"(Ray start {_n(run['ray_start_seconds'], ',.1f')} s), {_n(run['accounts_per_second'], ',.1f')} accounts/s, "
        f"{_n(run['households_per_second'], ',.1f')} households/s; CPUs busy in tasks "
        f"{_n(run['cpu_busy_share'] and 100 * run['cpu_busy_share'], '.0f')}% of wall x CPUs; "
        f"accounts {_n(run['accounts_in'])} in = {_n(run['accounts_out'])} out ({_n(run['accounts_rejected'])} rejected)"
        f"{_solves(run.get('solver_totals'))}.",
        "", "| stage | task s | share | est. wall s |", "|---|---|---|---|",
    ]
    for s, v in _ordered(latest["stages"], _STAGE_ORDER):
        lines.append(f"| {STAGE_LABELS.get(s, s)} | {_n(v['task_seconds'], ',.1f')} | "
                     f"{_n(v['share'] and 100 * v['share'], '.1f')}% | {_n(v['wall_seconds_est'], ',.1f')} |")
    sample = latest.get("sample")
    if sample:
        lines += [
            "", f"Sample: buckets {sample['buckets']} ({_n(sample['households_read'])} households read), seed "
            f"{sample['seed']}, tolerance {sample['tolerance']:g}.", "",
            "| set | households (of) | lots | reference s | fast s | speed ratio | fast ms/household "
            "| fast opt/inacc/failed | gap/allowance max | median | over |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, v in _ordered(sample["sets"], _SET_ORDER):
            if not v.get("households"):
                lines.append(f"| {name} | 0 (of {v['candidates']}) | | | | | | | | | |")
                continue
            lines.append(
                f"| {name} | {v['households']} (of {_n(v['candidates'])}) | {_n(v['lots'])} | "
                f"{v['reference_seconds']:,.2f} | {v['fast_seconds']:,.2f} | {_ratio(v['speed_ratio'])} | "
                f"{v['fast_ms_per_household']:,.1f} | {_fast_counts(v)} | {_n(v['gap_over_allowance_max'], '.3g')} | "
                f"{_n(v['gap_over_allowance_median'], '.3g')} | {v['over_allowance']} |")
    lines.append("")
    return "\n".join(lines)


def _solves(sv: dict | None) -> str:
    if not sv or "solves" not in sv:
        return ""
    fb = sv.get("fallback_solves")
    return f"; {sv['solves']:,} solves" + (f", {fb:,} fell back to the reference" if fb else "")


def format_report(r: dict) -> str:
    """The one-screen summary of a capacity test."""
    run, st, mem, book = r["run"], r["stages"], r["memory"], r["book"]
    gen = f"generated in {book['generate_seconds']:,.1f} s" if book["generated"] else "reused"
    lines = [
        f"Capacity test: {r['accounts']:,} accounts, seed {r['seed']}; book {book['uri']} ({gen}): "
        f"{_n(book['households'])} households, {_n(book['lots'])} lots, {_usd(book['value'])}",
        f"Run {run['run_id']}: {'COMPLETE' if run['complete'] else 'INCOMPLETE'}, solver {run['solver']}, "
        f"{_n(run['cpus'], 'g')} CPUs, {_plural(run['shards'], 'shard')}"
        + (f", {run['shards_failed']} FAILED" if run["shards_failed"] else ""),
        f"  wall {run['wall_seconds']:,.1f} s (Ray start {_n(run['ray_start_seconds'], ',.1f')} s): "
        f"{_n(run['accounts_per_second'], ',.1f')} accounts/s, {_n(run['households_per_second'], ',.1f')} households/s; "
        f"CPUs busy in tasks {_n(run['cpu_busy_share'] and 100 * run['cpu_busy_share'], '.0f')}% of wall x CPUs",
        f"  accounts {_n(run['accounts_in'])} in = {_n(run['accounts_out'])} out: {_n(run['accounts_rebalanced'])} "
        f"rebalanced, {_n(run['accounts_rejected'])} rejected; {_n(run['trades'])} trades"
        + _solves(run.get("solver_totals")),
        f"  peak memory: driver {_mb(mem['driver_peak_rss_bytes'])} MB, largest worker "
        f"{_mb(mem['worker_peak_rss_bytes'])} MB",
        "  stage        task s   share   est. wall s",
    ]
    for s, v in _ordered(st, _STAGE_ORDER):
        lines.append(f"  {STAGE_LABELS.get(s, s):10} {_n(v['task_seconds'], ',.1f'):>8} "
                     f"{_n(v['share'] and 100 * v['share'], '.1f'):>6}%  {_n(v['wall_seconds_est'], ',.1f'):>10}")
    sample = r.get("sample")
    if sample:
        lines.append(f"  sample of buckets {sample['buckets']}, tolerance {sample['tolerance']:g}: "
                     "reference vs fast (batched), gaps over allowance")
        lines.append(f"  {'set':18} {'hh':>4} {'ref s':>7} {'fast s':>7} {'ratio':>7}  "
                     f"{'opt/inacc/fail':>14} {'gap max':>8} {'median':>8} {'over':>4}")
        for name, v in _ordered(sample["sets"], _SET_ORDER):
            if not v.get("households"):
                lines.append(f"  {name:18} {0:4d}   (none sampled; {v['candidates']} candidates)")
                continue
            lines.append(f"  {name:18} {v['households']:4d} {v['reference_seconds']:7.2f} {v['fast_seconds']:7.2f} "
                         f"{_ratio(v['speed_ratio']):>7}  {_fast_counts(v):>14} "
                         f"{_n(v['gap_over_allowance_max'], '.3g'):>8} {_n(v['gap_over_allowance_median'], '.3g'):>8} "
                         f"{v['over_allowance']:4d}")
    files = r.get("files", {})
    lines.append("Figures: " + ", ".join(files.values()) if files else "Figures: (none written)")
    return "\n".join(lines)
