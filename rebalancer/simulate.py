"""Carry a household from one run to the next: apply its trades, roll the tax year.

What a custodian's books do between two daily runs, for multi-day studies (a transition over
years, a month of crisis harvesting) without a book round trip:

- sold shares leave their lots (a lot sold out disappears); each buy opens a lot at the
  run's price, acquired on the run date, with a new lot id;
- wash sales (:mod:`rebalancer.washsale`, ``result.wash``): each loss deferred into a taxable
  replacement moves into the basis of the matched replacement shares (IRC 1091(d), Treas. Reg.
  1.1091-2), and their holding period takes in the sold shares' (IRC 1223(3),
  :func:`rebalancer.washsale.tacked_acquired`). The replacement lot is the lot of the buy's
  account and security acquired on its date, the first by lot id when several are. A lot
  adjusted in part is split: the matched shares go to a new lot id, the rest keep theirs. A loss
  destroyed by an IRA or Roth replacement changes no basis (Rev. Rul. 2008-5). Either way the
  replacement buy's shares are marked ``matched`` so they disallow no other loss;
- cash moves by the trades' value; the deposit has been invested (set to 0);
- the run's allowed gains join year-to-date (realized gain less the disallowed loss); each
  trade joins the recent trades, and trades older than the wash window's 31 days drop out. A
  sale in an IRA or Roth records its gain against the position's basis there (taxed never, a
  loss only to ``OptimizerSettings.ira_loss_blocks``);
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
from .washsale import tacked_acquired

__all__ = ["apply_result", "roll_year"]


def apply_result(hh: Household, result: HouseholdResult, date) -> Household:
    """The household after ``result``'s trades, executed on ``date`` at the trades' prices."""
    date = np.datetime64(date, "D")
    t = result.trades
    lots = hh.lots
    shares = lots.shares.copy()
    sells = np.flatnonzero(~t.is_buy)
    np.subtract.at(shares, t.lot[sells], t.shares[sells])
    buys = np.flatnonzero(t.is_buy)
    next_id = (int(lots.lot_id.max()) + 1) if len(lots) else 1
    # Every lot after the trades (sold-out ones too, dropped at the end), then the buys' lots.
    lot_id = np.concatenate([lots.lot_id, next_id + np.arange(len(buys), dtype=np.int64)])
    account = np.concatenate([lots.account, t.account[buys]])
    security = np.concatenate([lots.security, t.security[buys]])
    held = np.concatenate([shares, t.shares[buys]])
    basis = np.concatenate([lots.cost_basis, t.price[buys]])
    acquired = np.concatenate([lots.acquired, np.full(len(buys), date)])
    split = _carry_wash(hh, result.wash, date, len(lots), lot_id, account, security, held, basis, acquired,
                        next_id + len(buys))
    keep = held > 1e-9
    new_lots = Lots(lot_id=np.concatenate([lot_id[keep], split["lot_id"]]),
                    account=np.concatenate([account[keep], split["account"]]),
                    security=np.concatenate([security[keep], split["security"]]),
                    shares=np.concatenate([held[keep], split["shares"]]),
                    cost_basis=np.concatenate([basis[keep], split["cost_basis"]]),
                    acquired=np.concatenate([acquired[keep], split["acquired"]]).astype("datetime64[D]"))
    flow = np.bincount(t.account, weights=np.where(t.is_buy, -t.value, t.value), minlength=hh.n_accounts)
    accounts = dataclasses.replace(hh.accounts, cash=np.maximum(hh.accounts.cash + flow, 0.0),
                                   deposit=np.zeros(hh.n_accounts))

    rt = hh.recent
    taxable = hh.accounts.account_type[t.account] == 0
    taxable_sell = ~t.is_buy & taxable
    # A sale in an IRA records its gain against the position's basis: never a tax loss, but what
    # the conservative rule (ira_loss_blocks) reads.
    lot_basis = lots.cost_basis[np.maximum(t.lot, 0)] if len(lots) else np.zeros(len(t))
    gain = np.where(t.is_buy, np.nan, np.where(taxable, t.realized_gain, t.shares * (t.price - lot_basis)))
    matched = rt.matched.copy() if rt.matched is not None else np.zeros(len(rt))
    run_matched = np.zeros(len(t))
    w = result.wash
    if len(w):
        old = w.replacement >= 0
        np.add.at(matched, w.replacement[old], w.shares[old])
        np.add.at(run_matched, buys[-1 - w.replacement[~old]], w.shares[~old])
    live = rt.date >= date - np.timedelta64(30, "D")
    recent = RecentTrades(
        account=np.concatenate([rt.account[live], t.account]),
        security=np.concatenate([rt.security[live], t.security]),
        date=np.concatenate([rt.date[live], np.full(len(t), date)]),
        is_buy=np.concatenate([rt.is_buy[live], t.is_buy]),
        shares=np.concatenate([rt.shares[live], t.shares]),
        price=np.concatenate([rt.price[live], t.price]),
        realized_gain=np.concatenate([rt.realized_gain[live], gain]),
        matched=np.concatenate([matched[live], run_matched]),
    )
    allowed = np.where(taxable_sell, t.realized_gain - t.disallowed_loss, 0.0)
    st = float(np.sum(allowed[taxable_sell & ~t.long_term]))
    lt = float(np.sum(allowed[taxable_sell & t.long_term]))
    return dataclasses.replace(hh, accounts=accounts, lots=new_lots, recent=recent,
                               ytd_realized_st=hh.ytd_realized_st + st, ytd_realized_lt=hh.ytd_realized_lt + lt)


def _carry_wash(hh: Household, wash, date, n_old: int, lot_id, account, security, held, basis, acquired,
                next_id: int) -> dict:
    """Move each deferred loss of ``wash`` into its replacement shares (in place on ``held``,
    ``basis`` and ``acquired``, the lots after the trades, the run's buys' lots from ``n_old``
    on). Returns the lots split off, as columns."""
    out = {k: [] for k in ("lot_id", "account", "security", "shares", "cost_basis", "acquired")}
    adjusted = np.zeros(len(held), bool)  # lots already holding a deferral: no other pair's
    rt = hh.recent
    for j in np.flatnonzero(~wash.destroyed).tolist():
        r = int(wash.replacement[j])
        if r >= 0:
            cand = np.flatnonzero((account[:n_old] == rt.account[r]) & (security[:n_old] == rt.security[r])
                                  & (acquired[:n_old] == rt.date[r]) & ~adjusted[:n_old] & (held[:n_old] > 1e-9))
            cand = cand[np.argsort(lot_id[cand], kind="stable")]
        else:
            cand = np.array([n_old + (-1 - r)])
        m = float(wash.shares[j])
        per_share = -float(wash.loss[j]) / m  # the loss per share, added to the replacement's basis
        sold_acq = hh.lots.acquired[wash.lot[j]]
        for c in cand.tolist():
            if m <= 1e-9:
                break
            take = min(m, float(held[c]))
            new_basis = basis[c] + per_share
            new_acq = tacked_acquired(acquired[c], sold_acq, date)
            if take >= held[c] - 1e-9:  # the whole lot: adjusted in place, its id kept
                basis[c], acquired[c], adjusted[c] = new_basis, new_acq, True
            else:
                held[c] -= take
                for k, v in (("lot_id", next_id), ("account", account[c]), ("security", security[c]), ("shares", take),
                             ("cost_basis", new_basis), ("acquired", new_acq)):
                    out[k].append(v)
                next_id += 1
            m -= take
    return {"lot_id": np.array(out["lot_id"], np.int64), "account": np.array(out["account"], np.int64),
            "security": np.array(out["security"], np.int64), "shares": np.array(out["shares"], float),
            "cost_basis": np.array(out["cost_basis"], float),
            "acquired": np.array(out["acquired"], "datetime64[D]")}


def roll_year(hh: Household) -> Household:
    """File the closing year: carry its unused losses forward and restart year-to-date."""
    y = year_tax(hh.ytd_realized_st, hh.ytd_realized_lt, hh.loss_carryforward_st, hh.loss_carryforward_lt,
                 hh.short_term_rate, hh.long_term_rate, hh.state_rate)
    return dataclasses.replace(hh, ytd_realized_st=0.0, ytd_realized_lt=0.0,
                               # to the cent and never below 0: rounding in year_tax can leave -1e-14
                               loss_carryforward_st=max(round(y.carryforward_st, 2), 0.0),
                               loss_carryforward_lt=max(round(y.carryforward_lt, 2), 0.0))
