"""Wash-sale rules across a household, to the letter of the law.

The law:

- IRC section 1091(a), Treas. Reg. 1.1091-1(a): no deduction for a loss on a sale of stock or
  securities when, within 30 days before or after the sale (the 61-day period), the taxpayer
  acquires substantially identical ones. Here substantially identical is one *wash group*: a
  stock alone, or all ETFs on one index;
- Treas. Reg. 1.1091-1(b): several losses are taken in the order of their sales, and losses
  of one day in the order their shares were acquired;
- 1.1091-1(c), (d): the disallowance is pro rata to the replacement shares. When fewer shares
  are acquired in the period than were sold, only the loss on as many of the loss shares is
  disallowed; shares are matched one for one, earliest acquisition first;
- 1.1091-1(e): a share whose acquisition disallowed one loss disallows no other;
- IRC 1091(d), Treas. Reg. 1.1091-2: the basis of the replacement shares is the basis of the
  shares sold, adjusted by the price difference. In effect the disallowed loss is added to the
  replacement's basis. IRC 1223(3): the holding period of the shares sold is included in the
  replacement's;
- Rev. Rul. 2008-5: a replacement bought in the taxpayer's traditional or Roth IRA also
  disallows the loss, and the IRA's basis is not increased: the loss is gone for good;
- a sale inside an IRA is not a sale the return reports: a price below the position's basis
  is no loss there and starts no window.

How the engine applies it, for one run on date D:

1. **Blocked buys.** No account buys a group that had a taxable loss sale in the last 30 days,
   so a run's loss sales never get replacements *after* them. A sale below basis in an IRA
   blocks nothing, unless ``ira_loss_blocks`` asks for the conservative rule. IRA sales are
   told by their account type, never by the sign of the gain they record.
2. **Replacement shares** of a taxable loss sale on D are the household's buys of the group in
   [D - 30, D], in any account: ``recent_trades`` buys, then the run's own buys (day D). The
   optimizer never buys a group it sells at a loss in one run (in-run exclusivity, point 4), but
   the naive counterfactual does. A buy's shares already matched (``RecentTrades.matched``,
   1.1091-1(e)) are not matched again. Nor is a buy in the sold lot's own account, security and
   date: that is the purchase that made the lot, not its replacement. A replacement share in a
   taxable account is counted while it is still held after the run (its lot has the buy's
   account, security and date). A deferral into a share already sold, or sold in this run, is
   realized at once by that sale: the same total loss, taken now, so the engine does not count
   it. An IRA or Roth buy counts whether or not the account still holds it.
3. **Matching** (:func:`wash_match`): the run's loss shares, lots in order of acquisition, are
   matched one for one with replacement shares in order of acquisition. The loss on matched
   shares is disallowed. With a taxable replacement it is *deferred*: simulate moves it into
   the replacement lot's basis and tacks on the holding period. With an IRA replacement it is
   *destroyed*. Per sell the disallowed part is a dollar figure; the rest of the loss is
   allowed.
4. **Pricing** (:func:`wash_state`): for the optimizer each taxable loss lot carries the
   fraction of its shares whose loss would be deferred or destroyed if that lot alone were sold
   in full today. The cost of a lot is linear in the value sold, so this is the chord of its
   true, concave tax function. It is exact for a whole lot sold alone, optimistic for a lot
   sold in part (the first shares sold are matched first), and pessimistic for several lots
   sharing few replacements. No lot looks better than it would sold alone, so the optimizer
   cannot pick the lots priced as allowed only to have them absorb the replacements.
   :func:`rebalancer.problem.build_problem` prices the fractions (``OptimizerSettings``
   ``deferred_loss_value``, ``destroyed_loss_cost``) and weighs a buy against the losses it
   would put in a window (``wash_buy_risk``).

A run's buys and sells open the windows of the next 30 days' runs through ``recent_trades``;
:func:`rebalancer.simulate.apply_result` carries the matches (basis, holding period,
``matched``) to the next day.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .household import TAXABLE, Household
from .market import Market

__all__ = ["WASH_WINDOW_DAYS", "WashState", "WashMatch", "wash_state", "wash_match", "tacked_acquired"]

WASH_WINDOW_DAYS = 30
_SHARE_EPS = 1e-9  # shares below this are float residue, not shares (simulate drops such lots)


@dataclass(frozen=True, eq=False)
class WashState:
    """The wash-sale state of a household for one run, before its trades.

    blocked_groups : sorted wash-group codes no account may buy today.
    deferred_share, destroyed_share : float (L,) per lot of the household: the fraction of its
        shares whose loss would be disallowed if this lot alone were sold in full today. The loss
        is deferred with a taxable replacement, destroyed with an IRA or Roth one. Both are 0 for
        a lot that is not a taxable loss lot.
    unmatched_share : float (L,): the rest, ``1 - deferred_share - destroyed_share``, kept
        apart so that a lot matched in full has exactly 0 (1 for a lot no replacement meets).
    """
    blocked_groups: np.ndarray
    deferred_share: np.ndarray
    destroyed_share: np.ndarray
    unmatched_share: np.ndarray

    @property
    def loss_disallowed(self) -> np.ndarray:
        """bool (L,): some of a sale's loss on the lot would be disallowed."""
        return (self.deferred_share + self.destroyed_share) > 0

    def blocked(self, groups: np.ndarray) -> np.ndarray:
        if not len(self.blocked_groups):  # the usual case; np.isin takes 15 us even then
            return np.zeros(np.shape(groups), bool)
        return np.isin(groups, self.blocked_groups)


