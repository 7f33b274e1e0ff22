"""One shard's work, start to finish, in one process: what a Ray task runs (no ray here).
:func:`run_household` does the same for one household, writing nothing (``rebalance
household``): the run's answer for it.

:func:`run_shard` reads the shard's households from the book, splits them into checked
households and rejected accounts, rebalances each household, writes the shard's four output
files and then its completion record, and returns that record (small: counts, totals, file
sizes and hashes, timings). It checks that every account it read ends in exactly one output.

Failures:
- bad records reject their household (stage ``data``, with table, key and field), a household the optimizer cannot solve
  is rejected with stage ``optimization``; an unexpected exception in one household rejects
  that household with stage ``error`` and the exception named, and the shard goes on;
- an input file that cannot be read or does not fit the data contract raises
  :class:`ShardInputError` naming the file: the shard writes nothing;
- storage that stays unreachable after the retries of :mod:`rebalancer.storage` raises
  :class:`~rebalancer.errors.StorageUnavailableError` (transient: the task is retried);
- accounts in != accounts out raises ``AssertionError``: a bug, never written as complete.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import resource
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from rebalancer.book import Book, book_fingerprint, table_path
from rebalancer.errors import (BookDataError, BookLayoutError, OptimizationError, StorageError,
                               StorageUnavailableError)
from rebalancer.household import Household, Rejection, select_households, split_households
from rebalancer.market import Market
from rebalancer.optimize import HouseholdResult, rebalance_households
from rebalancer.outputs import accounts_table, households_table, rejected_table, trades_table
from rebalancer.schema import HOUSEHOLD_TABLES, REFERENCE_TABLES, TABLES, bucket_of, conform
from rebalancer.settings import OptimizerSettings
from rebalancer.solvers import DEFAULT_SOLVER, SOLVERS
from rebalancer.storage import S3Options, open_uri, parquet_bytes, retry_count
from rebalancer.totals import shard_totals

from .layout import RunLayout
from .plan import Piece, Shard, part_mask

__all__ = ["SOLVERS", "ShardJob", "ShardInputError", "run_shard", "HouseholdRun", "run_household", "settings_to_json",
           "settings_from_json"]

# Key columns a shard needs to file rows under households; a null in one makes the file unusable.
_KEYS = {"households": ("household_id",), "accounts": ("account_id", "household_id"),
         "lots": ("lot_id", "account_id", "household_id"), "recent_trades": ("account_id", "household_id")}
_MAX_EXAMPLES = 5


class ShardInputError(BookLayoutError):
    """A shard's input file cannot be read or does not fit the data contract."""

    def __init__(self, shard: Shard, file: str, message: str):
        self.shard_id, self.file = shard.shard_id, file
        super().__init__(f"{shard.label()}: {file}: {message}")


def settings_to_json(s: OptimizerSettings) -> dict:
    return {k: (str(v) if not isinstance(v, (int, float, bool)) else v) for k, v in asdict(s).items()}


@dataclass(frozen=True)
class ShardJob:
    """Everything a task needs (small and picklable; no credentials: workers take those from
    their own environment, as the driver does)."""
    book_uri: str
    book_fingerprint: str
    out_uri: str
    run_id: str
    shard: Shard
    n_buckets: int
    date: dt.date
    solver: str = DEFAULT_SOLVER
    settings: OptimizerSettings = field(default_factory=OptimizerSettings)
    s3: S3Options | None = None


# Reference data of a book, kept per worker process: a worker runs many shards of one book.
_MARKETS: dict[tuple[str, str], Market] = {}
_MARKETS_LOCK = threading.Lock()


def _market(book: Book, fingerprint: str) -> Market:
    key = (book.loc.uri, fingerprint)
    with _MARKETS_LOCK:
        m = _MARKETS.get(key)
        if m is None:
            tables = {t.name: book.read(t.name) for t in REFERENCE_TABLES}
            m = Market.from_tables(tables, book.as_of)
            _MARKETS.clear()  # one book at a time per worker
            _MARKETS[key] = m
        return m


