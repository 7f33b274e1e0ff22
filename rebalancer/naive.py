"""The tax-naive counterfactual (DESIGN section 6): what a custodian's default rebalance does.

Each account is brought to its own target (the same targets the household blend is made
of, so the household lands on the same target), selling first-in-first-out, with no
harvesting, no deferral and no asset location. It keeps the rules a custodian cannot break:
never-sell lists, no buys of screened, never-buy or wash-blocked securities, and cash after
trades at least the reserve (buys scaled down when a kept position leaves too little).

Its tax uses the same accounting as the optimizer's: each lot at its own rate, and a loss
gets no benefit when its group is bought in this run or was bought in the last 30 days.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .household import TAXABLE, Household
from .market import Market
from .problem import HouseholdProblem, VarKind
from .taxlots import fifo_order

__all__ = ["NaiveRebalance", "naive_rebalance"]


@dataclass(frozen=True, eq=False)
class NaiveRebalance:
    """x : (N,) the counterfactual trades as a point of the household problem (units of V).
    lot_sold : (L,) value sold of each lot, USD. bought : dict (account, position) -> USD.
    loss_disallowed : (L,) lots whose loss the naive trades would have disallowed.
    """
    x: np.ndarray
    lot_sold: np.ndarray
    bought: dict
    loss_disallowed: np.ndarray


def naive_rebalance(market: Market, hh: Household, p: HouseholdProblem) -> NaiveRebalance:
    """The naive trades of ``hh``, as a point of ``p`` (whose account targets it follows)."""
    acc, lots = hh.accounts, hh.lots
    V = p.value
    price = market.price[lots.security]
    lot_value = lots.shares * price
    values = np.bincount(lots.account, weights=lot_value, minlength=hh.n_accounts) + acc.cash
    lot_sold = np.zeros(len(lots))
    bought: dict[tuple[int, int], float] = {}
    jb = np.flatnonzero(p.kind == VarKind.BUY)
    buy_var = dict(zip(zip(p.account[jb].tolist(), p.securities[p.security[jb]].tolist()), jb.tolist()))
    order = fifo_order(lots.acquired, lots.lot_id)
    for a in range(hh.n_accounts):
        pos, w = p.account_targets[a]
        investable = max(values[a] - acc.reserve[a], 0.0)
        desired = dict(zip(pos.tolist(), (investable * w).tolist()))
        in_a = order[lots.account[order] == a]
        # value held per security, in order of first appearance (sums in FIFO order)
        sec_a = lots.security[in_a]
        u, first, inv = np.unique(sec_a, return_index=True, return_inverse=True)
        sums = np.bincount(inv, weights=lot_value[in_a], minlength=len(u))
        by_first = np.argsort(first, kind="stable")
        held: dict[int, float] = dict(zip(u[by_first].tolist(), sums[by_first].tolist()))
        never_sell = set(acc.never_sell[a].tolist())
        cash = acc.cash[a]
        for s, h in held.items():
            excess = h - desired.get(s, 0.0)
            if excess <= 0 or s in never_sell:
                continue
            for l in in_a[lots.security[in_a] == s]:  # FIFO
                take = min(lot_value[l], excess)
                lot_sold[l] = take
                excess -= take
                cash += take
                if excess <= 1e-9:
                    break
        wants = {s: d - held.get(s, 0.0) for s, d in desired.items() if d - held.get(s, 0.0) > 0}
        wants = {s: v for s, v in wants.items() if (a, s) in buy_var}
        total = sum(wants.values())
        room = cash - acc.reserve[a]
        scale = min(1.0, room / total) if total > 0 else 0.0
        for s, v in wants.items():
            if v * scale > 0:
                bought[(a, s)] = v * scale

    # In-run wash sales of the naive trades: a loss sale of a group it also buys is disallowed.
    bought_groups = [int(market.wash_group[s]) for (_, s) in bought]
    run_disallowed = (lot_sold > 0) & np.isin(market.wash_group[lots.security], bought_groups)

    x = np.zeros(p.n_vars)
    jl = np.flatnonzero(p.kind == VarKind.LOT_SELL)
    lot_var = dict(zip(p.lot[jl].tolist(), jl.tolist()))
    jp = np.flatnonzero(p.kind == VarKind.POSITION_SELL)
    pos_var = dict(zip(zip(p.account[jp].tolist(), p.securities[p.security[jp]].tolist()), jp.tolist()))
    for l in np.flatnonzero(lot_sold > 0):
        if acc.account_type[lots.account[l]] == TAXABLE:
            x[lot_var[int(l)]] += lot_sold[l] / V
        else:
            x[pos_var[(int(lots.account[l]), int(lots.security[l]))]] += lot_sold[l] / V
    for (a, s), v in bought.items():
        x[buy_var[(a, s)]] += v / V
    return NaiveRebalance(x=x, lot_sold=lot_sold, bought=bought, loss_disallowed=p.lots.disallowed | run_disallowed)
