"""Wash-sale rules across a household (IRC section 1091; Rev. Rul. 2008-5 for IRAs).

A loss on a sale is disallowed when substantially identical securities (one *wash group*:
a stock alone, or all ETFs on one index) are bought within 30 days before or after the sale,
in any account of the household, IRAs included (a repurchase in an IRA destroys the loss for
good). For one run on date D this gives three rules:

1. **blocked buys**: no buy of a group that had a loss sale in the last 30 days anywhere in
   the household. The engine applies this to loss sales in every account, IRAs included:
   the household is one portfolio and a desk reads "sold at a loss 10 days ago" the same way
   whatever the account (conservative);
2. **no loss benefit**: a taxable lot of a group bought in the last 30 days (by a buy other
   than the one that created the lot itself) gets no tax benefit for a loss;
3. **in-run exclusivity**: in one run, never both buy a group and sell a lot of it at a loss.
   That one is not convex; :mod:`rebalancer.optimize` fixes each group's direction.

Buys and sells of the run itself then open the windows of the next 30 days' runs through
``recent_trades``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .household import Household
from .market import Market

__all__ = ["WASH_WINDOW_DAYS", "WashState", "wash_state"]

WASH_WINDOW_DAYS = 30


@dataclass(frozen=True, eq=False)
class WashState:
    """blocked_groups : sorted wash-group codes no account may buy today.
    loss_disallowed : bool (L,) per lot of the household: a loss on it would be disallowed.
    """
    blocked_groups: np.ndarray
    loss_disallowed: np.ndarray

    def blocked(self, groups: np.ndarray) -> np.ndarray:
        return np.isin(groups, self.blocked_groups)


def wash_state(market: Market, hh: Household, date, window: int = WASH_WINDOW_DAYS) -> WashState:
    """The wash-sale state of household ``hh`` for a run on ``date``."""
    date = np.datetime64(date, "D")
    rt = hh.recent
    start = date - np.timedelta64(window, "D")
    live = (rt.date >= start) & (rt.date <= date)
    group = market.wash_group[rt.security] if len(rt) else np.empty(0, np.int64)
    loss_sale = live & ~rt.is_buy & (np.nan_to_num(rt.realized_gain, nan=0.0) < 0)
    blocked = np.unique(group[loss_sale])

    lots = hh.lots
    disallowed = np.zeros(len(lots), bool)
    buys = np.flatnonzero(live & rt.is_buy)
    if len(buys) and len(lots):
        lot_group = market.wash_group[lots.security]
        for b in buys:
            g = group[b]
            same = lot_group == g
            if not same.any():
                continue
            # The buy that created a lot is not a purchase "replacing" that lot's own shares.
            own = same & (lots.account == rt.account[b]) & (lots.security == rt.security[b]) & (lots.acquired == rt.date[b])
            disallowed |= same & ~own
    return WashState(blocked_groups=blocked, loss_disallowed=disallowed)
