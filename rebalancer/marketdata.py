"""The S&P 500 price history shipped with the package (see data/PROVENANCE.md).

Closes are stored as traded; :func:`load_history` returns them split-adjusted to the as-of
date (a lot's shares and basis are split-adjusted the same way, so basis and price compare)
and daily total returns that include dividends.
"""
from __future__ import annotations

import csv
import datetime as dt
import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pyarrow.parquet as pq

__all__ = ["PriceHistory", "load_history", "sector_table", "FIRST_DATE", "LAST_DATE"]

FIRST_DATE = dt.date(2005, 1, 3)
LAST_DATE = dt.date(2021, 4, 21)


@dataclass(frozen=True)
class PriceHistory:
    """Daily history of the shipped stocks up to an as-of date.

    dates : ndarray of shape (T,), datetime64[D], trading days, ``dates[-1]`` is the as-of date.
    symbols : tuple of S tickers.
    close : ndarray of shape (T, S), close split-adjusted to the as-of date; NaN when not listed.
    total_return : ndarray of shape (T, S), daily total return (price + dividend) from the
        previous day; NaN on the first listed day and before.
    dividends_12m : ndarray of shape (S,), split-adjusted dividends paid in the last 365 days.
    """
    dates: np.ndarray
    symbols: tuple[str, ...]
    close: np.ndarray
    total_return: np.ndarray
    dividends_12m: np.ndarray

    @property
    def as_of(self) -> dt.date:
        return self.dates[-1].astype(dt.date)


def _data_file(name: str):
    return resources.files("rebalancer.data").joinpath(name)


@functools.lru_cache(maxsize=4)
def _raw():
    with _data_file("sp500_close.parquet").open("rb") as f:
        wide = pq.read_table(f)
    with _data_file("sp500_events.parquet").open("rb") as f:
        ev = pq.read_table(f)
    dates = wide["date"].to_numpy().astype("datetime64[D]")
    symbols = tuple(wide.column_names[1:])
    # The extract stores float32; closes are quoted to at most 4 decimals, so rounding restores them.
    close = np.round(np.column_stack([wide[s].to_numpy(zero_copy_only=False) for s in symbols]).astype(np.float64), 4)
    col = {s: i for i, s in enumerate(symbols)}
    e_t = np.searchsorted(dates, ev["date"].to_numpy().astype("datetime64[D]"))
    e_s = np.array([col[s] for s in ev["symbol"].to_pylist()], dtype=np.int64)
    div = np.zeros_like(close)
    split = np.ones_like(close)
    div[e_t, e_s] = ev["dividend"].to_numpy()
    split[e_t, e_s] = ev["split"].to_numpy()
    return dates, symbols, close, div, split


def load_history(as_of: dt.date | None = None) -> PriceHistory:
    """History up to ``as_of`` (default: the last day shipped), split-adjusted to that day.

    Raises ``ValueError`` if the as-of date is outside the shipped range or not a trading day.
    """
    dates, symbols, close, div, split = _raw()
    as_of = as_of or LAST_DATE
    t0 = int(np.searchsorted(dates, np.datetime64(as_of, "D")))
    if t0 >= len(dates) or dates[t0] != np.datetime64(as_of, "D"):
        raise ValueError(f"as-of date {as_of} is not a trading day in the shipped history "
                         f"({FIRST_DATE} .. {LAST_DATE})")
    dates, close, div, split = dates[: t0 + 1], close[: t0 + 1], div[: t0 + 1], split[: t0 + 1]
    # factor[t] = product of split coefficients strictly after t, up to as-of: dividing a close
    # (or a dividend) of day t by it expresses it in today's shares.
    factor = np.cumprod(split[::-1], axis=0)[::-1]
    factor = np.vstack([factor[1:], np.ones((1, factor.shape[1]))])
    adj = close / factor
    adj_div = div / factor
    tr = np.full_like(adj, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        tr[1:] = (adj[1:] + adj_div[1:]) / adj[:-1] - 1.0
    one_year = dates > dates[-1] - np.timedelta64(365, "D")
    return PriceHistory(dates, symbols, adj, tr, adj_div[one_year].sum(axis=0))


@functools.lru_cache(maxsize=1)
def sector_table() -> dict[str, tuple[str, str, str]]:
    """symbol -> (name, GICS sector, GICS sub-industry) for the symbols that have one."""
    with _data_file("sp500_sectors.csv").open("r", newline="") as f:
        return {r["symbol"]: (r["name"], r["sector"], r["sub_industry"]) for r in csv.DictReader(f)}
