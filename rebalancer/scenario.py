"""Crisis scenarios: reprice a book by a market shock; a month of daily loss harvesting.

Two kinds of shock (:func:`parse_shock`):

- **factor shock** ``equity=-30%``: the benchmark (the book's cap-weighted S&P 500 index,
  ``index_constituents`` with ``index_id = SP500``; ``--benchmark`` picks another) falls by
  ``s`` and every security moves by its conditional expectation under the book's own risk
  model (a linear regression on the benchmark, i.e. its beta)::

      r_i    = max(beta_i * s, -0.95)
      beta_i = cov(i, B) / var(B)
      cov(i, B) = X_i F (X' b) + l_i' diag(d) (L' b)
      var(B)    = (X' b)' F (X' b) + (L' b)' diag(d) (L' b)

  with ``b`` the benchmark's constituent weights, ``X`` the exposures, ``F`` the factor
  covariance and, for the specific part, ``L`` / ``d`` the look-through of
  :meth:`rebalancer.market.Market.lookthrough` (an index ETF is its constituents plus a
  residual of its own): exactly the covariance the household problem measures tracking error
  with (:meth:`rebalancer.problem.HouseholdProblem.tracking_variance`). So ``b' r = s``: the
  benchmark falls by the shock (beta 1), an index ETF on it moves with it, a security
  uncorrelated with it does not move. Returns are clipped at -95% so that no price reaches 0.

- **historical window** ``2020-02-19..2020-03-23``: each security's price return
  ``close(end) / close(start) - 1`` from the shipped history (:func:`history_returns`):
  real closes for stocks (split-adjusted, so a split inside the window is not a fall), the
  universe's derived series for ETFs and funds (:func:`rebalancer.universe.build_universe`
  as of the window's end, fixed seed). A one-day hole in a stock's data is bridged by the last
  close before it. A stock the shipped data stops quoting before the window ends (delisted)
  gets the factor-implied return ``beta_i * r_B``, with ``r_B`` the benchmark's own return over
  the window from its constituents' closes; the scenario lists those securities. Any other
  security without history (not in the shipped data, or not yet listed at the start) is an
  error that names it. The book's as-of date must be the window's start.

:func:`reprice_book` writes a *new* book (the input is only read): the securities' prices
scaled by ``1 + r_i`` (nothing else in that table), every other table the same bytes, except
for a window: the as-of date becomes the window's end, recent trades older than the wash-sale
look-back at the new date are dropped (they can no longer cause a wash sale, and the data
contract keeps 31 days), and a window across a year end files the closing year(s) the way
:func:`rebalancer.simulate.roll_year` does. Lots keep their shares and basis: a split inside
the window is absorbed by the price, which stays per share of the as-of date's count.

:func:`run_month` is the month of harvesting: a seeded sample of households, rebalanced on
every trading day of a window at that day's closes and carried from day to day with
:func:`rebalancer.simulate.apply_result`, against one run on the window's last day.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import multiprocessing as mp
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .book import Book, BookInfo, BookWriter, BucketStats, book_fingerprint, table_path
from . import jsonout
from .errors import RebalancerError
from .household import TAXABLE, Household, split_households
from .market import Market
from .marketdata import FIRST_DATE, LAST_DATE, load_history
from .optimize import HouseholdResult, rebalance_households
from .schema import HOUSEHOLD_TABLES, REFERENCE_TABLES, TABLES, AccountType
from .settings import OptimizerSettings
from .simulate import apply_result, roll_year
from .solvers import DEFAULT_SOLVER, SOLVERS
from .storage import S3Options, open_uri
from .taxlots import year_tax
from .universe import build_universe

__all__ = [
    "ScenarioError", "FactorShock", "WindowShock", "parse_shock", "DEFAULT_BENCHMARK", "RETURN_FLOOR",
    "benchmark_weights", "market_betas", "HistoryReturns", "history_returns", "ShockPath", "shock_path",
    "RepriceReport", "reprice_book", "book_fingerprint", "DaysResult", "harvest_days", "MonthRequest",
    "run_month", "format_month", "FIRM_MONTH_HARVEST", "json_ready",
]

DEFAULT_BENCHMARK = "SP500"
RETURN_FLOOR = -0.95  # no security loses more than 95%: prices stay > 0
SHOCK_FACTORS = ("equity",)
WASH_LOOKBACK_DAYS = 31  # recent_trades cover 31 days before the as-of date (data contract)
FIRM_MONTH_HARVEST = 0.035  # one firm's report: a month of daily harvesting in March 2020, 3.5% of value


class ScenarioError(RebalancerError):
    """A scenario cannot be built: a malformed shock, a book at the wrong date, a security
    without history, a repriced book that does not validate."""


# --- shocks --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FactorShock:
    """The ``factor`` (only ``equity``: the benchmark index) moves by ``size`` (a fraction)."""
    factor: str
    size: float

    def __post_init__(self):
        if self.factor not in SHOCK_FACTORS:
            raise ScenarioError(f"unknown shock factor {self.factor!r}; supported: {', '.join(SHOCK_FACTORS)}")
        if not (math.isfinite(self.size) and -1.0 < self.size <= 1.0):
            raise ScenarioError(f"shock {self.factor}={self.size:g} is out of range: give a move above -100% and at most "
                                "+100%, as a percentage (-30%) or a fraction (-0.30)")

    @property
    def label(self) -> str:
        return f"{self.factor}={self.size * 100:+g}%"


@dataclass(frozen=True)
class WindowShock:
    """Prices move as they did from the close of ``start`` to the close of ``end``."""
    start: dt.date
    end: dt.date

    def __post_init__(self):
        if self.end <= self.start:
            raise ScenarioError(f"window {self.start}..{self.end}: the end must be after the start")

    @property
    def label(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"


_FACTOR_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(%?)\s*$")
_WINDOW_RE = re.compile(r"^\s*(\d{4}-\d{2}-\d{2})\s*\.\.\s*(\d{4}-\d{2}-\d{2})\s*$")
_SHOCK_HELP = "expected FACTOR=MOVE (e.g. equity=-30% or equity=-0.30) or START..END (e.g. 2020-02-19..2020-03-23)"


def parse_shock(text: str) -> FactorShock | WindowShock:
    """``equity=-30%`` / ``equity=-0.3`` -> :class:`FactorShock`; ``2020-02-19..2020-03-23`` ->
    :class:`WindowShock`. Raises :class:`ScenarioError` saying what was expected."""
    if isinstance(text, (FactorShock, WindowShock)):
        return text
    m = _WINDOW_RE.match(text or "")
    if m:
        try:
            start, end = (dt.date.fromisoformat(x) for x in m.groups())
        except ValueError as e:
            raise ScenarioError(f"malformed shock {text!r}: {e}") from None
        return WindowShock(start, end)
    m = _FACTOR_RE.match(text or "")
    if m:
        factor, num, pct = m.groups()
        return FactorShock(factor.lower(), float(num) / (100.0 if pct else 1.0))
    raise ScenarioError(f"malformed shock {text!r}: {_SHOCK_HELP}")


# --- factor-implied returns ------------------------------------------------------------------

def benchmark_weights(market: Market, benchmark: str = DEFAULT_BENCHMARK) -> np.ndarray:
    """Weights (S,) of the benchmark index over the market's securities (positions), sum 1."""
    if benchmark not in market.index_names:
        raise ScenarioError(f"benchmark index {benchmark!r} is not in the book's index_constituents "
                            f"(it has: {', '.join(market.index_names) or 'none'})")
    pos, w = market.indexes[market.index_names.index(benchmark)]
    if len(pos) == 0 or (pos < 0).any() or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ScenarioError(f"benchmark index {benchmark!r}: constituents must be securities of the book "
                            "with weights summing to more than 0")
    b = np.zeros(market.n)
    np.add.at(b, pos, w)
    return b / b.sum()


