"""The run report: what a desk shows its firm, as JSON figures and one self-contained HTML page.

:func:`build_report` turns a run's outputs (and the earlier runs of its period, for the
tax value to date) into a dict of figures; :func:`render_html` renders that dict as one HTML
file with its charts embedded as SVG data URIs (no scripts, no external files), to mail
around. Every number the page shows carries its JSON key (``data-key``) and exact value
(``data-value``), so the page and the JSON can be checked against each other.

Sections: headline numbers; tax value against fees (DESIGN section 6, see
:mod:`rebalancer.taxvalue`); tracking error before, after and naive; dispersion by model
(:mod:`rebalancer.dispersion`); trades by reason; the households with the largest tax value;
the rejected accounts.
"""
from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import charts, jsonout
from .dispersion import STAGES, model_dispersion
from .taxvalue import SPLIT, RunHouseholds, TaxValue, tax_value
from .totals import TE_EDGES

__all__ = ["RunOutputs", "build_report", "households_table", "render_html", "report_json", "RATIO_EDGES", "TOP_HOUSEHOLDS",
           "MAX_REJECTED_ROWS"]

# Tax value / fee histogram edges (fixed, so reports compare).
RATIO_EDGES = (-math.inf, 0.0, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, math.inf)
TOP_HOUSEHOLDS = 20
MAX_REJECTED_ROWS = 200


@dataclass(frozen=True, eq=False)
class RunOutputs:
    """What the report reads of the reported run. ``trades_by_reason``: one row per (reason,
    side) with ``trades`` and ``value`` (USD), aggregated from ``trades/``."""
    run_id: str
    date: dt.date
    uri: str
    summary: dict
    households: pa.Table
    accounts: pa.Table
    trades_by_reason: list[dict]
    rejected: pa.Table


def run_households(date: dt.date, households: pa.Table) -> RunHouseholds:
    """The rebalanced households of a ``households/`` table (rejected rows left out)."""
    status = households["status"].to_numpy(zero_copy_only=False)
    ok = status != "rejected"

    def col(name):
        return households[name].to_numpy(zero_copy_only=False)[ok].astype(float if name != "household_id" else np.int64)
    return RunHouseholds(date=date, household_id=col("household_id"), value=col("value"),
                         taxes_saved=col("taxes_saved"), harvest_value=col("harvest_value"),
                         deferral_value=col("deferral_value"), wait_value=col("wait_value"), fee=col("fee"))


