"""The trade review a desk runs before it sends a run's orders (``rebalance review``).

:func:`review_run` reads a run's outputs (``trades/``, ``households/``, ``accounts/``,
``rejected/``) and the book it was made from (accounts: cash and minimum trade; lots: what
each account holds), and checks the orders against rules a desk would not send them without:

hard rules (any break: the review fails, ``rebalance review`` exits 1)
    - ``complete``: the run has its ``manifest.json`` (every shard written; orders of an
      incomplete run are not all there);
    - ``worse_than_holding``: households whose ``objective`` exceeds ``objective_hold`` by more
      than 1e-6 of their value (doing nothing would have been better; households whose
      ``objective_hold`` is null, where holding breaks a hard rule, cannot be);
    - ``worse_than_naive``: the same against ``objective_naive_whole``, the naive rebalance
      made whole by the same share and minimum rules (null where those trades break a rule);
    - ``dust``: trade rows under $1 (those that are one lot of a larger sale counted apart;
      forced sales, reason ``screen`` or ``restriction``, exempt and counted apart);
    - ``under_minimum``: orders, per (account, security, side) the sum of their rows, worth less
      than the account's ``min_trade`` that neither close the position (a sale of every share
      the account holds of the security) nor are forced (a row with reason ``screen`` or
      ``restriction``);
    - ``cash_above_band``: accounts whose cash after trades (the book's cash plus sales minus
      buys: computed here, not taken from the run) exceeds ``cash_target + cash_band`` by more
      than a cent with no ``cash_note`` saying why;

figures
    - ``value_kept``: per household with more than $10 of value found (``objective_hold -
      objective_continuous``), the share of it the final orders keep, ``(objective_hold -
      objective) / (objective_hold - objective_continuous)``: count, median and 1st
      percentile (numpy's linear interpolation between order statistics);
    - ``wash_sales``: the loss deferred into replacement lots' basis and the loss destroyed
      (replacement in an IRA), summed over households (USD, <= 0), and the disallowed loss;
    - ``counts``: households (rebalanced, rejected), accounts, trade rows, rejected accounts.

A rule whose columns the run does not have (a run made before they were added) is reported
as not checked (``status`` ``"n/a"`` with the missing columns named), never as passed.
Everything here is a pure function of the tables except :func:`load_review_inputs` and
:func:`review_run`, which read them; no ray.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .book import Book
from .schema import TradeReason
from .storage import Location, S3Options, open_uri

__all__ = ["ReviewSettings", "ReviewInputs", "REVIEW_FILE", "HARD_RULES", "load_review_inputs", "review",
           "review_run", "format_review"]

REVIEW_FILE = "review.json"
FORMAT = 1
HARD_RULES = ("complete", "worse_than_holding", "worse_than_naive", "dust", "under_minimum", "cash_above_band")
_FORCED = (TradeReason.SCREEN.value, TradeReason.RESTRICTION.value)
_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class ReviewSettings:
    """Thresholds of the review (USD unless said).

    dust : a trade row under this is dust. value_found_min : households whose value found
    is at most this are left out of ``value_kept`` (a ratio of two small numbers says
    nothing). worse_than_holding_rel : tolerance of the holding comparison, a fraction of the
    household's value (the solver's accuracy is 1e-6 of value). cash_tolerance : cash may
    exceed target plus band by this. close_tolerance : a sale closes a position when the
    shares left are at most this fraction of the shares held."""
    dust: float = 1.0
    value_found_min: float = 10.0
    worse_than_holding_rel: float = 1e-6
    cash_tolerance: float = 0.01
    close_tolerance: float = 1e-9


@dataclass(frozen=True, eq=False)
class ReviewInputs:
    """A run's output tables (all their shards) and the book's tables the review needs.

    book_accounts : account_id, cash, min_trade. holdings : account_id, security_id, shares
    (one row per lot; summed here). run : the run's ``run.json`` (or {})."""
    trades: pa.Table
    households: pa.Table
    accounts: pa.Table
    rejected: pa.Table
    book_accounts: pa.Table
    holdings: pa.Table
    run: dict
    complete: bool
    securities: pa.Table | None = None  # security_id, symbol: names the securities of examples