def market_betas(market: Market, b: np.ndarray) -> tuple[np.ndarray, float]:
    """Betas (S,) of every security on the portfolio ``b`` (S,) and the portfolio's variance.

    ``beta_i = cov(i, B) / var(B)`` under ``X F X' + L diag(d) L'`` (see the module docstring).
    """
    X, F = market.risk.exposures, market.risk.factor_cov
    _, L, d = market.lookthrough(np.arange(market.n))
    fb = X.T @ b
    sb = L.T @ b
    dsb = np.where(sb != 0.0, d * sb, 0.0)  # a security outside the risk model has d = NaN: only matters if held by B
    var = float(fb @ F @ fb + sb @ dsb)
    if not (math.isfinite(var) and var > 0):
        raise ScenarioError(f"the benchmark's variance under the book's risk model is {var}: cannot derive betas")
    cov = X @ (F @ fb) + L @ dsb
    return cov / var, var


# --- historical returns ----------------------------------------------------------------------

@dataclass(frozen=True)
class HistoryReturns:
    """Price returns from the close of ``dates[0]`` (the start), by symbol.

    dates : ndarray (D,) datetime64[D], the trading days from start to end inclusive.
    path : ndarray (D, n), return from the start's close to each day's close; NaN where
        ``status`` is not ``ok``. ``path[0] = 0``.
    status : tuple of n: ``ok``; ``delisted`` (the shipped data stops quoting the stock
        before the end); ``unknown`` (no such symbol in the shipped data or the universe);
        ``not_listed`` (no close at or before the start).
    last_quote : tuple of n ISO dates of the last close in the shipped data (stocks), or None.
    """
    dates: np.ndarray
    path: np.ndarray
    status: tuple[str, ...]
    last_quote: tuple

    @property
    def returns(self) -> np.ndarray:
        return self.path[-1]


def _trading_day(d: dt.date, what: str, dates: np.ndarray) -> int:
    t = int(np.searchsorted(dates, np.datetime64(d, "D")))
    if t < len(dates) and dates[t] == np.datetime64(d, "D"):
        return t
    near = [str(dates[i]) for i in (t - 1, t) if 0 <= i < len(dates)]
    raise ScenarioError(f"{what} {d} is not a trading day of the shipped history ({FIRST_DATE} .. {LAST_DATE})"
                        + (f"; nearest: {' or '.join(near)}" if near else ""))


def _ffill_index(finite: np.ndarray) -> np.ndarray:
    """For each (t, j): the last row <= t where ``finite`` holds, -1 if none."""
    idx = np.where(finite, np.arange(finite.shape[0])[:, None], -1)
    return np.maximum.accumulate(idx, axis=0)