@dataclass(frozen=True, eq=False)
class WashMatch:
    """Loss shares of one run's sales matched with replacement shares (Treas. Reg. 1.1091-1).

    One entry per matched pair, arrays (P,):

    lot : household lot index sold at a loss (taxable);
    replacement : the replacement buy, as an index into the household's recent trades, or
        ``-1 - k`` for the run's own buy k (in the order the caller gave its buys);
    account, security, date : the replacement buy's account index, market position and date;
    shares : shares matched;
    loss : USD (< 0), the loss on those shares, disallowed;
    destroyed : the replacement is in a traditional IRA or Roth (the loss is gone). Otherwise
        the loss is deferred into the replacement's basis.
    """
    lot: np.ndarray
    replacement: np.ndarray
    account: np.ndarray
    security: np.ndarray
    date: np.ndarray
    shares: np.ndarray
    loss: np.ndarray
    destroyed: np.ndarray

    def __len__(self) -> int:
        return len(self.lot)

    def per_lot(self, n_lots: int) -> tuple[np.ndarray, np.ndarray]:
        """(deferred, destroyed): USD (<= 0) per household lot, shape (n_lots,)."""
        if not len(self.lot):
            z = np.zeros(n_lots)
            return z, z.copy()
        return (np.bincount(self.lot, weights=np.where(self.destroyed, 0.0, self.loss), minlength=n_lots),
                np.bincount(self.lot, weights=np.where(self.destroyed, self.loss, 0.0), minlength=n_lots))

    @classmethod
    def empty(cls) -> "WashMatch":
        i, f = np.zeros(0, np.int64), np.zeros(0)
        return cls(lot=i, replacement=i, account=i, security=i, date=np.zeros(0, "datetime64[D]"), shares=f, loss=f,
                   destroyed=np.zeros(0, bool))


def tacked_acquired(replacement_acquired, sold_acquired, sale_date) -> np.ndarray:
    """The acquisition date that gives a replacement its holding period under IRC 1223(3).

    The replacement's holding period includes the period the shares sold were held: the days of
    [sold_acquired, sale_date] joined to those held since ``replacement_acquired``. A replacement
    bought before the sale overlaps that period, so its holding period starts with the older of
    the two dates. A replacement bought after the sale adds the sold shares' days:
    ``replacement_acquired - (sale_date - sold_acquired)``.
    In one formula: ``r - max(0, min(sale_date, r) - sold_acquired)``. Elementwise, datetime64[D].
    """
    r = np.asarray(replacement_acquired, "datetime64[D]")
    s = np.asarray(sold_acquired, "datetime64[D]")
    d = np.asarray(sale_date, "datetime64[D]")
    held_before = np.minimum(d, r) - s
    return r - np.maximum(held_before, np.timedelta64(0, "D"))