def _clean(obj):
    """JSON-ready: dates as ISO text, the rest as :func:`rebalancer.jsonout.strict` makes it
    (non-finite figures null)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, dt.date):
        return obj.isoformat()
    return jsonout.strict(obj)


def _hist(values: np.ndarray, edges) -> list[int]:
    """Counts per bin [edges[i], edges[i+1]); NaN left out, +-inf in the open end bins."""
    v = np.asarray(values, float)
    v = v[~np.isnan(v)]
    idx = np.searchsorted(np.asarray(edges[1:-1], float), v, side="right")
    return [int(c) for c in np.bincount(idx, minlength=len(edges) - 1)]


def build_report(last: RunOutputs, earlier: list[RunHouseholds], since: dt.date,
                 runs_read: list[dict], runs_skipped: list[dict]) -> dict:
    """The report's figures. ``earlier``: the rebalanced households of the earlier runs of the
    period (increasing dates, before ``last``); ``runs_read`` / ``runs_skipped``: what the
    caller read and left out of the period, listed in the report."""
    hh = last.households
    tv: TaxValue = tax_value(earlier + [run_households(last.date, hh)], since)
    s = last.summary
    tot, head = s.get("totals", {}), s.get("headline", {})
    usd = tot.get("usd", {})
    run_fig, per_fig = tv.run, tv.period

    def tsum(d, k):
        return float(np.sum(d[k]))

    headline = {
        "households_rebalanced": int(len(tv.household_id)),
        "households_rejected": int(tot.get("households", {}).get("rejected", 0)),
        "accounts_rebalanced": int(tot.get("accounts", {}).get("rebalanced", 0)),
        "accounts_rejected": int(tot.get("accounts", {}).get("rejected", 0)),
        "value": float(np.sum(tv.value)),
        "trades": int(tot.get("trades", {}).get("rows", 0)),
        "bought": float(usd.get("bought", 0.0)), "sold": float(usd.get("sold", 0.0)),
        "losses_harvested": float(head.get("losses_harvested", 0.0)),
        "gains_realized": float(usd.get("realized_st_gain", 0.0) + usd.get("realized_lt_gain", 0.0)),
        "tax": float(usd.get("tax", 0.0)), "naive_tax": float(usd.get("naive_tax", 0.0)),
        "te_before": head.get("te_before_value_weighted"), "te_after": head.get("te_after_value_weighted"),
        "te_naive": head.get("te_naive_value_weighted"),
    }
    for name, f in (("run", run_fig), ("period", per_fig)):
        headline[f"taxes_saved_{name}"] = tsum(f, "taxes_saved")
        for k in SPLIT:
            headline[f"{k}_{name}"] = tsum(f, k)
        headline[f"fees_{name}"] = tsum(f, "fee")
        share = tv.share_exceeding(name)
        headline[f"exceeding_{name}_by_count"] = share["by_count"]
        headline[f"exceeding_{name}_by_value"] = share["by_value"]
        headline[f"exceeding_{name}_households"] = share["households"]

    tax = {
        "ratio_edges": list(RATIO_EDGES),
        "ratio_histogram_run": _hist(run_fig["ratio"], RATIO_EDGES),
        "ratio_histogram_period": _hist(per_fig["ratio"], RATIO_EDGES),
        "ratio_undefined_run": int(np.sum(np.isnan(run_fig["ratio"]))),
        "ratio_undefined_period": int(np.sum(np.isnan(per_fig["ratio"]))),
    }

    ok = hh.filter(pc.not_equal(hh["status"], "rejected"))
    te = {"edges": list(TE_EDGES)}
    for st in STAGES:
        te[st] = _hist(ok[f"te_{st}"].to_numpy(zero_copy_only=False).astype(float), TE_EDGES)

    acc = last.accounts
    dispersion = model_dispersion(acc["model_id"].to_numpy(), {
        f"{m}_{st}": acc[f"{m}_{st}"].to_numpy(zero_copy_only=False).astype(float)
        for m in ("te", "active") for st in STAGES}) if acc.num_rows else []

    order = np.lexsort((tv.household_id, -per_fig["taxes_saved"]))[:TOP_HOUSEHOLDS]
    top = [{"household_id": int(tv.household_id[i]), "value": float(tv.value[i]),
            "taxes_saved_run": float(run_fig["taxes_saved"][i]), "taxes_saved_period": float(per_fig["taxes_saved"][i]),
            **{f"{k}_period": float(per_fig[k][i]) for k in SPLIT},
            "fee_period": float(per_fig["fee"][i]), "ratio_period": float(per_fig["ratio"][i])} for i in order]

    rej = last.rejected
    stages = rej["stage"].to_pylist() if rej.num_rows else []
    rej_rows = rej.sort_by([("household_id", "ascending"), ("account_id", "ascending")]).slice(0, MAX_REJECTED_ROWS)
    rejected = {"accounts": rej.num_rows, "by_stage": {st: stages.count(st) for st in sorted(set(stages))},
                "rows": [{k: r[k] for k in ("account_id", "household_id", "stage", "reason")} for r in rej_rows.to_pylist()],
                "truncated": rej.num_rows > MAX_REJECTED_ROWS}

    report = {
        "run": {"run_id": last.run_id, "date": last.date, "uri": last.uri, "book": s.get("book"),
                "solver": s.get("solver"), "since": since, "runs_read": runs_read, "runs_skipped": runs_skipped,
                "days_in_run": tv.runs[-1][1], "days_in_period": int(sum(d for _, d in tv.runs))},
        "headline": headline,
        "tax_value": tax,
        "tracking_error": te,
        "dispersion": dispersion,
        "trades_by_reason": sorted(last.trades_by_reason, key=lambda r: (-r["value"], r["reason"], r["side"])),
        "top_households": top,
        "rejected": rejected,
        # For the tax-value chart: per household (period) fee and tax value.
        "_points": {"fee": per_fig["fee"].tolist(), "taxes_saved": per_fig["taxes_saved"].tolist()},
    }
    report = _clean(report)
    report["_households"] = households_table(tv)
    return report


HOUSEHOLD_COLUMNS = ("taxes_saved",) + SPLIT + ("fee", "ratio")


def households_table(tv: TaxValue) -> pa.Table:
    """Per household of the reported run: value and, for the run and the period, taxes saved
    or deferred, its split, the fee for the same days and their ratio, null where the fee is 0
    (the ratio is undefined; ``exceeds_*`` still says whether the tax value beats the fee)."""
    cols = {"household_id": pa.array(tv.household_id, pa.int64()), "value": pa.array(tv.value, pa.float64())}
    for name, f in (("run", tv.run), ("period", tv.period)):
        for k in HOUSEHOLD_COLUMNS:
            v = np.asarray(f[k], float)
            cols[f"{k}_{name}"] = pa.array(v, pa.float64(), mask=~np.isfinite(v))  # a strict table: no inf
        cols[f"exceeds_{name}"] = pa.array(f["taxes_saved"] > f["fee"], pa.bool_())
    return pa.table(cols)


def report_json(report: dict) -> str:
    """The figures as JSON (the chart points left out)."""
    return jsonout.dumps({k: v for k, v in report.items() if not k.startswith("_")}, indent=2, sort_keys=True)


# HTML ----------------------------------------------------------------------------------------

def _usd(x) -> str:
    return "n/a" if x is None else (f"-${-x:,.0f}" if x < 0 else f"${x:,.0f}")


def _pct(x, digits=1) -> str:
    return "n/a" if x is None else f"{100.0 * x:.{digits}f}%"


def _int(x) -> str:
    return "n/a" if x is None else f"{int(x):,d}"


def _ratio_text(x) -> str:
    return "n/a" if x is None else f"{x:,.2f}x"


FORMATS = {"usd": _usd, "pct": _pct, "pct2": lambda x: _pct(x, 2), "int": _int, "ratio": _ratio_text}


def _num(key: str, value, fmt: str) -> str:
    """A number with its JSON key and exact value."""
    dv = "null" if value is None else repr(value)
    return (f'<span class="num" data-key="{html.escape(key)}" data-value="{html.escape(dv)}" data-fmt="{fmt}">'
            f'{html.escape(FORMATS[fmt](value))}</span>')


def _img(svg: str, alt: str) -> str:
    return f'<img src="{charts.data_uri(svg)}" alt="{html.escape(alt)}">'


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta{color:#666;font-size:13px} .cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:16px}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:180px}
.card .label{font-size:12px;color:#666} .card .num{font-size:20px;font-weight:600}
table{border-collapse:collapse;font-size:13px;margin-top:8px} th,td{padding:4px 8px;border-bottom:1px solid #eee;text-align:right}
th{background:#f6f6f6} td.l,th.l{text-align:left} .charts{display:flex;flex-wrap:wrap;gap:16px}
p.note{font-size:13px;color:#444;max-width:900px}
"""


