"""Tax rules of lots: holding period, rates, lot order, and the year's tax as filed.

Sources: IRC section 1222 (short- and long-term: held more than one year), section 1211(b) and
1212(b) (capital losses: $3,000 a year against ordinary income, the rest carried forward with
its character), IRS Publication 550 (netting order; holding period starts the day after
acquisition).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "anniversary", "is_long_term", "days_to_long_term", "lot_rates", "tax_cost_order", "fifo_order",
    "wait_priced_rates", "YearTax", "year_tax", "ORDINARY_LOSS_LIMIT",
]

ORDINARY_LOSS_LIMIT = 3000.0  # IRC 1211(b): net capital loss deductible against ordinary income per year


def anniversary(acquired: np.ndarray) -> np.ndarray:
    """First anniversary of ``acquired`` (datetime64[D]). A Feb 29 acquisition's anniversary
    is Mar 1 of the next year (one day later than some readings: the conservative side)."""
    acquired = np.asarray(acquired, "datetime64[D]")
    month = acquired.astype("datetime64[M]")
    day = acquired - month.astype("datetime64[D]")
    return (month + 12).astype("datetime64[D]") + day


def is_long_term(acquired: np.ndarray, date) -> np.ndarray:
    """True where a sale on ``date`` is long-term: held more than one year, i.e. sold after the
    first anniversary of the acquisition."""
    return np.datetime64(date, "D") > anniversary(acquired)


def days_to_long_term(acquired: np.ndarray, date) -> np.ndarray:
    """Days from ``date`` until a sale becomes long-term (0 when it already is)."""
    d = (anniversary(acquired) + np.timedelta64(1, "D") - np.datetime64(date, "D")).astype(np.int64)
    return np.maximum(d, 0)


def lot_rates(long_term: np.ndarray, short_term_rate: float, long_term_rate: float, state_rate: float) -> np.ndarray:
    """Marginal tax rate of each lot's gain: federal short- or long-term rate plus state."""
    return np.where(long_term, long_term_rate, short_term_rate) + state_rate


def wait_priced_rates(rate: np.ndarray, gain_per_dollar: np.ndarray, days_to_lt: np.ndarray,
                      short_term_rate: float, long_term_rate: float, state_rate: float) -> np.ndarray:
    """Rates the optimizer prices lot sales at: a lot's own rate, except short-term gains.

    A short-term gain that turns long-term in ``d`` days saves ``(t_ST - t_LT) g`` per dollar
    by waiting, at the cost of ``d`` more days of drift. The risk term of the objective is an
    annual variance, so the saving is compared with it as an annual rate: the optimizer prices
    the sale at ``t_LT + (t_ST - t_LT) * 365 / d`` (``= t_ST`` for a lot bought today, growing
    without bound as the lot nears its anniversary). A gain a few days from long-term is
    therefore held unless a hard constraint (cash reserve, forced divestment) needs it; reports
    always use the true rate.
    """
    t_st = short_term_rate + state_rate
    t_lt = long_term_rate + state_rate
    st_gain = (gain_per_dollar > 0) & (days_to_lt > 0)
    wait = t_lt + (t_st - t_lt) * 365.0 / np.maximum(days_to_lt, 1)
    return np.where(st_gain, np.maximum(wait, rate), rate)


def tax_cost_order(gain_per_dollar: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Lot order from cheapest to sell to dearest: tax per dollar ``rate * g`` ascending
    (largest losses first, then smallest gains; at equal tax, long-term first because its rate
    is lower for a given gain). Stable."""
    return np.argsort(rate * gain_per_dollar, kind="stable")


def fifo_order(acquired: np.ndarray, lot_id: np.ndarray) -> np.ndarray:
    """First in, first out: oldest acquisition first, then lot id (the custodian default)."""
    return np.lexsort((lot_id, acquired))


@dataclass(frozen=True)
class YearTax:
    """The year's capital-gains tax as filed (USD).

    net_st, net_lt : net short- and long-term gain after netting and carry-forwards.
    ordinary_offset : net loss deducted against ordinary income (<= 3,000).
    carryforward_st, carryforward_lt : losses carried to next year.
    tax : federal plus state tax on the net gains, minus the value of the ordinary offset.
    """
    net_st: float
    net_lt: float
    ordinary_offset: float
    carryforward_st: float
    carryforward_lt: float
    tax: float


def year_tax(realized_st: float, realized_lt: float, carry_st: float, carry_lt: float,
             short_term_rate: float, long_term_rate: float, state_rate: float) -> YearTax:
    """Tax of a year's realized gains the way the return is filed (Publication 550).

    Carried losses join their own character first; then short-term nets against short-term and
    long-term against long-term; a net loss in one offsets a net gain in the other; a remaining
    net loss offsets up to $3,000 of ordinary income and the rest carries forward, short-term
    portion first. Net short-term gain is taxed at the ordinary rate, net long-term at the
    long-term rate, both plus state.
    """
    st = realized_st - carry_st
    lt = realized_lt - carry_lt
    if st < 0 <= lt:
        lt, st = lt + st, 0.0
        if lt < 0:
            st, lt = lt, 0.0  # the remaining loss keeps its short-term character
    elif lt < 0 <= st:
        st, lt = st + lt, 0.0
        if st < 0:
            lt, st = st, 0.0
    t_st, t_lt = short_term_rate + state_rate, long_term_rate + state_rate
    if st >= 0 and lt >= 0:
        return YearTax(st, lt, 0.0, 0.0, 0.0, st * t_st + lt * t_lt)
    loss = -(min(st, 0.0) + min(lt, 0.0))
    offset = min(loss, ORDINARY_LOSS_LIMIT)
    # The deduction uses short-term loss first (Schedule D capital loss carryover worksheet).
    st_loss, lt_loss = -min(st, 0.0), -min(lt, 0.0)
    used_st = min(st_loss, offset)
    used_lt = offset - used_st
    return YearTax(min(st, 0.0), min(lt, 0.0), offset, st_loss - used_st, lt_loss - used_lt, -offset * t_st)