def wash_state(market: Market, hh: Household, date, window: int = WASH_WINDOW_DAYS, *,
               ira_loss_blocks: bool = False) -> WashState:
    """The wash-sale state of household ``hh`` for a run on ``date`` (see the module docstring).

    ``ira_loss_blocks``: a sale below basis in a traditional IRA or Roth blocks buys of its
    group too (the conservative rule; by law it is no loss).
    """
    date = np.datetime64(date, "D")
    rt, lots = hh.recent, hh.lots
    L = len(lots)
    if not len(rt):  # most households (55% of the 10k book's have no recent trade)
        z = np.zeros(L)
        return WashState(blocked_groups=np.zeros(0, np.int64), deferred_share=z, destroyed_share=z,
                         unmatched_share=np.ones(L))
    start = date - np.timedelta64(window, "D")
    live = (rt.date >= start) & (rt.date <= date)
    group = market.wash_group[rt.security]
    counts = hh.accounts.account_type[rt.account] == TAXABLE
    if ira_loss_blocks:
        counts = np.ones(len(rt), bool)
    loss_sale = live & ~rt.is_buy & counts & (rt.realized_gain < 0)  # NaN (a buy's) is no loss
    blocked = np.unique(group[loss_sale])

    deferred, destroyed, unmatched = np.zeros(L), np.zeros(L), np.ones(L)
    if L:
        price = market.price[lots.security]
        loss_lot = (hh.accounts.account_type[lots.account] == TAXABLE) & (price < lots.cost_basis)
        cand = _candidates(market, hh, date, window, lots.shares, None, loss_lot) if loss_lot.any() else None
        if cand is not None:
            for l in _matchable(market, lots, loss_lot, cand).tolist():
                # This lot alone, sold in full, against the replacements as they stand.
                need = float(lots.shares[l])
                for k, take in _take(cand, cand.avail.copy(), int(market.wash_group[lots.security[l]]),
                                     int(cand.lot_key[l]), need):
                    need -= take
                    if cand.ira[k]:
                        destroyed[l] += take
                    else:
                        deferred[l] += take
                unmatched[l] = max(need, 0.0)  # exactly 0 when matched in full
                unmatched[l] /= lots.shares[l]
            deferred /= lots.shares
            destroyed /= lots.shares
    return WashState(blocked_groups=blocked, deferred_share=deferred, destroyed_share=destroyed,
                     unmatched_share=unmatched)


def wash_match(market: Market, hh: Household, date, sold: np.ndarray, buys=None,
               window: int = WASH_WINDOW_DAYS) -> WashMatch:
    """The run's loss shares matched with replacement shares (see the module docstring).

    sold : (L,) shares sold of each household lot. buys : the run's own buys as
    (account index, market position, shares) arrays (B,), or None. Replacement ``-1 - k`` of
    the result is buy k.
    """
    date = np.datetime64(date, "D")
    lots = hh.lots
    L = len(lots)
    if not L:
        return WashMatch.empty()
    sold = np.asarray(sold, float)
    price = market.price[lots.security]
    loss_lot = (sold > 0) & (hh.accounts.account_type[lots.account] == TAXABLE) & (price < lots.cost_basis)
    if not loss_lot.any():
        return WashMatch.empty()
    cand = _candidates(market, hh, date, window, lots.shares - sold, buys, loss_lot)
    if cand is None:
        return WashMatch.empty()
    todo = _matchable(market, lots, loss_lot, cand)
    if not len(todo):
        return WashMatch.empty()
    # Losses of one day in the order their shares were acquired (Treas. Reg. 1.1091-1(b)),
    # each replacement share used once (1.1091-1(e)).
    todo = todo[np.lexsort((lots.lot_id[todo], lots.acquired[todo]))]
    avail = cand.avail.copy()
    rows = [(l, k, take) for l in todo.tolist()
            for k, take in _take(cand, avail, int(market.wash_group[lots.security[l]]), int(cand.lot_key[l]),
                                 float(sold[l]))]
    if not rows:
        return WashMatch.empty()
    lot = np.array([r[0] for r in rows], np.int64)
    k = np.array([r[1] for r in rows], np.int64)
    shares = np.array([r[2] for r in rows])
    gain = 1.0 - lots.cost_basis[lot] / price[lot]  # per dollar, as LotTax's and the trades' realized gain
    return WashMatch(lot=lot, replacement=cand.source[k], account=cand.account[k], security=cand.security[k],
                     date=cand.date[k], shares=shares, loss=(shares * price[lot]) * gain, destroyed=cand.ira[k])