def render_html(report: dict) -> str:
    """The report as one self-contained HTML page (see the module docstring)."""
    r, h = report["run"], report["headline"]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>Rebalance report {html.escape(r['run_id'])}</title><style>{_CSS}</style></head><body>",
           f"<h1>Rebalance report: run {html.escape(r['run_id'])}</h1>",
           f'<div class="meta">Trade date {html.escape(str(r["date"]))} &middot; book {html.escape(str(r["book"]))} '
           f'&middot; solver {html.escape(str(r["solver"]))} &middot; period from {html.escape(str(r["since"]))} '
           f'({_num("run.days_in_period", r["days_in_period"], "int")} days, {len(r["runs_read"])} runs)</div>']

    def card(label, key, fmt):
        return f'<div class="card"><div class="label">{html.escape(label)}</div>{_num("headline." + key, h[key], fmt)}</div>'

    out.append("<h2>Headline</h2><div class=\"cards\">")
    out += [card("Households rebalanced", "households_rebalanced", "int"),
            card("Households rejected", "households_rejected", "int"),
            card("Book value", "value", "usd"), card("Trades", "trades", "int"),
            card("Losses harvested (run)", "losses_harvested", "usd"),
            card("Taxes saved or deferred (run)", "taxes_saved_run", "usd"),
            card("Taxes saved or deferred (period)", "taxes_saved_period", "usd"),
            card("Advisory fees (period)", "fees_period", "usd"),
            card("Tax value > fee, by count (period)", "exceeding_period_by_count", "pct"),
            card("Tax value > fee, by value (period)", "exceeding_period_by_value", "pct"),
            card("Tracking error before", "te_before", "pct2"), card("Tracking error after", "te_after", "pct2"),
            card("Tracking error, naive rebalance", "te_naive", "pct2")]
    out.append("</div>")

    # Tax value vs fees
    out.append("<h2>Tax value against fees</h2>")
    out.append('<p class="note">Taxes saved or deferred against a tax-naive rebalance (FIFO lots, no harvesting, '
               'no deferral) to the same targets, beside the advisory fee for the same days. The run covers '
               f'{_num("run.days_in_run", r["days_in_run"], "int")} day(s); the period is every run since '
               f'{html.escape(str(r["since"]))}. Over the period, harvested losses add up; a deferred gain is the '
               'same gain run after run, so deferral and waits count at their largest of any run.</p>')
    rows = [("Taxes saved or deferred", "taxes_saved"), ("from losses harvested", "harvest_value"),
            ("from gains deferred", "deferral_value"), ("from short-term gains left to turn long-term", "wait_value"),
            ("Advisory fees", "fees")]
    out.append('<table><tr><th class="l"></th><th>Run</th><th>Period</th></tr>')
    for label, k in rows:
        out.append(f'<tr><td class="l">{html.escape(label)}</td><td>{_num(f"headline.{k}_run", h[f"{k}_run"], "usd")}</td>'
                   f'<td>{_num(f"headline.{k}_period", h[f"{k}_period"], "usd")}</td></tr>')
    for label, k, fmt in (("Households whose tax value exceeds their fee", "households", "int"),
                          ("share by count", "by_count", "pct"), ("share by value", "by_value", "pct")):
        out.append(f'<tr><td class="l">{html.escape(label)}</td>'
                   f'<td>{_num(f"headline.exceeding_run_{k}", h[f"exceeding_run_{k}"], fmt)}</td>'
                   f'<td>{_num(f"headline.exceeding_period_{k}", h[f"exceeding_period_{k}"], fmt)}</td></tr>')
    out.append("</table>")
    t = report["tax_value"]
    edges = [(-math.inf if i == 0 else math.inf) if e is None else e for i, e in enumerate(t["ratio_edges"])]
    pts = report.get("_points", {})
    out.append('<div class="charts">')
    out.append(_img(charts.histogram(edges, {"run": t["ratio_histogram_run"], "period": t["ratio_histogram_period"]},
                                     title="Tax value / fee per household", xlabel="taxes saved / fee"),
                    "histogram of tax value over fee"))
    if pts:
        out.append(_img(charts.scatter(pts["fee"], pts["taxes_saved"], title="Tax value against fee (period)",
                                       xlabel="fee, USD", ylabel="taxes saved or deferred, USD", diagonal=True, log=True),
                        "scatter of tax value against fee"))
    out.append("</div>")

    # Tracking error
    te = report["tracking_error"]
    out.append("<h2>Tracking error before and after</h2>")
    out.append('<p class="note">Household tracking error against the household target (annual volatility, '
               'factor risk model), before the run, after its trades, and after the naive rebalance.</p>')
    te_edges = [math.inf if e is None else e for e in te["edges"]]
    out.append(_img(charts.histogram(te_edges, {st: te[st] for st in STAGES}, title="Tracking error of households",
                                     xlabel="tracking error (annual)", xfmt="{:.2%}"), "tracking error histogram"))

    # Dispersion
    out.append("<h2>Dispersion by model</h2>")
    out.append('<p class="note">Across the accounts that follow each model: tracking error and active share against '
               "the account's own target, 10th / 50th / 90th percentiles, before, after, and after the naive "
               "rebalance. Households are optimized as a whole, so an account may sit off its model on purpose "
               "(asset location, deferred gains).</p>")
    disp = report["dispersion"]
    if disp:
        labels = [f"model {d['model_id']}" for d in disp]
        for m, name, fmt in (("te", "Tracking error", "{:.2%}"), ("active", "Active share", "{:.1%}")):
            series = {st: [(d[f"{m}_{st}"]["p10"], d[f"{m}_{st}"]["p50"], d[f"{m}_{st}"]["p90"]) for d in disp]
                      for st in STAGES}
            out.append(_img(charts.ranges(labels, series, title=f"{name} across accounts, by model",
                                          xlabel=name.lower(), fmt=fmt), f"{name} dispersion by model"))
        out.append('<table><tr><th class="l">Model</th><th>Accounts</th>'
                   + "".join(f"<th>TE p90-p10 {st}</th>" for st in STAGES)
                   + "".join(f"<th>Active p50 {st}</th>" for st in STAGES) + "</tr>")
        for i, d in enumerate(disp):
            cells = [f'<td class="l">{d["model_id"]}</td><td>{_num(f"dispersion.{i}.accounts", d["accounts"], "int")}</td>']
            cells += [f'<td>{_num(f"dispersion.{i}.te_{st}.spread", d[f"te_{st}"]["spread"], "pct2")}</td>' for st in STAGES]
            cells += [f'<td>{_num(f"dispersion.{i}.active_{st}.p50", d[f"active_{st}"]["p50"], "pct")}</td>' for st in STAGES]
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
    else:
        out.append("<p>No accounts rebalanced.</p>")

    # Trades by reason
    out.append("<h2>Trades by reason</h2>")
    tbr = report["trades_by_reason"]
    if tbr:
        out.append(_img(charts.bars([f"{x['reason']} ({x['side']})" for x in tbr], [x["value"] for x in tbr],
                                    title="Value traded by reason", xlabel="USD", fmt="${:,.0f}"), "trades by reason"))
        out.append('<table><tr><th class="l">Reason</th><th class="l">Side</th><th>Trades</th><th>Value</th></tr>')
        for i, x in enumerate(tbr):
            out.append(f'<tr><td class="l">{html.escape(x["reason"])}</td><td class="l">{html.escape(x["side"])}</td>'
                       f'<td>{_num(f"trades_by_reason.{i}.trades", x["trades"], "int")}</td>'
                       f'<td>{_num(f"trades_by_reason.{i}.value", x["value"], "usd")}</td></tr>')
        out.append("</table>")
    else:
        out.append("<p>No trades.</p>")

    # Top households
    out.append(f"<h2>Top {TOP_HOUSEHOLDS} households by tax value (period)</h2>")
    out.append('<table><tr><th class="l">Household</th><th>Value</th><th>Saved (run)</th><th>Saved (period)</th>'
               "<th>Harvest</th><th>Deferral</th><th>Wait</th><th>Fee (period)</th><th>Saved / fee</th></tr>")
    for i, x in enumerate(report["top_households"]):
        k = f"top_households.{i}"
        out.append(f'<tr><td class="l">{x["household_id"]}</td><td>{_num(k + ".value", x["value"], "usd")}</td>'
                   f'<td>{_num(k + ".taxes_saved_run", x["taxes_saved_run"], "usd")}</td>'
                   f'<td>{_num(k + ".taxes_saved_period", x["taxes_saved_period"], "usd")}</td>'
                   + "".join(f'<td>{_num(f"{k}.{s}_period", x[f"{s}_period"], "usd")}</td>' for s in SPLIT)
                   + f'<td>{_num(k + ".fee_period", x["fee_period"], "usd")}</td>'
                   f'<td>{_num(k + ".ratio_period", x["ratio_period"], "ratio")}</td></tr>')
    out.append("</table>")

    # Rejected
    rj = report["rejected"]
    out.append("<h2>Rejected accounts</h2>")
    out.append(f'<p>{_num("rejected.accounts", rj["accounts"], "int")} account(s) not rebalanced'
               + "".join(f'; {html.escape(st)}: {_num(f"rejected.by_stage.{st}", n, "int")}' for st, n in rj["by_stage"].items())
               + (f" (first {MAX_REJECTED_ROWS} listed)" if rj["truncated"] else "") + ".</p>")
    if rj["rows"]:
        out.append('<table><tr><th class="l">Account</th><th class="l">Household</th><th class="l">Stage</th>'
                   '<th class="l">Reason</th></tr>')
        for x in rj["rows"]:
            out.append(f'<tr><td class="l">{x["account_id"]}</td><td class="l">{x["household_id"]}</td>'
                       f'<td class="l">{html.escape(x["stage"])}</td><td class="l">{html.escape(x["reason"])}</td></tr>')
        out.append("</table>")

    out.append("<h2>Runs read</h2><table><tr><th class=\"l\">Run</th><th class=\"l\">Date</th><th>Days</th></tr>")
    for x in r["runs_read"]:
        out.append(f'<tr><td class="l">{html.escape(x["run_id"])}</td><td class="l">{html.escape(str(x["date"]))}</td>'
                   f'<td>{x["days"]}</td></tr>')
    out.append("</table>")
    if r["runs_skipped"]:
        out.append("<p class=\"note\">Left out: " + "; ".join(
            f'{html.escape(x["run_id"])} ({html.escape(x["why"])})' for x in r["runs_skipped"]) + "</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