def history_returns(symbols: Sequence[str], start: dt.date, end: dt.date) -> HistoryReturns:
    """Returns of ``symbols`` over the trading days ``start..end`` from the shipped history.

    Stocks: real closes split-adjusted to ``end``; ETFs and funds: the universe's derived
    series as of ``end``. A day without a close (a hole in the data) takes the last close
    before it; a stock not quoted after some day of the window (delisted) is ``delisted``.
    """
    if end <= start:
        raise ScenarioError(f"window {start}..{end}: the end must be after the start")
    full = load_history()  # every shipped day: tells a hole in the data from a delisting
    t_end_full = _trading_day(end, "window end", full.dates)
    _trading_day(start, "window start", full.dates)
    u = build_universe(end)
    h = load_history(end)
    t0 = int(np.searchsorted(u.dates, np.datetime64(start, "D")))
    t1 = len(u.dates) - 1
    u_col = {s: j for j, s in enumerate(u.securities["symbol"].to_pylist())}
    h_col = {s: j for j, s in enumerate(h.symbols)}
    last_full = (len(full.dates) - 1 - np.argmax(np.isfinite(full.close[::-1]), axis=0))
    any_full = np.isfinite(full.close).any(axis=0)

    n = len(symbols)
    D = t1 - t0 + 1
    path = np.full((D, n), np.nan)
    status, last_quote = [], []
    for i, s in enumerate(symbols):
        if s in h_col:
            j = h_col[s]
            lq = full.dates[last_full[j]] if any_full[j] else None
            last_quote.append(str(lq) if lq is not None else None)
            if lq is None or last_full[j] < t_end_full:
                status.append("delisted")
                continue
            series = h.close[:, j]
        elif s in u_col:
            last_quote.append(None)
            series = u.price[:, u_col[s]]
        else:
            status.append("unknown")
            last_quote.append(None)
            continue
        ok = np.isfinite(series) & (series > 0)
        idx = _ffill_index(ok[:, None])[:, 0]
        if idx[t0] < 0:
            status.append("not_listed")
            continue
        px = series[idx[t0:]]
        path[:, i] = px / px[0] - 1.0
        status.append("ok")
    return HistoryReturns(dates=u.dates[t0:], path=path, status=tuple(status), last_quote=tuple(last_quote))


# --- a shock as returns of the book's securities ---------------------------------------------

@dataclass(frozen=True)
class ShockPath:
    """A shock applied to one market: the return of every security from the book's as-of
    close to each day of ``dates`` (a factor shock has one day: the as-of date itself).

    path : ndarray (D, S) returns (clipped at :data:`RETURN_FLOOR`), ``returns = path[-1]``.
    beta : ndarray (S,) betas on the benchmark. implied : ndarray (S,) bool, the return is
    factor-implied (all of them for a factor shock; delisted stocks for a window).
    benchmark_path : ndarray (D,) the benchmark's own return. clipped : ndarray (S,) bool.
    notes : what the caller should say about the returns (factor-implied securities).
    """
    shock: FactorShock | WindowShock
    benchmark: str
    dates: np.ndarray
    path: np.ndarray
    beta: np.ndarray
    implied: np.ndarray
    clipped: np.ndarray
    benchmark_path: np.ndarray
    notes: tuple[str, ...] = ()

    @property
    def returns(self) -> np.ndarray:
        return self.path[-1]

    @property
    def as_of(self) -> dt.date:
        return self.dates[-1].astype(dt.date)


def shock_path(market: Market, shock: FactorShock | WindowShock, benchmark: str = DEFAULT_BENCHMARK) -> ShockPath:
    """Returns of the market's securities under ``shock`` (see the module docstring)."""
    shock = parse_shock(shock)
    b = benchmark_weights(market, benchmark)
    beta, _ = market_betas(market, b)
    if isinstance(shock, FactorShock):
        raw = beta * shock.size
        r = np.maximum(raw, RETURN_FLOOR)
        return ShockPath(shock, benchmark, np.array([np.datetime64(market.as_of, "D")]), r[None, :], beta,
                         np.ones(market.n, bool), raw < RETURN_FLOOR, np.array([float(b @ r)]))
    if market.as_of != shock.start:
        raise ScenarioError(f"the book is as of {market.as_of}, but the window {shock.label} starts on {shock.start}: "
                            f"a historical window reprices a book of its start date (generate one with "
                            f"--as-of {shock.start}, or start the window on {market.as_of})")
    h = history_returns(list(market.symbol), shock.start, shock.end)
    status = np.asarray(h.status, object)
    bad = np.flatnonzero((status != "ok") & (status != "delisted"))
    if len(bad):
        why = {"unknown": "not in the shipped history", "not_listed": f"no close on or before {shock.start}"}
        listed = "; ".join(f"security {int(market.security_id[i])} ({market.symbol[i]}): {why[status[i]]}"
                           for i in bad[:10])
        raise ScenarioError(f"no price history over the window {shock.label} for {len(bad)} securit"
                            f"{'y' if len(bad) == 1 else 'ies'}: {listed}" + (" ..." if len(bad) > 10 else ""))
    ok = status == "ok"
    wb = b * ok
    if wb.sum() <= 0:
        raise ScenarioError(f"no constituent of the benchmark {benchmark!r} has history over {shock.label}")
    bench = np.nan_to_num(h.path) @ wb / wb.sum()
    implied = ~ok
    raw = np.where(implied[None, :], beta[None, :] * bench[:, None], h.path)
    path = np.maximum(raw, RETURN_FLOOR)
    notes = tuple(f"security {int(market.security_id[i])} ({market.symbol[i]}): last quoted {h.last_quote[i]}, "
                  f"delisted before {shock.end}: factor-implied return {path[-1, i]:+.2%} (beta {beta[i]:.2f} "
                  f"x benchmark {bench[-1]:+.2%})" for i in np.flatnonzero(implied))
    return ShockPath(shock, benchmark, h.dates, path, beta, implied, (raw < RETURN_FLOOR).any(axis=0), bench, notes)


