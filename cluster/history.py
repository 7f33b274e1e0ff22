"""The runs a report reads: the reported run and the earlier runs of its period.

Runs of one desk go under one output prefix, ``<out>/<run_id>/`` each (see
:mod:`cluster.layout`). For a report on run R with trade date D over the period from
``since`` (default: 1 January of D's year) to D, the runs read are R and, for every earlier
trade date in the period, one complete run of that date: the one with the greatest run id
(run ids made by the job sort by time, so it is the latest) when several are. Left out, and
listed in the report with the reason: incomplete runs (no manifest), other runs dated D, and
runs superseded on their date. Keep scenario and test runs under their own prefix: every
complete run under the prefix counts.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pyarrow as pa

from rebalancer.errors import RunError
from rebalancer.outputs import ACCOUNTS_SCHEMA, HOUSEHOLDS_SCHEMA, REJECTED_SCHEMA
from rebalancer.report import RunOutputs, build_report, render_html, report_json, run_households
from rebalancer.storage import Location, S3Options, open_uri, parquet_bytes
from rebalancer.taxvalue import RunHouseholds, period_days

from .layout import MANIFEST_FILE, RUN_FILE, SUMMARY_FILE, RunLayout

__all__ = ["split_run_uri", "read_table", "load_run", "ReportInputs", "load_report_inputs", "write_report"]

_HH_COLUMNS = ["household_id", "status", "value", "taxes_saved", "harvest_value", "deferral_value", "wait_value", "fee"]


def split_run_uri(uri: str) -> tuple[str, str]:
    """``<out>/<run_id>`` -> (out, run_id)."""
    u = uri.rstrip("/")
    if "/" not in u:
        raise RunError(f"a run URI is <out>/<run_id>, got {uri!r}")
    out, run_id = u.rsplit("/", 1)
    if out in ("", "s3:/", "file:/", "file://"):
        raise RunError(f"a run URI is <out>/<run_id>, got {uri!r}")
    return out, run_id


def read_table(loc: Location, table: str, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """All shard files of one output table of a run, in shard order."""
    files = [f for f in loc.listdir(table) if f.endswith(".parquet")]
    if not files:
        s = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        return s.empty_table()
    return pa.concat_tables([loc.read_parquet(f"{table}/{f}", columns=columns) for f in files])


def _trades_by_reason(loc: Location) -> list[dict]:
    acc: dict[tuple[str, str], list] = {}
    for f in loc.listdir("trades"):
        if not f.endswith(".parquet"):
            continue
        t = loc.read_parquet(f"trades/{f}", columns=["reason", "side", "value"])
        if not t.num_rows:
            continue
        g = t.group_by(["reason", "side"]).aggregate([("value", "count"), ("value", "sum")])
        for r in g.to_pylist():
            a = acc.setdefault((r["reason"], r["side"]), [0, 0.0])
            a[0] += r["value_count"]
            a[1] += r["value_sum"]
    return [{"reason": k[0], "side": k[1], "trades": v[0], "value": v[1]} for k, v in sorted(acc.items())]


def load_run(loc: Location, run_id: str) -> RunOutputs:
    """Everything the report reads of one complete run."""
    layout_run = loc.read_json(RUN_FILE)
    return RunOutputs(run_id=run_id, date=dt.date.fromisoformat(layout_run["date"]), uri=loc.uri,
                      summary=loc.read_json(SUMMARY_FILE), households=read_table(loc, "households", HOUSEHOLDS_SCHEMA),
                      accounts=read_table(loc, "accounts", ACCOUNTS_SCHEMA), trades_by_reason=_trades_by_reason(loc),
                      rejected=read_table(loc, "rejected", REJECTED_SCHEMA))


@dataclass(frozen=True, eq=False)
class ReportInputs:
    """The reported run, the earlier runs' households, the period start, and the runs read and
    left out (lists of dicts with run_id, date and days or why)."""
    last: RunOutputs
    earlier: list[RunHouseholds]
    since: dt.date
    read: list[dict]
    skipped: list[dict]


def load_report_inputs(run_uri: str, since: dt.date | None = None, s3: S3Options | None = None) -> ReportInputs:
    """Find and read the runs of a report on ``run_uri`` (see the module docstring)."""
    out_uri, run_id = split_run_uri(run_uri)
    out = open_uri(out_uri, s3)
    layout = RunLayout(out, run_id)
    run = layout.read_run()
    if run is None:
        raise RunError(f"no run at {run_uri} (no {RUN_FILE})")
    if not layout.loc.exists(MANIFEST_FILE):
        raise RunError(f"run {run_id} at {run_uri} is incomplete (no {MANIFEST_FILE}): re-run it with the same "
                       "--run-id to finish it, then report")
    date = dt.date.fromisoformat(run["date"])
    since = since or dt.date(date.year, 1, 1)
    if since > date:
        raise RunError(f"--since {since} is after the run's trade date {date}")
    by_date: dict[dt.date, list[str]] = {}
    skipped = []
    for name in out.subdirs():
        if name == run_id:
            continue
        loc = out.child(name)
        if not loc.exists(RUN_FILE):
            continue  # not a run
        try:
            d = dt.date.fromisoformat(loc.read_json(RUN_FILE)["date"])
        except (KeyError, ValueError, TypeError) as e:
            skipped.append({"run_id": name, "date": None, "why": f"unreadable {RUN_FILE}: {e}"})
            continue
        if not since <= d <= date:
            continue
        if not loc.exists(MANIFEST_FILE):
            skipped.append({"run_id": name, "date": d, "why": "incomplete (no manifest)"})
        elif d == date:
            skipped.append({"run_id": name, "date": d, "why": f"same trade date as the reported run {run_id}"})
        else:
            by_date.setdefault(d, []).append(name)
    earlier, chosen = [], []
    for d in sorted(by_date):
        names = sorted(by_date[d])
        for n in names[:-1]:
            skipped.append({"run_id": n, "date": d, "why": f"superseded by {names[-1]} on the same date"})
        loc = out.child(names[-1])
        earlier.append(run_households(d, read_table(loc, "households", HOUSEHOLDS_SCHEMA, _HH_COLUMNS)))
        chosen.append((names[-1], d))
    last = load_run(layout.loc, run_id)
    days = period_days([d for _, d in chosen] + [date], since)
    read = [{"run_id": n, "date": d, "days": k} for (n, d), k in zip(chosen + [(run_id, date)], days)]
    return ReportInputs(last, earlier, since, read, sorted(skipped, key=lambda x: (str(x["date"]), x["run_id"])))


def write_report(run_uri: str, since: dt.date | None = None, html_uri: str | None = None, json_uri: str | None = None,
                 s3: S3Options | None = None) -> tuple[dict, str, str]:
    """Build the report of ``run_uri`` and write its HTML and JSON (default: ``report.html``
    and ``report.json`` in the run's folder) and the per-household tax value against fees
    (``report-households.parquet``, or ``<json without .json>-households.parquet``).
    Returns (figures, html URI, json URI)."""
    inp = load_report_inputs(run_uri, since, s3)
    report = build_report(inp.last, inp.earlier, inp.since, inp.read, inp.skipped)
    page = render_html(report).encode()
    figures = report_json(report).encode()
    per_household = parquet_bytes(report["_households"])
    hh_uri = (json_uri[:-5] if json_uri and json_uri.endswith(".json") else json_uri) + "-households.parquet" \
        if json_uri else None
    written = []
    for uri, name, data in ((html_uri, "report.html", page), (json_uri, "report.json", figures),
                            (hh_uri, "report-households.parquet", per_household)):
        if uri is None:
            loc, rel = open_uri(run_uri, s3), name
            uri = loc.uri.rstrip("/") + "/" + name
        else:
            parent, rel = uri.rstrip("/").rsplit("/", 1) if "/" in uri else (".", uri)
            loc = open_uri(parent, s3)
        loc.write_bytes(rel, data)
        written.append(uri)
    return report, written[0], written[1]  # the per-household table is written[2]