def _read_piece(book: Book, shard: Shard, piece: Piece, n_buckets: int) -> dict[str, pa.Table]:
    tables = {}
    for spec in HOUSEHOLD_TABLES:
        rel = table_path(spec, piece.bucket)
        try:
            t = conform(book.loc.read_parquet(rel), spec)
        except FileNotFoundError:
            raise ShardInputError(shard, rel, "file is missing") from None
        except (OSError, pa.ArrowException, ValueError) as e:
            raise ShardInputError(shard, rel, f"cannot be read: {e}") from None
        for col in _KEYS[spec.name]:
            nulls = t[col].null_count
            if nulls:
                raise ShardInputError(shard, rel, f"{nulls} row(s) with a null {col}; rows cannot be filed under households")
        tables[spec.name] = t
    hh_ids = tables["households"]["household_id"].to_numpy()
    stray = hh_ids[hh_ids % n_buckets != piece.bucket]
    if len(stray):
        raise ShardInputError(shard, table_path(TABLES["households"], piece.bucket),
                              f"household_id {int(stray[0])} belongs to bucket {int(stray[0]) % n_buckets}, "
                              f"not {piece.bucket} ({len(stray)} such row(s))")
    return select_households(tables, lambda ids: part_mask(ids, n_buckets, piece))


def _accounts_in(tables: dict[str, pa.Table]) -> set[int]:
    ids: set[int] = set()
    for name in ("accounts", "lots", "recent_trades"):
        ids.update(np.unique(tables[name]["account_id"].to_numpy()).tolist())
    return ids