# --- repricing a book ------------------------------------------------------------------------

@dataclass(frozen=True)
class RepriceReport:
    """What :func:`reprice_book` wrote. Money in USD.

    value_before / value_after : holdings at the old / new prices plus cash, whole book.
    unrealized : gains and losses (losses <= 0) of taxable lots before and after the shock.
    recent_trades_dropped : trades older than the wash-sale look-back at the new as-of date.
    years_filed : year ends the window crosses (each files the closing year per household).
    """
    uri: str
    info: BookInfo
    path: ShockPath
    security_id: np.ndarray
    symbol: np.ndarray
    old_price: np.ndarray
    new_price: np.ndarray
    value_before: float
    value_after: float
    holdings_before: float
    holdings_after: float
    unrealized: dict
    recent_trades_dropped: int
    years_filed: int
    seconds: float

    def summary(self) -> dict:
        """The repricing as JSON-ready figures (no per-security arrays but the factor-implied ones)."""
        r = self.path.returns
        p = self.path
        out = {
            "uri": self.uri, "as_of": self.info.as_of.isoformat(),
            "value_before": self.value_before, "value_after": self.value_after,
            "book_return": self.value_after / self.value_before - 1.0 if self.value_before else 0.0,
            "holdings_return": self.holdings_after / self.holdings_before - 1.0 if self.holdings_before else 0.0,
            "benchmark": p.benchmark, "benchmark_return": float(p.benchmark_path[-1]),
            "securities": int(len(r)), "clipped_at_floor": int(p.clipped.sum()),
            "security_returns": {"min": float(r.min()), "median": float(np.median(r)), "max": float(r.max())},
            "unrealized_taxable": self.unrealized,
            "recent_trades_dropped": self.recent_trades_dropped, "years_filed": self.years_filed,
            "seconds": self.seconds,
        }
        if isinstance(p.shock, WindowShock):
            out["trading_days"] = int(len(p.dates) - 1)
            out["factor_implied"] = [{"security_id": int(self.security_id[i]), "symbol": str(self.symbol[i]),
                                      "return": float(r[i]), "beta": float(p.beta[i])}
                                     for i in np.flatnonzero(p.implied)]
            out["notes"] = list(p.notes)
        return out


def _price_of(sec_ids: np.ndarray, ids: np.ndarray, price: np.ndarray) -> np.ndarray:
    order = np.argsort(sec_ids)
    i = np.clip(np.searchsorted(sec_ids[order], ids), 0, len(sec_ids) - 1)
    known = sec_ids[order][i] == ids
    return np.where(known, price[order][i], np.nan)


def _file_years(households: pa.Table, years: int) -> pa.Table:
    """File ``years`` closing years for every household: what :func:`rebalancer.simulate.roll_year`
    does to a carried household, on the book's table."""
    cols = {c: households[c].to_numpy(zero_copy_only=False).astype(float)
            for c in ("ytd_realized_st", "ytd_realized_lt", "loss_carryforward_st", "loss_carryforward_lt",
                      "short_term_rate", "long_term_rate", "state_rate")}
    st, lt = cols["ytd_realized_st"].copy(), cols["ytd_realized_lt"].copy()
    cf_st, cf_lt = cols["loss_carryforward_st"].copy(), cols["loss_carryforward_lt"].copy()
    for _ in range(years):
        for i in range(len(st)):
            y = year_tax(st[i], lt[i], cf_st[i], cf_lt[i], cols["short_term_rate"][i], cols["long_term_rate"][i],
                         cols["state_rate"][i])
            # to the cent, never below 0 (the netting's float round-off would leave -1e-14)
            cf_st[i], cf_lt[i] = max(round(y.carryforward_st, 2), 0.0), max(round(y.carryforward_lt, 2), 0.0)
        st[:], lt[:] = 0.0, 0.0
    for name, v in (("ytd_realized_st", st), ("ytd_realized_lt", lt), ("loss_carryforward_st", cf_st),
                    ("loss_carryforward_lt", cf_lt)):
        i = households.schema.get_field_index(name)
        households = households.set_column(i, households.schema.field(name), pa.array(v, pa.float64()))
    return households