def _concat(loc: Location, table: str, columns: list[str] | None = None) -> pa.Table | None:
    files = [f for f in loc.listdir(table) if f.endswith(".parquet")]
    if not files:
        return None
    parts = [loc.read_parquet(f"{table}/{f}") for f in files]
    if columns is not None:
        parts = [t.select([c for c in columns if c in t.schema.names]) for t in parts]
    return pa.concat_tables(parts, promote_options="default")


_TRADE_COLUMNS = ["household_id", "account_id", "security_id", "lot_id", "side", "shares", "value", "reason"]


def load_review_inputs(run_uri: str, book_uri: str, s3: S3Options | None = None) -> ReviewInputs:
    """Read what :func:`review` needs from a run (any URI: path, file://, s3://) and its book."""
    loc = open_uri(run_uri, s3)
    if not loc.exists("run.json"):
        raise ValueError(f"{run_uri}: no run.json: not a run")
    run = loc.read_json("run.json")
    tables = {}
    for name in ("trades", "households", "accounts", "rejected"):
        t = _concat(loc, name, _TRADE_COLUMNS if name == "trades" else None)
        if t is None:
            raise ValueError(f"{run_uri}: no {name}/ files: the run wrote nothing yet")
        tables[name] = t
    book = Book.open(book_uri, s3)
    n = book.info.n_buckets
    book_accounts = pa.concat_tables([book.read("accounts", b, ["account_id", "cash", "min_trade"]) for b in range(n)])
    holdings = pa.concat_tables([book.read("lots", b, ["account_id", "security_id", "shares"]) for b in range(n)])
    return ReviewInputs(**tables, book_accounts=book_accounts, holdings=holdings, run=run,
                        complete=loc.exists("manifest.json"), securities=book.read("securities", None,
                                                                                   ["security_id", "symbol"]))


def _col(t: pa.Table, name: str, dtype=float) -> np.ndarray:
    """A column as numpy, nulls as NaN (floats) so that comparisons with them are False."""
    c = t[name]
    if dtype is float:
        return c.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
    return c.to_numpy(zero_copy_only=False)


def _missing(t: pa.Table, names) -> list[str]:
    return [c for c in names if c not in t.schema.names]


def _na(missing: list[str], table: str, hard: bool) -> dict:
    return {"hard": hard, "status": "n/a", "count": None,
            "why": f"{table}/ has no {', '.join(missing)} (a run made before the column existed)"}


def _rule(hard: bool, broken: int, **figures) -> dict:
    return {"hard": hard, "status": "fail" if broken else "pass", "count": int(broken), **figures}


def _value_kept(h: pa.Table, s: ReviewSettings) -> dict:
    missing = _missing(h, ["objective_hold"])
    if missing:
        return _na(missing, "households", False)
    hold, obj, cont = _col(h, "objective_hold"), _col(h, "objective"), _col(h, "objective_continuous")
    found = hold - cont
    sel = np.isfinite(found) & np.isfinite(obj) & (found > s.value_found_min)
    kept = (hold[sel] - obj[sel]) / found[sel]
    out = {"hard": False, "status": "info", "households": int(sel.sum()), "value_found_min": s.value_found_min,
           "median": float(np.median(kept)) if len(kept) else None,
           "p1": float(np.quantile(kept, 0.01)) if len(kept) else None,
           "min": float(kept.min()) if len(kept) else None,
           "value_found": float(found[sel].sum()), "value_kept": float((hold[sel] - obj[sel]).sum())}
    order = np.argsort(kept)[:_MAX_EXAMPLES]
    ids = _col(h, "household_id", None)[sel]
    out["examples"] = [{"household_id": int(ids[i]), "kept": float(kept[i]), "value_found": float(found[sel][i])}
                       for i in order]
    return out