@dataclass(frozen=True, eq=False)
class _Candidates:
    """Replacement buys of a run, arrays (K,) in order of acquisition (date, then the recent
    trades' row order, the run's own buys last). ``of_group`` maps a wash group to its
    candidates' indices, in that order. ``key`` is (day, account, security) as one integer,
    -2 for the run's own buys, which made no lot that exists yet. ``lot_key`` (L,) is the key of
    the buy that made each household lot (-1 for a lot acquired outside the window)."""
    source: np.ndarray
    account: np.ndarray
    security: np.ndarray
    date: np.ndarray
    ira: np.ndarray
    avail: np.ndarray
    key: np.ndarray
    lot_key: np.ndarray
    of_group: dict


def _key(day: np.ndarray, account: np.ndarray, security: np.ndarray, n_acc: int, n_sec: int) -> np.ndarray:
    return (np.asarray(day, np.int64) * n_acc + account) * n_sec + security


def _candidates(market: Market, hh: Household, date, window: int, held: np.ndarray, buys,
                loss_lot: np.ndarray) -> _Candidates | None:
    """Replacement shares a loss sale on ``date`` of the lots ``loss_lot`` (mask (L,)) may be
    matched with, only of those lots' groups; ``held`` (L,) the shares of each lot held after
    the run. None when there are none."""
    rt, lots = hh.recent, hh.lots
    start = date - np.timedelta64(window, "D")
    live = np.flatnonzero(rt.is_buy & (rt.date >= start) & (rt.date <= date)) if len(rt) else np.zeros(0, np.int64)
    if not len(live) and (buys is None or not len(buys[0])):
        return None
    # Only buys of the loss lots' groups (a mask over the market's groups: np.isin costs more).
    loss_group = np.zeros(len(market.wash_group_names), bool)
    loss_group[market.wash_group[lots.security[loss_lot]]] = True
    live = live[loss_group[market.wash_group[rt.security[live]]]]
    if buys is not None:
        b_acc, b_sec, b_sh = (np.asarray(x) for x in buys)
        run = np.flatnonzero(loss_group[market.wash_group[b_sec.astype(np.int64)]])
    else:
        run = np.zeros(0, np.int64)
    if not len(live) and not len(run):
        return None
    acc_type = hh.accounts.account_type
    n_acc, n_sec = max(hh.n_accounts, 1), market.n
    in_window = (lots.acquired >= start) & (lots.acquired <= date)
    lot_key = np.where(in_window, _key((np.where(in_window, lots.acquired, start) - start).astype(np.int64),
                                       lots.account, lots.security, n_acc, n_sec), -1)
    matched = rt.matched[live] if rt.matched is not None else np.zeros(len(live))
    unmatched = rt.shares[live] - matched
    unmatched = np.where(unmatched > _SHARE_EPS, unmatched, 0.0)
    key = _key((rt.date[live] - start).astype(np.int64), rt.account[live], rt.security[live], n_acc, n_sec)
    ira = acc_type[rt.account[live]] != TAXABLE
    avail = unmatched.copy()
    tax = np.flatnonzero(~ira)
    if len(tax):
        # A taxable buy's shares count while held: the shares left in the lots of its (day,
        # account, security), shared out among the buys of that key in their order.
        keys, inv = np.unique(key[tax], return_inverse=True)
        pool = np.zeros(len(keys))
        hit = np.minimum(np.searchsorted(keys, lot_key), len(keys) - 1)
        ok = (lot_key >= 0) & (keys[hit] == lot_key)
        np.add.at(pool, hit[ok], np.where(held[ok] > _SHARE_EPS, held[ok], 0.0))  # a lot sold out is gone
        by = np.argsort(inv, kind="stable")
        g, u = inv[by], unmatched[tax][by]
        csum = np.concatenate(([0.0], np.cumsum(u)))
        before = csum[:-1] - csum[np.searchsorted(g, g)]  # unmatched shares of the key's earlier buys
        avail[tax[by]] = np.clip(pool[g] - before, 0.0, u)
    order = np.lexsort((live, rt.date[live]))
    source = live[order]
    account, security, date_ = rt.account[source], rt.security[source], rt.date[source]
    ira, avail, key = ira[order], avail[order], key[order]
    if len(run):
        r_acc = b_acc[run].astype(np.int64)
        source = np.concatenate([source, -1 - run])
        account = np.concatenate([account, r_acc])
        security = np.concatenate([security, b_sec[run].astype(np.int64)])
        date_ = np.concatenate([date_, np.full(len(run), date, "datetime64[D]")])
        ira = np.concatenate([ira, acc_type[r_acc] != TAXABLE])
        avail = np.concatenate([avail, np.asarray(b_sh, float)[run]])
        key = np.concatenate([key, np.full(len(run), -2, np.int64)])
    of_group: dict = {}
    for k, gr in enumerate(market.wash_group[security].tolist()):
        of_group.setdefault(gr, []).append(k)
    return _Candidates(source=source.astype(np.int64), account=account.astype(np.int64),
                       security=security.astype(np.int64), date=date_.astype("datetime64[D]"), ira=ira.astype(bool),
                       avail=avail, key=key, lot_key=lot_key, of_group=of_group)