def reprice_book(book: Book | str, shock, out: str, *, s3: S3Options | None = None,
                 benchmark: str = DEFAULT_BENCHMARK, overwrite: bool = False,
                 source: dict | None = None) -> RepriceReport:
    """Write the book repriced by ``shock`` to ``out`` (a new book; ``book`` is only read).

    See the module docstring for what changes. ``source`` is added to the new ``book.json``'s
    ``source.scenario`` (who asked, e.g. the scenario id). Raises :class:`ScenarioError` for a
    shock the book cannot take (wrong as-of date, securities without history).
    """
    t_start = time.perf_counter()
    book = Book.open(book, s3) if isinstance(book, str) else book
    shock = parse_shock(shock)
    ref = {t.name: book.read(t.name) for t in REFERENCE_TABLES}
    market = Market.from_tables(ref, book.as_of)
    path = shock_path(market, shock, benchmark)
    r = path.returns
    old = market.price
    new = old * (1.0 + r)
    new_as_of = path.as_of
    years = new_as_of.year - book.as_of.year

    writer = BookWriter(out, s3, overwrite=overwrite)
    src = book.loc
    sec = ref["securities"]
    i_price = sec.schema.get_field_index("price")
    writer.write("securities", sec.set_column(i_price, sec.schema.field("price"), pa.array(new, pa.float64())))
    for spec in REFERENCE_TABLES:
        if spec.name != "securities":
            rel = table_path(spec)
            writer.loc.write_bytes(rel, src.read_bytes(rel))

    sec_ids = market.security_id
    lo = np.datetime64(new_as_of - dt.timedelta(days=WASH_LOOKBACK_DAYS), "D")
    stats: list[BucketStats] = []
    totals = dict.fromkeys(("hold_before", "hold_after", "cash", "loss_before", "loss_after", "gain_before",
                            "gain_after"), 0.0)
    dropped = 0
    for b in range(book.info.n_buckets):
        raw = {spec.name: src.read_bytes(table_path(spec, b)) for spec in HOUSEHOLD_TABLES}
        tables = {}
        for name, data in raw.items():
            try:
                tables[name] = pq.read_table(pa.BufferReader(data))
            except (OSError, pa.ArrowInvalid) as e:
                raise ScenarioError(f"{book.loc.uri}: cannot read {table_path(TABLES[name], b)}: {e}") from None
        if years > 0:
            writer.write("households", _file_years(tables["households"], years), b)
        else:
            writer.loc.write_bytes(table_path(TABLES["households"], b), raw["households"])
        for name in ("accounts", "lots"):
            writer.loc.write_bytes(table_path(TABLES[name], b), raw[name])
        rt = tables["recent_trades"]
        if isinstance(shock, WindowShock):
            keep = rt["trade_date"].to_numpy(zero_copy_only=False).astype("datetime64[D]") >= lo
            if not keep.all():
                dropped += int((~keep).sum())
                rt = rt.filter(pa.array(keep))
                writer.write("recent_trades", rt, b)
            else:
                writer.loc.write_bytes(table_path(TABLES["recent_trades"], b), raw["recent_trades"])
        else:
            writer.loc.write_bytes(table_path(TABLES["recent_trades"], b), raw["recent_trades"])

        lots, acc = tables["lots"], tables["accounts"]
        ids = lots["security_id"].to_numpy().astype(np.int64)
        shares = lots["shares"].to_numpy()
        basis = lots["cost_basis"].to_numpy()
        p_old, p_new = _price_of(sec_ids, ids, old), _price_of(sec_ids, ids, new)
        a_ids = acc["account_id"].to_numpy()
        taxable_acc = a_ids[np.asarray(acc["account_type"].to_pylist(), object) == AccountType.TAXABLE.value]
        taxable = np.isin(lots["account_id"].to_numpy(), taxable_acc)
        g_old = np.where(taxable, shares * (p_old - basis), 0.0)
        g_new = np.where(taxable, shares * (p_new - basis), 0.0)
        h_old, h_new = float(np.nansum(shares * p_old)), float(np.nansum(shares * p_new))
        cash = float(acc["cash"].to_numpy().sum()) if acc.num_rows else 0.0
        totals["hold_before"] += h_old
        totals["hold_after"] += h_new
        totals["cash"] += cash
        totals["loss_before"] += float(np.nansum(np.minimum(g_old, 0.0)))
        totals["loss_after"] += float(np.nansum(np.minimum(g_new, 0.0)))
        totals["gain_before"] += float(np.nansum(np.maximum(g_old, 0.0)))
        totals["gain_after"] += float(np.nansum(np.maximum(g_new, 0.0)))
        old_stats = book.info.buckets[b]
        stats.append(dataclasses.replace(old_stats, recent_trades=rt.num_rows, value=round(h_new + cash, 2)))

    info = BookInfo(as_of=new_as_of, n_buckets=book.info.n_buckets, buckets=tuple(stats), source={
        "scenario": {"shock": shock.label, "benchmark": benchmark, "input_book": book.loc.uri,
                     "input_fingerprint": book_fingerprint(book), "input_as_of": book.as_of.isoformat(),
                     **(source or {})},
        "repriced_from": book.info.source,
    })
    writer.finish(info)
    return RepriceReport(
        uri=writer.loc.uri, info=info, path=path, security_id=sec_ids, symbol=market.symbol, old_price=old,
        new_price=new, value_before=totals["hold_before"] + totals["cash"],
        value_after=totals["hold_after"] + totals["cash"], holdings_before=totals["hold_before"],
        holdings_after=totals["hold_after"],
        unrealized={"losses_before": totals["loss_before"], "losses_after": totals["loss_after"],
                    "gains_before": totals["gain_before"], "gains_after": totals["gain_after"]},
        recent_trades_dropped=dropped, years_filed=max(years, 0), seconds=time.perf_counter() - t_start)


# --- a month of daily harvesting -------------------------------------------------------------

@dataclass(frozen=True)
class DaysResult:
    """Households carried over days (:func:`harvest_days`).

    households : the households after the last day's trades, in input order.
    records : per household, a dict of the run's sums over the days (losses harvested,
        gains realized, taxes saved, trades, days traded, failures, rule violations).
    results : per day, each household's result or exception (only with ``keep_results``).
    """
    households: list[Household]
    records: list[dict]
    results: list[list] = field(default_factory=list)