def _worse_than_holding(h: pa.Table, s: ReviewSettings) -> dict:
    missing = _missing(h, ["objective_hold"])
    if missing:
        return _na(missing, "households", True)
    hold, obj, value = _col(h, "objective_hold"), _col(h, "objective"), _col(h, "value")
    worse = obj > hold + s.worse_than_holding_rel * value  # null objective_hold: NaN, never worse
    ids = _col(h, "household_id", None)
    order = np.flatnonzero(worse)[np.argsort(-(obj - hold)[worse])][:_MAX_EXAMPLES]
    return _rule(True, int(worse.sum()), compared=int(np.isfinite(hold).sum()),
                 holding_breaks_a_rule=int((~np.isfinite(hold) & np.isfinite(obj)).sum()),
                 excess=float(np.sum((obj - hold)[worse])),
                 examples=[{"household_id": int(ids[i]), "objective": float(obj[i]), "objective_hold": float(hold[i])}
                           for i in order])


def _worse_than_naive(h: pa.Table, s: ReviewSettings) -> dict:
    missing = _missing(h, ["objective_naive_whole"])
    if missing:
        return _na(missing, "households", True)
    nv, obj, value = _col(h, "objective_naive_whole"), _col(h, "objective"), _col(h, "value")
    worse = obj > nv + s.worse_than_holding_rel * value  # null: NaN, never worse
    ids = _col(h, "household_id", None)
    order = np.flatnonzero(worse)[np.argsort(-(obj - nv)[worse])][:_MAX_EXAMPLES]
    return _rule(True, int(worse.sum()), compared=int(np.isfinite(nv).sum()), excess=float(np.sum((obj - nv)[worse])),
                 examples=[{"household_id": int(ids[i]), "objective": float(obj[i]), "objective_naive_whole": float(nv[i])}
                           for i in order])


def _named(rows: list[dict], symbols: dict) -> list[dict]:
    return [{**r, "symbol": symbols.get(r["security_id"])} for r in rows]


def _dust(t: pa.Table, s: ReviewSettings, symbols: dict) -> dict:
    v = _col(t, "value")
    # A screen or restriction forces the sale of every share, a sliver of a lot included: such
    # rows are counted apart and break nothing.
    forced = np.asarray(pc.is_in(t["reason"], value_set=pa.array(_FORCED)).to_numpy(zero_copy_only=False), bool)
    n_forced = int(np.sum((v < s.dust) & forced))
    dust = (v < s.dust) & ~forced
    idx = np.flatnonzero(dust)[:_MAX_EXAMPLES]
    rows = t.take(pa.array(idx, pa.int64())).select(["household_id", "account_id", "security_id", "side", "shares",
                                                      "value", "reason"]).to_pylist()
    # A dust row may be one lot of a larger sale (the order a desk sends is the sum): counted
    # apart, still a break (a lot designation under $1 is dust on the confirmation too).
    keys = ["account_id", "security_id", "side"]
    d = t.filter(pa.array(dust)).select(keys)
    orders = t.select(keys + ["value"]).group_by(keys).aggregate([("value", "sum")])
    in_larger = d.join(orders, keys).filter(pc.greater_equal(pc.field("value_sum"), s.dust)).num_rows if d.num_rows else 0
    return _rule(True, int(dust.sum()), threshold=s.dust, value=float(v[dust].sum()), in_larger_orders=in_larger,
                 forced=n_forced, examples=_named(rows, symbols))


def _orders(t: pa.Table) -> pa.Table:
    """Trades summed per (account, security, side): value, shares, and whether a row is forced."""
    forced = pc.is_in(t["reason"], value_set=pa.array(_FORCED))
    g = t.select(["household_id", "account_id", "security_id", "side", "value", "shares"]).append_column(
        "forced", pc.cast(forced, pa.int64()))
    return g.group_by(["household_id", "account_id", "security_id", "side"]).aggregate(
        [("value", "sum"), ("shares", "sum"), ("forced", "max")])


def _keys(t: pa.Table, names) -> pa.Table:
    """``t`` with its id columns as int64 (book and run tables may differ in width)."""
    for n in names:
        i = t.schema.get_field_index(n)
        t = t.set_column(i, n, pc.cast(t[n], pa.int64()))
    return t