def _take(cand: _Candidates, avail: np.ndarray, group: int, own: int, need: float) -> list[tuple[int, float]]:
    """Shares of ``need`` matched, in order, with the candidates of ``group`` other than the
    lot's own buy ``own``: (candidate, shares) pairs; ``avail`` is drawn down."""
    out = []
    for k in cand.of_group.get(group, ()):
        if need <= 0:
            break
        if cand.key[k] == own or avail[k] <= _SHARE_EPS:
            continue
        take = min(need, float(avail[k]))
        avail[k] -= take
        need -= take
        out.append((k, take))
    return out


def _matchable(market: Market, lots, loss_lot: np.ndarray, cand: _Candidates) -> np.ndarray:
    """Loss lots with a replacement share available other than their own buy's (most loss
    lots of a household with recent buys have none: a new account's lots are its own buys)."""
    groups = market.wash_group[cand.security]
    n = int(max(groups.max(initial=0), market.wash_group[lots.security].max(initial=0))) + 1
    of_group = np.bincount(groups, weights=cand.avail, minlength=n)
    own = np.zeros(len(lots))
    keys = np.unique(cand.key[cand.key >= 0])
    if len(keys):
        hit = np.minimum(np.searchsorted(keys, cand.lot_key), len(keys) - 1)
        mine = (cand.lot_key >= 0) & (keys[hit] == cand.lot_key)
        per_key = np.zeros(len(keys))
        sel = cand.key >= 0
        np.add.at(per_key, np.searchsorted(keys, cand.key[sel]), cand.avail[sel])
        own[mine] = per_key[hit[mine]]
    other = of_group[market.wash_group[lots.security]] - own
    return np.flatnonzero(loss_lot & (other > _SHARE_EPS))