def _check_carry(hh: Household, r: HouseholdResult) -> list[str]:
    """What must hold for ``r``'s trades to be carried: no lot sold beyond its shares, no
    account's cash below zero, nothing bought with a negative amount."""
    t = r.trades
    problems = []
    sells = ~t.is_buy
    if (t.shares <= 0).any():
        problems.append("a trade with shares <= 0")
    sold = np.bincount(t.lot[sells], weights=t.shares[sells], minlength=len(hh.lots)) if sells.any() else np.zeros(len(hh.lots))
    over = sold > hh.lots.shares * (1 + 1e-9) + 1e-9
    if over.any():
        i = int(np.flatnonzero(over)[0])
        problems.append(f"lot {int(hh.lots.lot_id[i])} sold {sold[i]:g} of {hh.lots.shares[i]:g} shares")
    flow = np.bincount(t.account, weights=np.where(t.is_buy, -t.value, t.value), minlength=hh.n_accounts)
    short = hh.accounts.cash + flow < -0.01
    if short.any():
        a = int(np.flatnonzero(short)[0])
        problems.append(f"account {int(hh.accounts.account_id[a])} cash {hh.accounts.cash[a] + flow[a]:,.2f} after trades")
    return problems


def _harvested(r: HouseholdResult) -> float:
    return -(r.realized_st_loss + r.realized_lt_loss)  # allowed losses (disallowed ones are apart)


def harvest_days(market: Market, households: list[Household], dates: Sequence, path: np.ndarray, *,
                 solver: str = DEFAULT_SOLVER, settings: OptimizerSettings | None = None,
                 log: Callable[[str], None] | None = None, keep_results: bool = False) -> DaysResult:
    """Rebalance ``households`` on each of ``dates`` at the prices ``market.price * (1 + path[k])``
    and carry them to the next day (:func:`rebalancer.simulate.apply_result`).

    path : ndarray (len(dates), S). A household whose run fails on a day holds that day (no
    trades; the failure is recorded with its reason) and runs again the next day. Trades that
    would break a carried household (a lot sold beyond its shares, cash below zero) are not
    applied and are recorded as violations: there should be none.
    """
    settings = settings or OptimizerSettings()
    solve = SOLVERS[solver]
    hhs = list(households)
    rec = [{"harvested": 0.0, "gains_realized": 0.0, "disallowed": 0.0, "taxes_saved": 0.0, "harvest_value": 0.0, "tax": 0.0,
            "trades": 0, "days_traded": 0, "days_run": 0, "failures": [], "violations": []} for _ in hhs]
    year = market.as_of.year
    kept: list[list] = []
    for k, day in enumerate(dates):
        t0 = time.perf_counter()
        d = np.datetime64(day, "D")
        if d.astype(dt.date).year != year:
            hhs = [roll_year(h) for h in hhs]
            year = d.astype(dt.date).year
        m = dataclasses.replace(market, price=market.price * (1.0 + path[k]), as_of=d.astype(dt.date))
        results = rebalance_households(m, hhs, settings, solve, d)
        if keep_results:
            kept.append(results)
        for i, r in enumerate(results):
            x = rec[i]
            x["days_run"] += 1
            if isinstance(r, Exception):
                x["failures"].append(f"{d}: {type(r).__name__}: {r}")
                continue
            bad = _check_carry(hhs[i], r)
            if bad:
                x["violations"].extend(f"{d}: {b}" for b in bad)
                continue
            x["harvested"] += _harvested(r)
            x["gains_realized"] += r.realized_st_gain + r.realized_lt_gain
            x["disallowed"] += -r.disallowed_loss
            x["taxes_saved"] += r.taxes_saved
            x["harvest_value"] += r.harvest_value
            x["tax"] += r.tax
            x["trades"] += len(r.trades)
            x["days_traded"] += int(len(r.trades) > 0)
            hhs[i] = apply_result(hhs[i], r, d)
        if log is not None:
            log(f"day {k + 1}/{len(dates)} {d}: {len(hhs)} households, {time.perf_counter() - t0:.1f} s")
    return DaysResult(households=hhs, records=rec, results=kept)


@dataclass(frozen=True)
class MonthRequest:
    """A month of harvesting: ``households`` households sampled with ``seed`` from
    ``sample_buckets`` buckets of ``book`` (``only``: all, taxable = with a taxable account,
    direct = with a direct-indexed account), rebalanced every trading day of ``window`` after
    its start, in ``workers`` processes. ``out``: where ``<study_id>/month.json`` goes (None:
    nowhere)."""
    book: str
    window: str
    households: int = 200
    seed: int = 0
    sample_buckets: int = 4
    only: str = "all"
    workers: int = 1
    solver: str = DEFAULT_SOLVER
    benchmark: str = DEFAULT_BENCHMARK
    out: str | None = None
    study_id: str | None = None
    s3: S3Options | None = None
    settings: OptimizerSettings = field(default_factory=OptimizerSettings)

    def __post_init__(self):
        if self.households < 1:
            raise ScenarioError(f"households must be >= 1, got {self.households}")
        if self.sample_buckets < 1:
            raise ScenarioError(f"sample_buckets must be >= 1, got {self.sample_buckets}")
        if self.only not in ("all", "taxable", "direct"):
            raise ScenarioError(f"only must be all, taxable or direct, got {self.only!r}")
        if self.workers < 1:
            raise ScenarioError(f"workers must be >= 1, got {self.workers}")
        if self.solver not in SOLVERS:
            raise ScenarioError(f"unknown solver {self.solver!r}; choose from {sorted(SOLVERS)}")
        if not isinstance(parse_shock(self.window), WindowShock):
            raise ScenarioError(f"a month of harvesting needs a window START..END, got {self.window!r}")


