"""Where a run's files go under ``<out>/<run_id>/``, and what makes a shard or a run complete.

::

    run.json                      written first: inputs of the run (book, date, solver,
                                  settings) and the shard plan; a resumed run must match it
    trades/shard-00003.parquet    one file per shard and output table, names fixed by the plan
    households/shard-00003.parquet
    accounts/shard-00003.parquet  one row per account of a rebalanced household (dispersion)
    rejected/shard-00003.parquet
    _shards/shard-00003.json      the shard's completion record, written after its four files:
                                  counts in and out, totals, file sizes and SHA-256, timings
    summary.json                  the run's aggregate figures (rewritten by every attempt)
    manifest.json                 written last, only when every shard is complete

A shard is complete when its record exists and every file it lists is there with the size it
records; anything else (no record, a file missing or cut short) means the shard runs again and
rewrites its files, byte for byte the same.
"""
from __future__ import annotations

import datetime as dt
import re
import secrets

from rebalancer.errors import RunError
from rebalancer.storage import Location

from .plan import Plan, Shard

__all__ = ["OUTPUT_TABLES", "RUN_ID_PATTERN", "validate_run_id", "new_run_id", "RunLayout"]

OUTPUT_TABLES = ("trades", "households", "accounts", "rejected")
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TMP = re.compile(r"\.tmp-[0-9a-f]{32}$")  # Location's temporaries: <name>.tmp-<uuid4 hex>
RUN_FILE, SUMMARY_FILE, MANIFEST_FILE, SHARDS_DIR = "run.json", "summary.json", "manifest.json", "_shards"


def validate_run_id(run_id: str) -> str:
    """A run id is one path segment of letters, digits, ``.``, ``_``, ``-`` (no ``..``), so a
    run can never write outside ``<out>/<run_id>/``."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id) or ".." in run_id:
        raise RunError(f"bad run id {run_id!r}: use 1-128 letters, digits, '.', '_' or '-', "
                       "starting with a letter or digit, without '..'")
    return run_id


def new_run_id(date: dt.date, now: dt.datetime | None = None) -> str:
    """``<trade date>-<UTC time>-<4 random hex>``, e.g. ``2021-04-21-093112-7f3a``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{date.isoformat()}-{now:%H%M%S}-{secrets.token_hex(2)}"


class RunLayout:
    def __init__(self, out: Location, run_id: str):
        self.run_id = validate_run_id(run_id)
        self.loc = out.child(run_id)

    @property
    def uri(self) -> str:
        return self.loc.uri

    @staticmethod
    def files(shard: Shard) -> dict[str, str]:
        return {t: f"{t}/{shard.name}.parquet" for t in OUTPUT_TABLES}

    @staticmethod
    def record(shard: Shard) -> str:
        return f"{SHARDS_DIR}/{shard.name}.json"

    # run.json ---------------------------------------------------------------------------
    def read_run(self) -> dict | None:
        return self.loc.read_json(RUN_FILE) if self.loc.exists(RUN_FILE) else None

    def start(self, run: dict, plan: Plan) -> tuple[Plan, bool]:
        """Write ``run.json`` for a new run, or check a resumed run's inputs against it.

        ``run`` holds the inputs that decide the outputs (book fingerprint, date, solver,
        settings). Returns the plan to use (the stored one when resuming) and whether the run
        is resumed.
        """
        old = self.read_run()
        if old is None:
            self.loc.write_json(RUN_FILE, {**run, "run_id": self.run_id, "plan": plan.to_json()})
            return plan, False
        diff = [k for k in run if k in _DECISIVE and old.get(k) != run[k]]
        if diff:
            raise RunError(f"run id {self.run_id!r} at {self.uri} was started with other inputs "
                           f"({', '.join(f'{k}: {old.get(k)!r} then, {run[k]!r} now' for k in diff)}); "
                           "use a new run id")
        return Plan.from_json(old["plan"]), True

    # shards -----------------------------------------------------------------------------
    def complete_records(self, plan: Plan) -> dict[int, dict]:
        """Completion records of the plan's complete shards, by shard id."""
        names = set(self.loc.listdir(SHARDS_DIR))
        sizes = {t: self.loc.sizes(t) for t in OUTPUT_TABLES}
        out = {}
        for s in plan.shards:
            if f"{s.name}.json" not in names:
                continue
            rec = self.loc.read_json(self.record(s))
            ok = rec.get("shard_id") == s.shard_id and all(
                sizes[t].get(f"{s.name}.parquet") == rec["files"][t]["bytes"] for t in OUTPUT_TABLES)
            if ok:
                out[s.shard_id] = rec
        return out

    def sweep_temporaries(self) -> int:
        """Delete the temporaries (``*.tmp-<hex>``) that writers killed mid-write left in the
        run's folder (local files only: an S3 object appears whole or not at all). Returns how
        many. Only one driver runs a run id at a time, so no live writer owns them."""
        if not self.loc.is_local:
            return 0
        n = 0
        for rel in self.loc.files():
            if _TMP.search(rel):
                self.loc.delete(rel)
                n += 1
        return n

    def write_summary(self, summary: dict) -> None:
        self.loc.write_json(SUMMARY_FILE, summary)

    def write_manifest(self, manifest: dict) -> None:
        self.loc.write_json(MANIFEST_FILE, manifest)

    def clear_manifest(self) -> None:
        self.loc.delete(MANIFEST_FILE)


# Inputs that decide a run's outputs: a resumed run must have the same.
_DECISIVE = ("book_fingerprint", "date", "solver", "settings")