def _under_minimum(t: pa.Table, book_accounts: pa.Table, holdings: pa.Table, s: ReviewSettings,
                   symbols: dict) -> dict:
    o = _keys(_orders(t), ["account_id", "security_id"])
    mins = _keys(book_accounts.select(["account_id", "min_trade"]), ["account_id"])
    held = _keys(holdings, ["account_id", "security_id"]).group_by(["account_id", "security_id"]).aggregate(
        [("shares", "sum")]).rename_columns(["account_id", "security_id", "held"])
    o = o.join(mins, "account_id", join_type="left outer").join(held, ["account_id", "security_id"],
                                                                 join_type="left outer")
    o = o.sort_by([("household_id", "ascending"), ("account_id", "ascending"), ("security_id", "ascending"),
                   ("side", "ascending")])
    value, sold, have = _col(o, "value_sum"), _col(o, "shares_sum"), _col(o, "held")
    minimum = np.nan_to_num(_col(o, "min_trade"), nan=0.0)
    sell = _col(o, "side", None) == "sell"
    closes = sell & np.isfinite(have) & (sold >= have * (1.0 - s.close_tolerance))
    forced = _col(o, "forced_max") > 0
    under = value < minimum
    broken = under & ~closes & ~forced
    idx = np.flatnonzero(broken)[:_MAX_EXAMPLES]
    ex = o.take(pa.array(idx, pa.int64())).select(["household_id", "account_id", "security_id", "side", "value_sum",
                                                   "min_trade"]).rename_columns(
        ["household_id", "account_id", "security_id", "side", "value", "min_trade"]).to_pylist()
    return _rule(True, int(broken.sum()), orders=o.num_rows, under_minimum=int(under.sum()),
                 closing_a_position=int((under & closes).sum()), forced=int((under & forced & ~closes).sum()),
                 examples=_named(ex, symbols))


def _cash_above_band(accounts: pa.Table, t: pa.Table, book_accounts: pa.Table, s: ReviewSettings) -> dict:
    missing = _missing(accounts, ["cash_target", "cash_band", "cash_note"])
    if missing:
        return _na(missing, "accounts", True)
    a = accounts.select(["household_id", "account_id", "cash_target", "cash_band", "cash_note"]
                        + (["cash_after"] if "cash_after" in accounts.schema.names else []))
    sign = pc.if_else(pc.equal(t["side"], "sell"), 1.0, -1.0)
    flows = pa.table({"account_id": t["account_id"], "flow": pc.multiply(t["value"], sign)}).group_by(
        "account_id").aggregate([("flow", "sum")])
    a = _keys(a, ["account_id"]).join(_keys(book_accounts.select(["account_id", "cash"]), ["account_id"]),
                                      "account_id", join_type="left outer").join(
        _keys(flows, ["account_id"]), "account_id", join_type="left outer").sort_by("account_id")
    cash = np.nan_to_num(_col(a, "cash"), nan=0.0) + np.nan_to_num(_col(a, "flow_sum"), nan=0.0)
    ceiling = _col(a, "cash_target") + _col(a, "cash_band") + s.cash_tolerance
    above = cash > ceiling
    noted = a["cash_note"].is_valid().to_numpy(zero_copy_only=False)
    broken = above & ~noted
    out_of_step = None
    if "cash_after" in a.schema.names:  # the run's own figure against the trades'
        out_of_step = int(np.sum(~(np.abs(_col(a, "cash_after") - cash) <= s.cash_tolerance)))
    idx = np.flatnonzero(broken)[np.argsort(-(cash - ceiling)[broken])][:_MAX_EXAMPLES]
    ids, hh = _col(a, "account_id", None), _col(a, "household_id", None)
    ex = [{"household_id": int(hh[i]), "account_id": int(ids[i]), "cash_after": float(cash[i]),
           "cash_target": float(_col(a, "cash_target")[i]), "cash_band": float(_col(a, "cash_band")[i])} for i in idx]
    return _rule(True, int(broken.sum()), above_band=int(above.sum()), above_band_with_note=int((above & noted).sum()),
                 above_band_without_note=int(broken.sum()), cash_after_disagrees=out_of_step,
                 excess_without_note=float(np.sum((cash - ceiling)[broken])), examples=ex)


