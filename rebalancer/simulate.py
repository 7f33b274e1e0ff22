"""Carry a household from one run to the next: apply its trades, roll the tax year.

What a custodian's books do between two daily runs, for multi-day studies (a transition over
years, a month of crisis harvesting) without a book round trip:

- sold shares leave their lots (a lot sold out disappears); each buy opens a lot at the
  run's price, acquired on the run date, with a new lot id;
- cash moves by the trades' value; the deposit has been invested (set to 0);
- the run's realized gains join year-to-date (a disallowed loss counts 0); each trade joins
  the recent trades, and trades older than the wash window's 31 days drop out;
- on the first run of a new calendar year the closing year is filed
  (:func:`rebalancer.taxlots.year_tax`): its unused losses become the carry-forwards and the
  year-to-date figures restart at 0.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .household import Household, Lots, RecentTrades
from .optimize import HouseholdResult
from .taxlots import year_tax

__all__ = ["apply_result", "roll_year"]


def apply_result(hh: Household, result: HouseholdResult, date) -> Household:
    """The household after ``result``'s trades, executed on ``date`` at the trades' prices."""
    date = np.datetime64(date, "D")
    t = result.trades
    lots = hh.lots
    shares = lots.shares.copy()
    sells = np.flatnonzero(~t.is_buy)
    np.subtract.at(shares, t.lot[sells], t.shares[sells])
    keep = shares > 1e-9
    buys = np.flatnonzero(t.is_buy)
    next_id = (int(lots.lot_id.max()) + 1) if len(lots) else 1
    new_lots = Lots(
        lot_id=np.concatenate([lots.lot_id[keep], next_id + np.arange(len(buys), dtype=np.int64)]),
        account=np.concatenate([lots.account[keep], t.account[buys]]),
        security=np.concatenate([lots.security[keep], t.security[buys]]),
        shares=np.concatenate([shares[keep], t.shares[buys]]),
        cost_basis=np.concatenate([lots.cost_basis[keep], t.price[buys]]),
        acquired=np.concatenate([lots.acquired[keep], np.full(len(buys), date)]),
    )
    flow = np.bincount(t.account, weights=np.where(t.is_buy, -t.value, t.value), minlength=hh.n_accounts)
    accounts = dataclasses.replace(hh.accounts, cash=np.maximum(hh.accounts.cash + flow, 0.0),
                                   deposit=np.zeros(hh.n_accounts))

    rt = hh.recent
    live = rt.date >= date - np.timedelta64(30, "D")
    taxable_sell = ~t.is_buy & (hh.accounts.account_type[t.account] == 0)
    gain = np.where(t.is_buy, np.nan, t.realized_gain)  # an IRA sale records 0: never a wash-sale loss
    recent = RecentTrades(
        account=np.concatenate([rt.account[live], t.account]),
        security=np.concatenate([rt.security[live], t.security]),
        date=np.concatenate([rt.date[live], np.full(len(t), date)]),
        is_buy=np.concatenate([rt.is_buy[live], t.is_buy]),
        shares=np.concatenate([rt.shares[live], t.shares]),
        price=np.concatenate([rt.price[live], t.price]),
        realized_gain=np.concatenate([rt.realized_gain[live], gain]),
    )
    counted = taxable_sell & ~t.loss_disallowed
    st = float(np.sum(t.realized_gain[counted & ~t.long_term]))
    lt = float(np.sum(t.realized_gain[counted & t.long_term]))
    return dataclasses.replace(hh, accounts=accounts, lots=new_lots, recent=recent,
                               ytd_realized_st=hh.ytd_realized_st + st, ytd_realized_lt=hh.ytd_realized_lt + lt)


def roll_year(hh: Household) -> Household:
    """File the closing year: carry its unused losses forward and restart year-to-date."""
    y = year_tax(hh.ytd_realized_st, hh.ytd_realized_lt, hh.loss_carryforward_st, hh.loss_carryforward_lt,
                 hh.short_term_rate, hh.long_term_rate, hh.state_rate)
    return dataclasses.replace(hh, ytd_realized_st=0.0, ytd_realized_lt=0.0,
                               # to the cent and never below 0: rounding in year_tax can leave -1e-14
                               loss_carryforward_st=max(round(y.carryforward_st, 2), 0.0),
                               loss_carryforward_lt=max(round(y.carryforward_lt, 2), 0.0))
