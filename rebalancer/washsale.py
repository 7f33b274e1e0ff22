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
        if not len(self.blocked_groups):  # the usual case; np.isin takes 15 us even then
            return np.zeros(np.shape(groups), bool)
        return np.isin(groups, self.blocked_groups)


def wash_state(market: Market, hh: Household, date, window: int = WASH_WINDOW_DAYS) -> WashState:
    """The wash-sale state of household ``hh`` for a run on ``date``."""
    date = np.datetime64(date, "D")
    rt, lots = hh.recent, hh.lots
    if not len(rt):  # most households (55% of the 10k book's have no recent trade)
        return WashState(blocked_groups=np.zeros(0, np.int64), loss_disallowed=np.zeros(len(lots), bool))
    start = date - np.timedelta64(window, "D")
    live = (rt.date >= start) & (rt.date <= date)
    group = market.wash_group[rt.security]
    loss_sale = live & ~rt.is_buy & (rt.realized_gain < 0)  # NaN (a buy's) is no loss
    blocked = np.unique(group[loss_sale])

    disallowed = np.zeros(len(lots), bool)
    buys = np.flatnonzero(live & rt.is_buy)
    if len(buys) and len(lots):
        # A lot's loss is disallowed when its group had a buy other than the one that created
        # the lot (same account, security and date: not a purchase "replacing" the lot's own
        # shares): more buys of its group than of its own (account, security, date).
        lot_group = market.wash_group[lots.security]
        n_groups = int(max(lot_group.max(), group[buys].max())) + 1
        of_group = np.bincount(group[buys], minlength=n_groups)[lot_group]
        # (account, security, day in the window) as one integer; a lot acquired outside the
        # window (or never: NaT) has no own buy.
        n_acc = int(max(lots.account.max(), rt.account[buys].max())) + 1
        in_window = (lots.acquired >= start) & (lots.acquired <= date)
        lot_day = np.where(in_window, lots.acquired - start, np.timedelta64(0, "D")).astype(np.int64)
        lot_key = np.where(in_window, (lot_day * n_acc + lots.account) * market.n + lots.security, -1)
        buy_day = (rt.date[buys] - start).astype(np.int64)
        own_key = (buy_day * n_acc + rt.account[buys]) * market.n + rt.security[buys]
        own_key = np.sort(own_key)
        of_own = np.searchsorted(own_key, lot_key, "right") - np.searchsorted(own_key, lot_key, "left")
        disallowed = of_group > of_own
    return WashState(blocked_groups=blocked, loss_disallowed=disallowed)