def _wash_sales(h: pa.Table) -> dict:
    out = {"hard": False, "status": "info"}
    for c in ("loss_deferred", "loss_destroyed", "disallowed_loss"):
        out[c] = float(pc.sum(h[c]).as_py() or 0.0) if c in h.schema.names else None
    missing = _missing(h, ["loss_deferred", "loss_destroyed"])
    if missing:
        out["why"] = f"households/ has no {', '.join(missing)} (a run made before the column existed)"
    return out


def review(inputs: ReviewInputs, settings: ReviewSettings | None = None) -> dict:
    """The review's figures and rules (the content of ``review.json``; see the module docstring)."""
    s = settings or ReviewSettings()
    h, t, acc, rej = inputs.households, inputs.trades, inputs.accounts, inputs.rejected
    status = h["status"].to_numpy(zero_copy_only=False)
    sec = inputs.securities
    symbols = {} if sec is None else dict(zip(sec["security_id"].to_pylist(), sec["symbol"].to_pylist()))
    rules = {
        "complete": _rule(True, 0 if inputs.complete else 1),
        "worse_than_holding": _worse_than_holding(h, s),
        "worse_than_naive": _worse_than_naive(h, s),
        "dust": _dust(t, s, symbols),
        "under_minimum": _under_minimum(t, inputs.book_accounts, inputs.holdings, s, symbols),
        "cash_above_band": _cash_above_band(acc, t, inputs.book_accounts, s),
    }
    broken = [k for k in HARD_RULES if rules[k]["status"] == "fail"]
    run = inputs.run
    return {
        "format": FORMAT,
        "run": {k: run.get(k) for k in ("run_id", "book", "date", "solver")},
        "ok": not broken,
        "broken": broken,
        "not_checked": [k for k in HARD_RULES if rules[k]["status"] == "n/a"],
        "counts": {"households": int(len(status)), "households_rebalanced": int(np.sum(status != "rejected")),
                   "households_rejected": int(np.sum(status == "rejected")), "accounts": acc.num_rows,
                   "trades": t.num_rows, "buys": int(pc.sum(pc.equal(t["side"], "buy")).as_py() or 0),
                   "rejected_accounts": rej.num_rows},
        "rules": rules,
        "value_kept": _value_kept(h, s),
        "wash_sales": _wash_sales(h),
        "settings": {k: getattr(s, k) for k in s.__dataclass_fields__},
        "reviewed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def review_run(run_uri: str, book_uri: str, s3: S3Options | None = None,
               settings: ReviewSettings | None = None, write: bool = True) -> dict:
    """Review the run at ``run_uri`` against its book; write ``review.json`` into the run
    (strict JSON) unless ``write`` is False. Returns the review."""
    rep = review(load_review_inputs(run_uri, book_uri, s3), settings)
    rep["book"] = book_uri
    rep["uri"] = run_uri
    rep["written"] = f"{run_uri.rstrip('/')}/{REVIEW_FILE}" if write else None
    if write:
        open_uri(run_uri, s3).write_json(REVIEW_FILE, rep)
    return rep