def run_shard(job: ShardJob, progress: Callable[[int], None] | None = None) -> dict:
    """Rebalance one shard and write its outputs; returns its completion record."""
    t_start = time.perf_counter()
    retries_before = retry_count()
    timings = dict.fromkeys(("read", "split", "build", "solve", "postprocess", "write"), 0.0)
    shard = job.shard
    try:
        solve = SOLVERS[job.solver]
    except KeyError:
        raise ValueError(f"unknown solver {job.solver!r}; choose from {sorted(SOLVERS)}") from None

    t = time.perf_counter()
    try:
        book = Book.open(job.book_uri, job.s3)
        market = _market(book, job.book_fingerprint)
    except StorageUnavailableError:
        raise  # transient: the task is retried, not failed
    except (BookLayoutError, StorageError, OSError) as e:
        raise ShardInputError(shard, "reference tables", str(e)) from None
    parts = [_read_piece(book, shard, p, job.n_buckets) for p in shard.pieces]
    tables = {n: pa.concat_tables([p[n] for p in parts]) for n in parts[0]}
    timings["read"] = time.perf_counter() - t

    t = time.perf_counter()
    households, rejections = split_households(market, tables)
    accounts_in = _accounts_in(tables)
    timings["split"] = time.perf_counter() - t

    # Every household of the shard at once: their solves go to the solver in batches.
    results = rebalance_households(market, households, job.settings, solve, job.date, on_done=progress)
    pairs = _file_results(households, results, rejections)
    for _, r in pairs:
        for k in ("build", "solve", "postprocess"):
            timings[k] += r.timings.get(k, 0.0)
    if progress is not None and not households:
        progress(0)

    # Nothing lost, nothing doubled.
    rebalanced = [int(a) for hh, _ in pairs for a in hh.accounts.account_id]
    rejected = {j.account_id for j in rejections}
    doubled = set(rebalanced) & rejected
    out = set(rebalanced) | rejected
    assert len(rebalanced) == len(set(rebalanced)) and not doubled and out == accounts_in, (
        f"{shard.label()}: {len(accounts_in)} accounts in, {len(out)} out; "
        f"missing {sorted(accounts_in - out)[:10]}, extra {sorted(out - accounts_in)[:10]}, "
        f"in two outputs {sorted(doubled)[:10]}")

    t = time.perf_counter()
    outputs = _outputs(market, pairs, rejections)
    hh_ids = outputs["households"]["household_id"].to_numpy()
    assert len(np.unique(hh_ids)) == len(hh_ids), f"{shard.label()}: a household in two rows of households/"
    layout = RunLayout(open_uri(job.out_uri, job.s3), job.run_id)
    files = {}
    for name, rel in layout.files(shard).items():
        data = parquet_bytes(outputs[name])
        layout.loc.write_bytes(rel, data)
        files[name] = {"path": rel, "rows": outputs[name].num_rows, "bytes": len(data),
                       "sha256": hashlib.sha256(data).hexdigest()}
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    record = {
        "shard_id": shard.shard_id,
        "pieces": [asdict(p) for p in shard.pieces],
        "counts": {"accounts_in": len(accounts_in), "accounts_out": len(out),
                   "households_in": len({hh.household_id for hh in households} | {j.household_id for j in rejections}),
                   "lots": tables["lots"].num_rows, "recent_trades": tables["recent_trades"].num_rows},
        "totals": shard_totals(pairs, rejections),
        "rejection_examples": [asdict(j) for j in rejections[:_MAX_EXAMPLES]],
        "files": files,
        "timings": timings,
        # Storage operations this shard retried (transient errors it rode out); written before the
        # record itself, so the record's own write is not counted.
        "storage_retries": retry_count() - retries_before,
        # Peak resident memory of the worker process so far (it may have run other shards).
        "worker_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    layout.loc.write_json(layout.record(shard), record)
    return record


def _file_results(households: list[Household], results: list, rejections: list[Rejection]
                  ) -> list[tuple[Household, HouseholdResult]]:
    """The (household, result) pairs of the households rebalanced; every other household's
    accounts are added to ``rejections`` with the stage and reason of its error."""
    pairs: list[tuple[Household, HouseholdResult]] = []
    for hh, r in zip(households, results, strict=True):
        if isinstance(r, BookDataError):  # data only the problem's build can check (e.g. a target without a price)
            prefix = "" if hh.n_accounts == 1 else "household rejected whole: "
            rejections.extend(Rejection.of(a, hh.household_id, r, prefix) for a in hh.accounts.account_id)
        elif isinstance(r, OptimizationError):
            rejections.extend(_reject(hh, "optimization", str(r)))
        elif isinstance(r, Exception):  # one household's failure must not sink the shard
            rejections.extend(_reject(hh, "error", f"unexpected {type(r).__name__}: {r}"))
        else:
            pairs.append((hh, r))
    return pairs


def _outputs(market: Market, pairs: list[tuple[Household, HouseholdResult]],
             rejections: list[Rejection]) -> dict[str, pa.Table]:
    """The four output tables of ``pairs`` and ``rejections`` (sorted in place)."""
    rejections.sort(key=lambda j: (j.household_id, j.account_id))
    return {"trades": trades_table(pairs, market), "households": households_table(pairs, rejections),
            "accounts": accounts_table(pairs), "rejected": rejected_table(rejections)}


@dataclass(frozen=True, eq=False)
class HouseholdRun:
    """One household rebalanced as a run's shard rebalances it (:func:`run_household`).

    ``household`` is None when the household is not in the book or was rejected before its
    problem was built; ``result`` is None when it was rejected at any stage (``rejections``
    say why). ``outputs``: the household's rows of the run's four tables (trades,
    households, accounts, rejected), made by the code that makes a shard's."""
    household_id: int
    bucket: int
    solver: str
    settings: OptimizerSettings
    date: dt.date
    market: Market
    household: Household | None
    result: HouseholdResult | None
    rejections: tuple[Rejection, ...]
    outputs: dict[str, pa.Table]


def run_household(book_uri: str, household_id: int, *, solver: str = DEFAULT_SOLVER,
                  settings: OptimizerSettings | None = None, date: dt.date | None = None,
                  s3: S3Options | None = None) -> HouseholdRun:
    """Rebalance one household of a book the way :func:`run_shard` does: the same read of its
    bucket (conformed to the contract), the same split, the same batch solver (``solver``,
    by name, :data:`SOLVERS`), settings and date (default: the book's as-of date), and its
    rows of the output tables made by the same functions. Its trades are a run's trades for
    the household, row for row, bit for bit: a household's solves never see another's (the
    fast solver iterates each household on its own; the warm start of a re-solve is the
    household's own previous iterate, as in a shard)."""
    try:
        solve = SOLVERS[solver]
    except KeyError:
        raise ValueError(f"unknown solver {solver!r}; choose from {sorted(SOLVERS)}") from None
    settings = settings or OptimizerSettings()
    book = Book.open(book_uri, s3)
    market = _market(book, book_fingerprint(book))
    date = date or book.as_of
    piece = Piece(int(bucket_of(household_id, book.info.n_buckets)))
    shard = Shard(0, (piece,), 1, 0, 0)  # names the bucket in a read error
    tables = select_households(_read_piece(book, shard, piece, book.info.n_buckets),
                               lambda ids: ids == household_id)
    households, rejections = split_households(market, tables)
    results = rebalance_households(market, households, settings, solve, date)
    pairs = _file_results(households, results, rejections)
    outputs = _outputs(market, pairs, rejections)
    return HouseholdRun(household_id=household_id, bucket=piece.bucket, solver=solver, settings=settings, date=date,
                        market=market, household=households[0] if households else None,
                        result=pairs[0][1] if pairs else None, rejections=tuple(rejections), outputs=outputs)


def settings_from_json(d: dict) -> OptimizerSettings:
    """The settings :func:`settings_to_json` wrote (a run's ``run.json``)."""
    return OptimizerSettings(**d)


def _reject(hh: Household, stage: str, reason: str) -> list[Rejection]:
    prefix = "" if hh.n_accounts == 1 else "household rejected whole: "
    return [Rejection(int(a), hh.household_id, prefix + reason, "", "", "", stage) for a in hh.accounts.account_id]