def _month_chunk(args) -> tuple[list[dict], list[dict]]:
    market, hhs, dates, path, solver, settings, verbose, label = args
    log = (lambda s: print(f"{label}: {s}", file=sys.stderr, flush=True)) if verbose else None
    daily = harvest_days(market, hhs, dates[1:], path[1:], solver=solver, settings=settings, log=log)
    once = harvest_days(market, hhs, dates[-1:], path[-1:], solver=solver, settings=settings)
    return daily.records, once.records


def _household_value(market: Market, hh: Household) -> tuple[float, float]:
    """(household value, value of its taxable accounts) at the market's prices."""
    lot_v = hh.lots.shares * market.price[hh.lots.security]
    acc_v = np.bincount(hh.lots.account, weights=lot_v, minlength=hh.n_accounts) + hh.accounts.cash
    return float(acc_v.sum()), float(acc_v[hh.accounts.account_type == TAXABLE].sum())


def _ratio(x: float, v: float) -> float | None:
    return x / v if v > 0 else None


def _averages(rows: list[dict], key: str) -> dict:
    """Mean of per-household shares of starting value and the value-weighted share."""
    out = {"households": len(rows)}
    v = sum(r["start_value"] for r in rows)
    vt = sum(r["start_taxable_value"] for r in rows)
    for f in ("harvested", "taxes_saved", "harvest_value", "gains_realized"):
        shares = [r[key][f] / r["start_value"] for r in rows if r["start_value"] > 0]
        out[f"{f}_share_mean"] = float(np.mean(shares)) if shares else None
        out[f"{f}_share_value_weighted"] = sum(r[key][f] for r in rows) / v if v > 0 else None
        out[f"{f}_usd"] = sum(r[key][f] for r in rows)
    tx = [r[key]["harvested"] / r["start_taxable_value"] for r in rows if r["start_taxable_value"] > 0]
    out["harvested_share_of_taxable_mean"] = float(np.mean(tx)) if tx else None
    out["harvested_share_of_taxable_value_weighted"] = (sum(r[key]["harvested"] for r in rows) / vt) if vt > 0 else None
    out["trades"] = sum(r[key]["trades"] for r in rows)
    return out


def run_month(req: MonthRequest, log: Callable[[str], None] | None = None) -> dict:
    """The month of harvesting (see :class:`MonthRequest`); returns the report (and writes it
    to ``<out>/<study_id>/month.json`` when ``out`` is set)."""
    t_start = time.perf_counter()
    window = parse_shock(req.window)
    book = Book.open(req.book, req.s3)
    market = Market.from_tables({t.name: book.read(t.name) for t in REFERENCE_TABLES}, book.as_of)
    sp = shock_path(market, window, req.benchmark)  # checks the book's date and the history
    t_path = time.perf_counter() - t_start

    rng = np.random.default_rng(req.seed)
    n_b = book.info.n_buckets
    buckets = sorted(rng.choice(n_b, size=min(req.sample_buckets, n_b), replace=False).tolist())
    tables = {spec.name: pa.concat_tables([book.read(spec.name, b) for b in buckets]) for spec in HOUSEHOLD_TABLES}
    hhs, rejected = split_households(market, tables)
    if req.only == "taxable":
        eligible = [h for h in hhs if (h.accounts.account_type == TAXABLE).any()]
    elif req.only == "direct":
        eligible = [h for h in hhs if (h.accounts.di_etf >= 0).any()]
    else:
        eligible = hhs
    if not eligible:
        raise ScenarioError(f"no eligible households ({req.only}) in buckets {buckets} of {req.book}")
    pick = np.sort(rng.choice(len(eligible), size=min(req.households, len(eligible)), replace=False))
    sample = [eligible[i] for i in pick]

    chunks = [list(range(w, len(sample), req.workers)) for w in range(min(req.workers, len(sample)))]
    jobs = [(market, [sample[i] for i in c], sp.dates, sp.path, req.solver, req.settings, log is not None,
             f"worker {w + 1}/{len(chunks)}") for w, c in enumerate(chunks)]
    if log:
        log(f"month {window.label}: {len(sample)} households from buckets {buckets}, {len(sp.dates) - 1} trading "
            f"days, {len(chunks)} worker(s)")
    t = time.perf_counter()
    if len(jobs) == 1:
        results = [_month_chunk(jobs[0])]
    else:
        # spawn, not fork: Arrow's and the AWS SDK's thread pools are not fork-safe.
        with ProcessPoolExecutor(len(jobs), mp_context=mp.get_context("spawn")) as ex:
            results = list(ex.map(_month_chunk, jobs))
    t_days = time.perf_counter() - t
    daily: list = [None] * len(sample)
    once: list = [None] * len(sample)
    for c, (d_rec, o_rec) in zip(chunks, results):
        for j, i in enumerate(c):
            daily[i], once[i] = d_rec[j], o_rec[j]

    rows = []
    for i, hh in enumerate(sample):
        v0, vt0 = _household_value(market, hh)
        row = {"household_id": hh.household_id, "accounts": hh.n_accounts,
               "taxable_accounts": int((hh.accounts.account_type == TAXABLE).sum()),
               "direct_indexed": bool((hh.accounts.di_etf >= 0).any()), "lots": len(hh.lots),
               "start_value": v0, "start_taxable_value": vt0}
        for key, x in (("daily", daily[i]), ("one_shot", once[i])):
            row[key] = {**{k: x[k] for k in ("harvested", "gains_realized", "disallowed", "taxes_saved", "harvest_value",
                                              "tax", "trades", "days_traded", "days_run")},
                        "harvested_share": _ratio(x["harvested"], v0), "taxes_saved_share": _ratio(x["taxes_saved"], v0),
                        "harvest_value_share": _ratio(x["harvest_value"], v0),
                        "failures": x["failures"], "violations": x["violations"]}
        rows.append(row)
    groups = {"all": rows, "with_taxable_account": [r for r in rows if r["taxable_accounts"]],
              "direct_indexed": [r for r in rows if r["direct_indexed"]]}
    report = {
        "kind": "month",
        "study_id": req.study_id,
        "book": req.book,
        "book_as_of": book.as_of.isoformat(),
        "window": {"start": window.start.isoformat(), "end": window.end.isoformat(),
                   "trading_days": int(len(sp.dates) - 1), "benchmark": req.benchmark,
                   "benchmark_return": float(sp.benchmark_path[-1]),
                   "factor_implied": [str(market.symbol[i]) for i in np.flatnonzero(sp.implied)], "notes": list(sp.notes)},
        "sample": {"seed": req.seed, "buckets": buckets, "only": req.only, "households_in_buckets": len(hhs),
                   "rejected_accounts_in_buckets": len(rejected), "eligible": len(eligible), "households": len(sample)},
        "solver": req.solver,
        "workers": len(jobs),
        "average": {g: {"daily": _averages(rs, "daily"), "one_shot": _averages(rs, "one_shot")} for g, rs in groups.items()},
        "failures": {"daily": sum(len(r["daily"]["failures"]) for r in rows),
                     "one_shot": sum(len(r["one_shot"]["failures"]) for r in rows)},
        "violations": sum(len(r["daily"]["violations"]) + len(r["one_shot"]["violations"]) for r in rows),
        "firm_reference": {"harvested_share": FIRM_MONTH_HARVEST,
                           "what": "one firm's report: a month of daily harvesting in March 2020 was worth 3.5% of "
                                   "portfolio value on average"},
        "households": rows,
        "timings": {"prices": t_path, "days": t_days, "total": time.perf_counter() - t_start,
                    "household_days": len(sample) * len(sp.dates)},
    }
    if req.out:
        if not req.study_id:
            raise ScenarioError("an output location needs a study id")
        loc = open_uri(req.out, req.s3).child(req.study_id)
        loc.write_json("month.json", json_ready(report))
        report["uri"] = loc.uri
    return json_ready(report)


