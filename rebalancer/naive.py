"""The tax-naive counterfactual (DESIGN section 6): what a custodian's default rebalance does.

Each account is brought to its own target (the same targets the household blend is made
of, so the household lands on the same target), selling first-in-first-out, with no
harvesting, no deferral and no asset location. It keeps the rules a custodian cannot break:
never-sell lists, no buys of screened, never-buy or wash-blocked securities, and cash after
trades at least the reserve (buys scaled down when a kept position leaves too little).

Its tax uses the same accounting as the optimizer's: each lot at its own rate, and the loss
on as many of its loss shares as the household bought of the group in the last 30 days, or
buys in this run, is disallowed (:func:`rebalancer.washsale.wash_match`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .household import TAXABLE, Household
from .market import Market
from .problem import HouseholdProblem, VarKind
from .taxlots import fifo_order
from .washsale import WashMatch, wash_match

__all__ = ["NaiveRebalance", "naive_rebalance"]

# As plain ints: numpy compares an array with an IntEnum member 4x slower (4 us, not 1).
_LOT_SELL, _POSITION_SELL, _BUY = int(VarKind.LOT_SELL), int(VarKind.POSITION_SELL), int(VarKind.BUY)


@dataclass(frozen=True, eq=False)
class NaiveRebalance:
    """x : (N,) the counterfactual trades as a point of the household problem (units of V).
    lot_sold : (L,) value sold of each lot, USD. buy_account, buy_position, buy_value : (B,)
    the buys (account index, market position, USD), each account's in its target's order
    (arrays: a dict of them took 0.1 ms a household to build, and no caller looks one up).
    wash : its loss shares matched with replacement shares (its own buys included);
    disallowed : (L,) USD (<= 0) of each lot's loss disallowed; loss_disallowed : (L,) some is.
    """
    x: np.ndarray
    lot_sold: np.ndarray
    buy_account: np.ndarray
    buy_position: np.ndarray
    buy_value: np.ndarray
    loss_disallowed: np.ndarray
    disallowed: np.ndarray
    wash: WashMatch


def naive_rebalance(market: Market, hh: Household, p: HouseholdProblem, window: int = 30) -> NaiveRebalance:
    """The naive trades of ``hh``, as a point of ``p`` (whose account targets it follows);
    ``window`` is the wash-sale window in days.

    Per account: each held security above its desired value (``max(value - reserve, 0)``
    times its target weight) is sold down to it, lot by lot first-in-first-out, securities in
    the order of their first lot; then every target security below its desired value that the
    account may buy is bought up to it, all buys scaled down alike when cash after the sales
    would fall under the reserve.

    The whole household is done at once with arrays over (account, security) slots (400
    households of the 10k book: 0.76 ms a household with loops per account, security and lot,
    0.30 ms this way). Every sum is still taken one term after the other in the order the rule
    reads it (a security's lots FIFO, an account's sales in sale order, its buys in target
    order), by ``ufunc.accumulate`` along the rows of zero-padded tables (as wide as the most
    lots one sale or one account needs): the same floats as the loops.
    """
    acc, lots = hh.accounts, hh.lots
    A, n, V, L = hh.n_accounts, len(p.securities), p.value, len(lots)
    lot_value = lots.shares * market.price[lots.security]
    values = np.bincount(lots.account, weights=lot_value, minlength=A) + acc.cash
    investable = values - acc.reserve
    investable = np.where(0.0 > investable, 0.0, investable)  # max(., 0.0): NaN stays NaN

    # Slot ``account * n + i`` is (account, security p.securities[i]); the household's held
    # and target securities are all in p.securities.
    t_acc = np.repeat(np.arange(A), [len(pos) for pos, _ in p.account_targets])
    t_pos = np.concatenate([pos for pos, _ in p.account_targets]).astype(np.int64, copy=False)
    t_slot = t_acc * n + np.searchsorted(p.securities, t_pos)
    desired = investable[t_acc] * np.concatenate([w for _, w in p.account_targets])
    desired_at = np.zeros(A * n)
    desired_at[t_slot] = desired

    # Lots in account then FIFO order; value held per slot, summed in that order.
    order = fifo_order(lots.acquired, lots.lot_id)
    order = order[np.argsort(lots.account[order], kind="stable")]
    lot_slot = lots.account * n + np.searchsorted(p.securities, lots.security)
    slot = lot_slot[order]
    held = np.bincount(slot, weights=lot_value[order], minlength=A * n)
    n_lots = np.bincount(slot, minlength=A * n)

    # Sales: a held slot sells its excess over the desired value unless never-sold.
    sells = ~(held - desired_at <= 0) & (n_lots > 0)  # ~(<= 0): a NaN excess sells too
    for a, ns in enumerate(acc.never_sell):
        if len(ns):
            i = np.searchsorted(p.securities, ns)
            ok = i < n
            i = i[ok]
            sells[a * n + i[p.securities[i] == ns[ok]]] = False  # only those it holds matter
    first = np.full(A * n, L)
    np.minimum.at(first, slot, np.arange(L))
    # One row per selling slot, in order of its first lot: its excess, then its lots' values
    # FIFO, zero-padded. Along a row e[k] is the excess left after lot k: lot k sells whole
    # when e[k-1] >= its value (else the rest, e[k-1], and selling stops), and selling stops
    # once e[k] <= 1e-9.
    sel = np.flatnonzero(sells[slot])
    sel = sel[np.argsort(first[slot[sel]], kind="stable")]
    new_row = np.ones(len(sel), bool)
    new_row[1:] = slot[sel[1:]] != slot[sel[:-1]]
    row = np.cumsum(new_row) - 1
    row_slot = slot[sel[new_row]]
    starts = np.flatnonzero(new_row)
    n_lots = n_lots[row_slot]
    k = np.arange(len(sel)) - starts[row]
    width = int(n_lots.max(initial=0))
    table = np.zeros((len(row_slot), width + 1))
    table[:, 0] = held[row_slot] - desired_at[row_slot]
    table[row, k + 1] = lot_value[order[sel]]
    e = np.subtract.accumulate(table, axis=1)
    whole = ~(e[:, :-1] < table[:, 1:])  # min(value, excess) is the value
    reached = np.ones(whole.shape, bool)
    reached[:, 1:] = np.logical_and.accumulate(whole[:, :-1] & ~(e[:, 1:-1] <= 1e-9), axis=1)
    sold = reached & (np.arange(width) < n_lots[:, None])
    take = np.where(whole, table[:, 1:], e[:, :-1])[sold]  # row-major: sale order
    sold_lot = np.zeros(whole.shape, np.int64)
    sold_lot[row, k] = order[sel]
    lot_sold = np.zeros(L)
    lot_sold[sold_lot[sold]] = take

    # Buys: what each target slot lacks, where the account may buy it, all scaled down alike
    # when cash after the sales would fall under the reserve.
    jb = np.flatnonzero(p.kind == _BUY)
    buy_var = np.full(A * n, -1)
    buy_var[p.account[jb] * n + p.security[jb]] = jb
    want = desired - held[t_slot]
    w_ix = np.flatnonzero((want > 0) & (buy_var[t_slot] >= 0))
    # Cash after the sales (rows 0..A-1) and the total wanted (rows A..2A-1), each summed
    # term by term in order.
    sums = _running_totals(np.concatenate([acc.cash, np.zeros(A)]),
                           np.concatenate([np.repeat(row_slot // n, sold.sum(axis=1)), A + t_acc[w_ix]]),
                           np.concatenate([take, want[w_ix]]), 2 * A)
    cash, total = sums[:A], sums[A:]
    ratio = np.divide(cash - acc.reserve, total, out=np.zeros(A), where=total > 0)
    scale = np.where(total > 0, np.where(ratio < 1.0, ratio, 1.0), 0.0)  # min(1.0, ratio): NaN gives 1.0
    amount = want[w_ix] * scale[t_acc[w_ix]]
    b_ix = w_ix[amount > 0]
    amount = amount[amount > 0]

    # Wash sales of the naive trades: its loss shares against the household's recent buys of
    # their groups and its own buys of this run.
    price = market.price[lots.security]
    b_price = market.price[t_pos[b_ix]]
    wash = wash_match(market, hh, p.date, lot_sold / price, (t_acc[b_ix], t_pos[b_ix], amount / b_price), window)
    deferred, destroyed = wash.per_lot(L)
    disallowed = deferred + destroyed

    # x: a taxable lot's sale on its own variable, an IRA lot's on its position's (summed in
    # lot order), a buy on its own.
    jl = np.flatnonzero(p.kind == _LOT_SELL)
    jp = np.flatnonzero(p.kind == _POSITION_SELL)
    lot_var = np.full(L, -1)
    lot_var[p.lot[jl]] = jl
    pos_var = np.full(A * n, -1)
    pos_var[p.account[jp] * n + p.security[jp]] = jp
    ls = np.flatnonzero(lot_sold > 0)
    var = np.where(acc.account_type[lots.account[ls]] == TAXABLE, lot_var[ls], pos_var[lot_slot[ls]])
    x = np.zeros(p.n_vars)
    np.add.at(x, np.concatenate([var, buy_var[t_slot[b_ix]]]), np.concatenate([lot_sold[ls], amount]) / V)
    return NaiveRebalance(x=x, lot_sold=lot_sold, buy_account=t_acc[b_ix], buy_position=t_pos[b_ix], buy_value=amount,
                          loss_disallowed=disallowed < 0, disallowed=disallowed, wash=wash)


def _running_totals(start: np.ndarray, group: np.ndarray, terms: np.ndarray, n: int) -> np.ndarray:
    """(n,) ``start[g]`` plus the ``terms`` of group g, added one at a time in their order, as
    a Python ``+=`` loop adds them (``np.add.reduce`` would sum pairwise). ``group`` ascending."""
    count = np.bincount(group, minlength=n)
    table = np.zeros((n, int(count.max(initial=0)) + 1))
    table[:, 0] = start
    table[group, np.arange(1, len(group) + 1) - np.searchsorted(group, group)] = terms
    return np.add.accumulate(table, axis=1)[np.arange(n), count]
