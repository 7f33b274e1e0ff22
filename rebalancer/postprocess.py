"""From the convex solution to orders: whole shares, minimum trade size, budget and cash repair.

The convex problem trades dollars; an order is shares of one lot (sells) or of one security
in one account (buys). In this order:

1. **shares**: a lot sold almost in full is sold in full (fractional remainder included);
   otherwise sells round *down* to whole shares and buys to the *nearest* share, unless the
   account allows fractional shares (then 1e-6 share). A sale of a position in a traditional
   or Roth account is taken from its lots first-in-first-out (no tax there);
2. **minimum trade**: an (account, security, side) trade worth less than the account's
   ``min_trade`` is dropped, unless it is forced (divestment) or closes the position;
3. **budget repair**: if rounding pushed the run's realized gains over the budget, sales of
   the lots with the largest gain per share are cut, share by share;
4. **cash repair**: an account whose cash after trades fell under its reserve first cuts its
   largest buys, then sells more of its cheapest-to-sell lots (never a loss lot of a group it
   buys, never a never-sell position).

The objective of the result minus that of the convex solution is the cost of rounding,
reported with every household.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .household import Household
from .market import Market
from .problem import HouseholdProblem, LotTax, VarKind
from .taxlots import fifo_order

__all__ = ["Orders", "round_solution", "orders_to_x"]

_SHARE_EPS = 1e-9
# The variable kinds as plain ints: an int8 array compared with an IntEnum member takes 3 us,
# with an int 0.6 us (seven comparisons a household).
_LOT_SELL, _POSITION_SELL, _BUY = int(VarKind.LOT_SELL), int(VarKind.POSITION_SELL), int(VarKind.BUY)


@dataclass(frozen=True, eq=False)
class Orders:
    """sold : (L,) shares sold of each lot. buys : (A, n) shares bought per account and
    problem security. forced : (L,) lots whose sale is forced (divestment)."""
    sold: np.ndarray
    buys: np.ndarray
    forced: np.ndarray


def orders_to_x(p: HouseholdProblem, hh: Household, lt: LotTax, orders: Orders) -> np.ndarray:
    """The problem point (units of V) of ``orders``, to evaluate the objective after rounding."""
    x = np.zeros(p.n_vars)
    sold_value = orders.sold * lt.price
    j = np.flatnonzero(p.kind == _LOT_SELL)
    x[j] = sold_value[p.lot[j]] / p.value
    j = np.flatnonzero(p.kind == _POSITION_SELL)
    if len(j):
        # Value sold per (account, security) of the untaxed lots: bincount adds them in lot
        # order from 0.0, as a running sum per key would.
        n1 = len(p.securities) + 1
        key = hh.lots.account.astype(np.int64) * n1 + np.searchsorted(p.securities, hh.lots.security)
        l = np.flatnonzero(~lt.taxable & (orders.sold > 0))
        per = np.bincount(key[l], weights=sold_value[l], minlength=hh.n_accounts * n1)
        x[j] = per[p.account[j].astype(np.int64) * n1 + p.security[j]] / p.value
    j = np.flatnonzero(p.kind == _BUY)
    x[j] = orders.buys[p.account[j], p.security[j]] * p.price[p.security[j]] / p.value
    return x


def round_solution(market: Market, hh: Household, p: HouseholdProblem, x: np.ndarray, lt: LotTax,
                   min_weight: float = 1e-6) -> Orders:
    """Orders for the convex solution ``x`` of ``p`` (see the module docstring)."""
    acc, lots = hh.accounts, hh.lots
    V = p.value
    L, A, n = len(lots), hh.n_accounts, len(p.securities)
    frac_lot = acc.fractional[lots.account] if L else np.zeros(0, bool)
    sold = np.zeros(L)
    forced = np.zeros(L, bool)
    # Leaving less than the dust threshold in a lot or a position is selling it in full; a
    # buy under it is solver noise. The solver's own accuracy is far finer.
    dust = min_weight
    is_buy = p.kind == _BUY
    x = np.where(is_buy & (x < dust), 0.0, x)
    full_tol = dust

    # 1. shares (each lot has at most one variable)
    j = np.flatnonzero(p.kind == _LOT_SELL)
    l, xj, lbj, ubj = p.lot[j], x[j], p.lb[j], p.ub[j]
    forced[l[lbj > 0]] = True
    s = xj * V / lt.price[l]
    full = (lbj > 0) | _full(xj, ubj, full_tol) | (s >= lots.shares[l] - 1e-6)
    sold[l] = np.where(full, np.where(ubj > 0, lots.shares[l], 0.0),
                       np.where(xj >= dust, _round_down_all(s, frac_lot[l]), 0.0))
    # (account, security) of each lot; lots hold only the problem's securities.
    lot_loc = np.searchsorted(p.securities, lots.security)
    key = lots.account.astype(np.int64) * n + lot_loc
    pos = np.flatnonzero(p.kind == _POSITION_SELL)
    spans = []
    if len(pos):
        # The lots of each position, first in first out: FIFO order grouped by a stable sort
        # on the key, each position a slice (not a mask over all lots per position).
        order = fifo_order(lots.acquired, lots.lot_id)
        order = order[np.argsort(key[order], kind="stable")]
        okey = key[order]
        pkey = p.account[pos].astype(np.int64) * n + p.security[pos]
        spans = zip(pos.tolist(), np.searchsorted(okey, pkey, "left").tolist(),
                    np.searchsorted(okey, pkey, "right").tolist())
    for j, lo, hi in spans:
        a = int(p.account[j])
        mine = order[lo:hi]
        total = lots.shares[mine].sum()
        px = p.price[p.security[j]]
        if p.lb[j] > 0:
            forced[mine] = True
        s = x[j] * V / px
        if p.lb[j] > 0 or _full(x[j], p.ub[j], full_tol) or s >= total - 1e-6:
            s = total if p.ub[j] > 0 else 0.0
        elif x[j] < dust:
            s = 0.0
        else:
            s = _round_down(s, acc.fractional[a])
        for l in mine:
            take = min(lots.shares[l], s)
            sold[l] = take
            s -= take
            if s <= _SHARE_EPS:
                break
    buys = np.zeros((A, n))
    j = np.flatnonzero(is_buy)
    a, i = p.account[j], p.security[j]
    s = x[j] * V / p.price[i]
    fr = acc.fractional[a]
    shares = np.floor(s + 0.5)
    shares[fr] = np.round(s[fr], 6)
    buys[a, i] = shares

    # Net a buy and a sell of one security in one account (interior-point solutions leave
    # both a little above zero): keep the larger side, less the smaller.
    cost = np.where(lt.taxable, lt.priced * lt.g_eff, 0.0)
    selling = np.flatnonzero((sold > 0) & ~forced)
    sells_at = np.zeros(A * n, bool)
    sells_at[key[selling]] = True
    both = np.flatnonzero((buys.ravel() > 0) & sells_at)
    for a, i in zip(*np.unravel_index(both, buys.shape)):
        m = selling[key[selling] == a * n + i]
        m = m[sold[m] > 0]
        if len(m) == 0:
            continue
        sell_sh = float(sold[m].sum())
        if sell_sh <= buys[a, i]:
            sold[m] = 0.0
            buys[a, i] = _round_down(buys[a, i] - sell_sh, acc.fractional[a])
        else:
            left = buys[a, i]
            buys[a, i] = 0.0
            for l in m[np.argsort(-cost[m], kind="stable")]:  # give back the dearest sales first
                cut = min(sold[l], left)
                sold[l] = _round_down(sold[l] - cut, frac_lot[l])
                left -= cut
                if left <= _SHARE_EPS:
                    break

    # 2. minimum trade (and numerical dust), per (account, security, side)
    floor_usd = np.maximum(acc.min_trade, min_weight * V)
    K = A * n
    value = np.bincount(key, weights=sold * lt.price, minlength=K)
    traded = np.bincount(key, weights=sold > 0, minlength=K) > 0
    forced_any = np.bincount(key, weights=forced, minlength=K) > 0
    closes = np.bincount(key, weights=sold < lots.shares - _SHARE_EPS, minlength=K) == 0
    drop = traded & (value < np.repeat(floor_usd, n)) & ~forced_any & ~closes
    sold[drop[key]] = 0.0
    buys[(buys * p.price < floor_usd[:, None]) & (buys > 0)] = 0.0

    # 3. budget repair, 4. cash repair (twice: a cash fix can need a budget fix and back)
    room = p.budget * V if math.isfinite(p.budget) else math.inf
    for _ in range(2):
        _budget_repair(sold, forced, lots, lt, room, frac_lot)
        _cash_repair(market, hh, p, lt, sold, buys)
    return Orders(sold=sold, buys=buys, forced=forced)


def _full(x, ub, tol: float):
    """A sale of ``x`` out of ``ub`` that leaves less than ``tol`` (and is most of it);
    elementwise for arrays."""
    return (ub > 0) & (x >= ub - tol) & (x >= 0.5 * ub)


def _round_down(s: float, fractional: bool) -> float:
    if s <= 0:
        return 0.0
    return math.floor(s * 1e6 + 1e-6) / 1e6 if fractional else float(math.floor(s + 1e-6))


def _round_down_all(s: np.ndarray, fractional: np.ndarray) -> np.ndarray:
    """:func:`_round_down` of each element."""
    return np.where(s <= 0, 0.0, np.where(fractional, np.floor(s * 1e6 + 1e-6) / 1e6, np.floor(s + 1e-6)))


def _realized(sold, lt: LotTax) -> float:
    return float(np.sum(np.where(lt.taxable, sold * lt.price * lt.g_eff, 0.0)))


def _budget_repair(sold, forced, lots, lt: LotTax, room: float, frac_lot) -> None:
    if not math.isfinite(room):
        return
    excess = _realized(sold, lt) - room
    if excess <= 0.005:
        return
    per_share = lt.price * lt.g_eff
    cand = np.flatnonzero(lt.taxable & (sold > 0) & (per_share > 0) & ~forced)
    for l in cand[np.argsort(-per_share[cand], kind="stable")]:
        if excess <= 0.005:
            break
        cut = excess / per_share[l]
        cut = min(sold[l], cut if frac_lot[l] else math.ceil(cut - 1e-9))
        new = sold[l] - cut
        sold[l] = new if frac_lot[l] else float(math.floor(new + 1e-9))
        excess = _realized(sold, lt) - room


def _cash_repair(market: Market, hh: Household, p: HouseholdProblem, lt: LotTax, sold, buys) -> None:
    acc, lots = hh.accounts, hh.lots
    for a in range(hh.n_accounts):
        in_a = lots.account == a

        def shortfall():
            cash = acc.cash[a] + float(np.sum(sold[in_a] * lt.price[in_a])) - float(buys[a] @ p.price)
            return acc.reserve[a] - cash
        short = shortfall()
        if short <= 1e-6:
            continue
        for i in np.argsort(-(buys[a] * p.price), kind="stable"):
            if short <= 1e-6 or buys[a, i] <= 0:
                break
            k = short / p.price[i]
            k = min(buys[a, i], k if acc.fractional[a] else math.ceil(k - 1e-9))
            buys[a, i] -= k
            short = shortfall()
        if short <= 1e-6:
            continue
        # Sell more: cheapest tax first; never a loss lot of a group the household buys.
        sec_group = market.wash_group[p.securities]
        bought_groups = np.unique(sec_group[buys.sum(axis=0) > 0])
        never_sell = acc.never_sell[a]
        lot_group = market.wash_group[lots.security]
        ok = in_a & (sold < lots.shares - _SHARE_EPS) & ~np.isin(lots.security, never_sell)
        ok &= ~((lt.gain < 0) & lt.taxable & np.isin(lot_group, bought_groups))
        cost = np.where(lt.taxable, lt.priced * lt.g_eff, 0.0)
        # Sales that realize no gain first (IRA positions, losses), then gains, cheapest first:
        # a gain here can only overrun the budget by what whole shares force.
        cand = np.flatnonzero(ok)
        cand = cand[np.lexsort((cost[cand], cost[cand] > 0))]
        for l in cand:
            if short <= 1e-6:
                break
            k = short / lt.price[l]
            k = min(lots.shares[l] - sold[l], k if acc.fractional[a] else math.ceil(k - 1e-9))
            sold[l] += k
            short = shortfall()