def json_ready(x):
    """JSON has no NaN or infinity: write null (:func:`rebalancer.jsonout.strict`)."""
    return jsonout.strict(x)


def _pct(x: float | None, d: int = 2) -> str:
    return "n/a" if x is None else f"{x * 100:.{d}f}%"


def format_month(rep: dict) -> str:
    """One screen of text for a month of harvesting."""
    w, s = rep["window"], rep["sample"]
    lines = [
        f"Month of harvesting {w['start']}..{w['end']}: {w['trading_days']} trading days after the start; "
        f"benchmark {w['benchmark']} {_pct(w['benchmark_return'])}",
        f"Sample     {s['households']} households ({s['only']}; seed {s['seed']}, buckets {s['buckets']}, "
        f"{s['eligible']} eligible); solver {rep['solver']}, {rep['workers']} worker(s)",
        f"{'':22}{'households':>10}  {'harvested':>17}  {'taxes saved':>17}  {'harvest value':>17}",
        f"{'':22}{'':>10}  {'daily / one-shot':>17}  {'daily / one-shot':>17}  {'daily / one-shot':>17}",
    ]
    for g, label in (("all", "all"), ("with_taxable_account", "with a taxable acct"), ("direct_indexed", "direct-indexed")):
        a = rep["average"][g]
        d, o = a["daily"], a["one_shot"]
        if not d["households"]:
            continue
        cells = "  ".join(f"{_pct(d[f + '_share_mean']):>8}/{_pct(o[f + '_share_mean']):<8}"
                          for f in ("harvested", "taxes_saved", "harvest_value"))
        lines.append(f"{label:<22}{d['households']:>10}  {cells}")
    lines.append(f"{'':22}(mean over households of each one's share of its starting value; value-weighted in the JSON)")
    firm = []
    for g, label in (("with_taxable_account", "households with a taxable account"), ("direct_indexed", "direct-indexed")):
        a = rep["average"][g]
        if a["daily"]["households"]:
            firm.append(f"{label}: daily {_pct(a['daily']['harvested_share_mean'])} vs one-shot "
                        f"{_pct(a['one_shot']['harvested_share_mean'])}")
    lines += [
        f"Firm       reported harvesting {_pct(rep['firm_reference']['harvested_share'], 1)} of portfolio value in a month "
        f"of daily harvesting in March 2020; here, losses harvested: " + ("; ".join(firm) or "no taxable households"),
        f"Checks     {rep['failures']['daily']} failed household-days, {rep['failures']['one_shot']} failed one-shot runs, "
        f"{rep['violations']} carry violations",
        f"Time       {rep['timings']['total']:.1f} s ({rep['timings']['household_days']} household-days)"
        + (f"; report {rep['uri']}/month.json" if rep.get("uri") else ""),
    ]
    for n in rep["window"]["notes"][:3]:
        lines.append(f"Note       {n}")
    return "\n".join(lines)