def _usd(x) -> str:
    if x is None:
        return "n/a"
    a = abs(x)
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{'-' if x < 0 else ''}${a / div:,.2f}{unit}"
    return f"{'-' if x < 0 else ''}${a:,.2f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def format_review(r: dict) -> str:
    """One screen of text: a line per rule, PASS / FAIL / N/A for the hard ones."""
    run, c, rules = r["run"], r["counts"], r["rules"]

    def mark(rule: dict) -> str:
        return {"pass": "PASS", "fail": "FAIL", "n/a": "N/A "}[rule["status"]]

    def why(rule: dict) -> str:
        return f"not checked: {rule['why']}"

    lines = [f"Review of run {run['run_id']}  book {r.get('book', run['book'])}  trade date {run['date']}  "
             f"solver {run['solver']}",
             f"      counts: {c['households']:,} households ({c['households_rebalanced']:,} rebalanced, "
             f"{c['households_rejected']:,} rejected), {c['accounts']:,} accounts, {c['trades']:,} trades "
             f"({c['buys']:,} buys), {c['rejected_accounts']:,} rejected accounts",
             f"{mark(rules['complete'])}  run complete: " + ("manifest.json written" if rules["complete"]["status"] == "pass"
                                                             else "no manifest.json: shards are missing")]
    w = rules["worse_than_holding"]
    lines.append(f"{mark(w)}  worse than holding: " + (why(w) if w["status"] == "n/a" else
                 f"{w['count']:,} of {w['compared']:,} households ({_usd(w['excess'])} over); "
                 f"{w['holding_breaks_a_rule']:,} where holding breaks a rule"))
    w = rules["worse_than_naive"]
    lines.append(f"{mark(w)}  worse than the whole-share naive: " + (why(w) if w["status"] == "n/a" else
                 f"{w['count']:,} of {w['compared']:,} households ({_usd(w['excess'])} over)"))
    d = rules["dust"]
    lines.append(f"{mark(d)}  dust: {d['count']:,} trades under {_usd(d['threshold'])} ({_usd(d['value'])}"
                 + (f"; {d['in_larger_orders']:,} of them lots of an order of {_usd(d['threshold'])} or more"
                    if d["in_larger_orders"] else "") + ")"
                 + (f"; {d['forced']:,} forced (screen, restriction) apart" if d.get("forced") else ""))
    u = rules["under_minimum"]
    lines.append(f"{mark(u)}  under minimum: {u['count']:,} orders under the account's min_trade, neither closing "
                 f"nor forced ({u['under_minimum']:,} under it of {u['orders']:,} orders: "
                 f"{u['closing_a_position']:,} close a position, {u['forced']:,} forced)")
    b = rules["cash_above_band"]
    lines.append(f"{mark(b)}  cash above band: " + (why(b) if b["status"] == "n/a" else
                 f"{b['above_band_without_note']:,} accounts without a note ({_usd(b['excess_without_note'])} over), "
                 f"{b['above_band_with_note']:,} with one"
                 + (f"; cash_after disagrees with the trades in {b['cash_after_disagrees']:,}"
                    if b.get("cash_after_disagrees") else "")))
    v = r["value_kept"]
    lines.append("      value kept after rounding: " + (why(v) if v["status"] == "n/a" else
                 f"median {_pct(v['median'])}, p1 {_pct(v['p1'])}, min {_pct(v['min'])} over "
                 f"{v['households']:,} households whose value found exceeds {_usd(v['value_found_min'])} "
                 f"({_usd(v['value_kept'])} of {_usd(v['value_found'])} kept)"))
    ws = r["wash_sales"]
    lines.append("      wash sales: " + (f"not checked: {ws['why']}; " if ws.get("why") else
                                         f"loss deferred into basis {_usd(ws['loss_deferred'])}, destroyed "
                                         f"{_usd(ws['loss_destroyed'])}; ")
                 + f"disallowed {_usd(ws['disallowed_loss'])}")
    for k in r["broken"]:
        for e in rules[k].get("examples", [])[:2]:
            lines.append(f"      e.g. {k}: " + ", ".join(f"{a}={_short(a, x)}" for a, x in e.items()))
    verdict = ("FAIL: " + ", ".join(r["broken"])) if r["broken"] else "PASS: no hard rule broken"
    if r["not_checked"]:
        verdict += f" ({', '.join(r['not_checked'])} not checked)"
    lines.append(verdict + (f"; {r['written']}" if r.get("written") else ""))
    return "\n".join(lines)


def _short(k: str, x) -> str:
    if isinstance(x, float):
        return f"{x:,.2f}" if k in ("value", "min_trade", "objective", "objective_hold") or k.startswith("cash") \
            else f"{x:.6g}"
    return str(x)
