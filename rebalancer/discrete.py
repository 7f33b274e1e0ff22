"""Orders in whole shares that keep the value the convex solution found (DESIGN section 4).

Whole shares, a minimum trade, a minimum new position, no dust and a cash band are not
convex. They are settled here as part of the optimization, on the household's own objective
``f`` (:meth:`rebalancer.problem.HouseholdProblem.objective`), not by a rounding after it:

1. **start**: the convex solution rounded to orders (:func:`rebalancer.postprocess.round_solution`:
   shares, netting, budget and reserve repairs), then cleaned: a buy under its minimum
   dropped, a sale under its minimum trade raised to it or dropped, reserves restored;
2. **descent**: a greedy descent over share-sized moves. Each step scores every variable's
   candidate values (one share more or less, none, the whole lot or position, the smallest
   trade the account's minimums allow) in one compiled pass (:func:`_best_moves`), takes the
   improving ones together where the rows still hold and ``f`` falls (steepest edge: gain per
   unit moved), else the single best; when none helps, reserve steps and pairs of moves in one
   account (a buy funded by a sale or a smaller buy, with the risk model's cross term). ``f``
   is quadratic, so each move's change is exact: ``df = g d + h d^2 / 2`` with ``g`` the
   gradient and ``h`` the curvature of the variable (Nocedal & Wright, *Numerical
   Optimization*, ch. 3, coordinate descent). At most ``descent_max_steps`` steps;
3. **cash sweep**, before and after the descent and not capped by it: an account over its
   target (the reserve) plus band invests the excess across its model by target weight,
   toward the target only, in whole shares; cash above the band is left only where the
   securities it would go to may not be bought or no whole share fits (``cash_note``);
4. **candidates**: holding (no trades) and the naive rebalance made whole by the same rules
   are descended from too, and the best end point is kept; these guarantees outrank the band:
   a household never ends worse than holding or than the whole-share naive trades, where
   those keep every rule.

Hard rules kept by every move: bounds (never-sell, blocked buys, forced divestment), cash
after trades at least the reserve, the tax budget, in-run wash-sale exclusivity (never buy a
group and sell one of its lots at a loss), no buy and sale of one security in one account,
minimum trade per (account, security, side) unless the trade is forced or closes the
position, minimum position for a new position, no trade row under ``dust_usd``. A rule the
start already breaks (whole shares can force a few dollars over the budget) may not get worse.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from .household import Household
from .market import Market
from .postprocess import Orders, orders_to_x, round_solution
from .problem import HouseholdProblem, LotTax, VarKind
from .settings import OptimizerSettings
from .taxlots import fifo_order

__all__ = ["AccountCash", "DiscreteResult", "account_minimums", "hold_orders", "whole_share_orders"]

_LOT_SELL, _POSITION_SELL, _BUY = int(VarKind.LOT_SELL), int(VarKind.POSITION_SELL), int(VarKind.BUY)
_EPS = 1e-9
_TOL = 1e-12  # units of V: a move must lower f by more than this (solver noise is far above)

# Notes an account's row carries when its cash stays above the band.
NOTE_BLOCKED = ("the account may not buy (screens, never-buy, wash sales) the securities its cash would go to, "
                "and the rest are at or above their target")
NOTE_WORSE = "investing it would leave the household worse than holding or than the whole-share naive trades"
NOTE_HOLD_TE = "tax sensitivity 0: every whole-share trade would raise the tracking error, so none is made"
NOTE_NO_FIT = ("no whole share fits: each eligible buy is at or above its target, or its share of the excess is "
               "under a share, the minimum trade or the minimum position")


@dataclass(frozen=True, eq=False)
class AccountCash:
    """Per account (A,), USD: cash after the trades, its target (the reserve: models hold no
    cash) and band, and why cash above target plus band was left (None where it was not)."""
    cash_after: np.ndarray
    cash_target: np.ndarray
    cash_band: np.ndarray
    note: tuple


@dataclass(frozen=True, eq=False)
class DiscreteResult:
    orders: Orders
    x: np.ndarray  # the orders as a point of the problem (units of V)
    objective_hold: float  # f of no trades, units of V; nan where holding breaks a hard rule
    objective_naive_whole: float  # f of the naive trades made whole by the same rules; nan where infeasible
    start: str  # which start the kept orders descend from: continuous | hold | naive
    moves: int
    cash: AccountCash


def account_minimums(hh: Household, values: np.ndarray, s: OptimizerSettings):
    """(A,) minimum trade, minimum new position and cash band of each account, USD.

    An account's own value in the book stands alone where it has one: ``min_trade`` where it
    is > 0, ``min_position`` and ``cash_band`` where they are not null (NaN here), 0 included.
    Elsewhere the firm default, ``max(<x>_usd, <x>_fraction * account value)`` of the
    settings. The minimum trade and position are never under ``dust_usd``."""
    acc = hh.accounts
    firm = np.maximum(s.min_trade_usd, s.min_trade_fraction * values)
    min_trade = np.maximum(np.where(acc.min_trade > 0, acc.min_trade, firm), s.dust_usd)
    firm_pos = np.maximum(s.min_position_usd, s.min_position_fraction * values)
    min_pos = np.maximum(np.where(np.isnan(acc.min_position), firm_pos, acc.min_position), s.dust_usd)
    firm_band = np.maximum(s.cash_band_usd, s.cash_band_fraction * values)
    band = np.where(np.isnan(acc.cash_band), firm_band, acc.cash_band)
    return min_trade, min_pos, band


class _Descent:
    """The state of one descent: shares per variable and the sums every rule reads."""

    def __init__(self, p: HouseholdProblem, hh: Household, lt: LotTax, settings: OptimizerSettings,
                 min_trade, min_pos, band):
        self.p, self.hh = p, hh
        V = p.value
        self.V = V
        N, A, n = p.n_vars, p.n_accounts, len(p.securities)
        self.N, self.A, self.n = N, A, n
        acc, lots = hh.accounts, hh.lots
        kind = p.kind
        self.is_buy = kind == _BUY
        self.sign = p.sign
        self.acct = p.account.astype(np.int64)
        self.sec = p.security.astype(np.int64)
        px = p.price[self.sec]
        self.unit = px / V  # units of V per share
        self.px = px
        self.frac = acc.fractional[self.acct]
        self.smax = np.where(np.isfinite(p.ub), p.ub / np.where(self.unit > 0, self.unit, 1.0), np.inf)
        self.smin = np.where(p.lb > 0, self.smax, 0.0)  # forced sales are whole
        self.forced = p.lb > 0
        # Held value per (account, security), USD, for minimum position and closing sales.
        lot_sec = np.searchsorted(p.securities, lots.security)
        held = np.bincount(lots.account * n + lot_sec, weights=lt.value, minlength=A * n)
        self.held = held
        self.key = self.acct * n + self.sec  # (account, security)
        # Keys per side: sells of one (account, security) share a key; buys their own.
        self.side_key = np.where(self.is_buy, A * n + self.key, self.key)
        self.n_keys = 2 * A * n
        self.min_trade = min_trade[self.acct]
        self.new_pos = self.is_buy & (held[self.key] <= 0)
        self.min_pos = min_pos[self.acct]
        self.dust = settings.dust_usd
        self.group = p.wash_group.astype(np.int64)
        self.g0 = int(self.group.min(initial=0))
        self.gi = self.group - self.g0
        self.G = int(self.group.max(initial=-1)) - self.g0 + 1
        self.loss = p.loss_sale
        # Cash: slack of the reserve row and excess over target + band (units of V).
        self.cash = acc.cash / V
        self.reserve = acc.reserve / V
        self.band_top = (acc.reserve + band) / V
        self.budget = p.budget
        self.gain = p.gain
        # Risk: f = lam * |M a|^2 + lam * sum d (L' a)^2 + c'x + sum q x^2 + c0.
        self.lam = p.risk_aversion
        self.XC = p.exposures @ p.factor_chol  # (n, k)
        self.look = p.look
        self.d = p.specific_var
        # Diagonal of the risk matrix per security: |XC_i|^2 + sum_j d_j L_ij^2.
        diag = np.sum(self.XC * self.XC, axis=1)
        diag += np.bincount(self.look.rows, weights=self.look.vals ** 2 * self.d[self.look.cols], minlength=n)
        self.diag = diag
        self.row_start = np.searchsorted(self.look.rows, np.arange(n + 1))
        self.cost = p.cost
        self.q = p.impact
        # The compiled pass takes writable, contiguous arrays of one dtype each: a read-only
        # or strided array would be another signature, compiled again (seconds each).
        for name, dt in (("sign", float), ("cost", float), ("q", float), ("gain", float), ("smax", float),
                         ("smin", float), ("unit", float), ("px", float), ("min_trade", float), ("min_pos", float),
                         ("diag", float), ("cash", float), ("reserve", float), ("band_top", float),
                         ("acct", np.int64), ("sec", np.int64), ("gi", np.int64), ("side_key", np.int64),
                         ("key", np.int64), ("is_buy", bool), ("frac", bool), ("forced", bool), ("loss", bool),
                         ("new_pos", bool)):
            setattr(self, name, np.array(getattr(self, name), dtype=dt, order="C", copy=True))
        # (account, security, side) keys with a forced sale: fixed by the bounds, not the shares.
        self.forced_key = np.bincount(self.side_key, weights=self.forced, minlength=self.n_keys) > 0
        self.moves = 0
        self.steps, self.max_steps = 0, 1
        self.sweep, self.swept = np.full(A, np.nan), np.zeros(N)
        # Each buy's weight in its account's own target (0 outside it): the cash sweep's shares.
        tw = np.zeros(A * n)
        for a, (pos, w) in enumerate(p.account_targets):
            tw[a * n + np.searchsorted(p.securities, pos)] = w
        self.sweep_w = np.where(self.is_buy, tw[self.key], 0.0)
        self.tol = max(0.01 / V, _TOL)  # a move must gain at least a cent

    # --- state -----------------------------------------------------------------------------
    def set(self, s: np.ndarray) -> None:
        self.s = s.astype(float).copy()
        self.x = self.s * self.unit
        self.a = self.p.weights_after(self.x) - self.p.target
        self.Sa = self._sigma(self.a)
        self._sums()

    def _sums(self) -> None:
        x, s = self.x, self.s
        self.net = np.bincount(self.acct, weights=self.sign * x, minlength=self.A).astype(float)  # buys - sells
        self.bought = np.bincount(self.gi[self.is_buy], weights=x[self.is_buy], minlength=self.G).astype(float)
        ls = self.loss & (x > 0)
        self.losssold = np.bincount(self.gi[ls], weights=x[ls], minlength=self.G).astype(float)
        self.agg = np.bincount(self.side_key, weights=s * self.px, minlength=self.n_keys).astype(float)
        self.nonfull = np.bincount(self.side_key, weights=~self.is_buy & (s < self.smax - _EPS), minlength=self.n_keys).astype(float)
        self.buy_at = np.bincount(self.key[self.is_buy], weights=x[self.is_buy], minlength=self.A * self.n).astype(float)
        sells = ~self.is_buy
        self.sell_at = np.bincount(self.key[sells], weights=x[sells], minlength=self.A * self.n).astype(float)
        self.gsum = float(self.gain @ x)

    def _sigma(self, a: np.ndarray) -> np.ndarray:
        """Sigma a for a (n,): XC XC' a + L (d * L' a)."""
        f = self.XC @ (self.XC.T @ a)
        t = self.look.t_dot(a) * self.d
        return f + np.bincount(self.look.rows, weights=self.look.vals * t[self.look.cols], minlength=self.n)

    def _sigma_col(self, i: int) -> np.ndarray:
        lo, hi = self.row_start[i], self.row_start[i + 1]
        t = np.zeros(len(self.d))
        t[self.look.cols[lo:hi]] = self.look.vals[lo:hi] * self.d[self.look.cols[lo:hi]]
        col = self.XC @ self.XC[i]
        return col + np.bincount(self.look.rows, weights=self.look.vals * t[self.look.cols], minlength=self.n)

    def objective(self) -> float:
        """f at the current shares (units of V): ``lam a' Sigma a`` from the kept ``Sigma a``."""
        return self._f(self.a, self.Sa, self.x)

    def _f(self, a: np.ndarray, Sa: np.ndarray, x: np.ndarray) -> float:
        p = self.p
        return self.lam * float(a @ Sa) + float(p.cost @ x + np.sum(p.impact * x * x)) + p.constant

    def apply(self, j: int, s_new: float) -> None:
        d = (s_new - self.s[j]) * self.unit[j]
        self.s[j] = s_new
        self.x[j] = s_new * self.unit[j]
        i = self.sec[j]
        dw = self.sign[j] * d
        self.a[i] += dw
        self.Sa += self._sigma_col(i) * dw
        self._sums()
        self.moves += 1

    # --- candidates --------------------------------------------------------------------------
    def candidates(self) -> np.ndarray:
        """(5, N) candidate share counts: one more, one less, none, all, the smallest allowed."""
        s, smax, whole = self.s, self.smax, ~self.frac
        fl = np.floor(s + _EPS)
        up = np.where(whole, np.minimum(fl + 1.0, smax), np.minimum(s + 1.0, smax))
        on_grid = np.abs(s - np.round(s)) < 1e-6
        dn = np.where(whole, np.where(on_grid, np.round(s) - 1.0, fl), s - 1.0)
        dn = np.maximum(dn, 0.0)
        zero = np.zeros(self.N)
        full = np.where(np.isfinite(smax), smax, s)
        # Smallest trade the minimums allow for a variable at 0: its key's other value counted.
        other = self.agg[self.side_key] - s * self.px
        need = np.maximum(self.min_trade - other, self.dust)
        need = np.where(self.new_pos, np.maximum(need, self.min_pos), need)
        k = need / self.px
        jump = np.where(whole, np.ceil(k - 1e-9), np.ceil(k * 1e6 - 1e-6) / 1e6)
        jump = np.where(jump > smax, smax, jump)
        jump = np.where(s > 0, s, jump)
        return np.stack([up, dn, zero, full, jump])

    def valid(self, c: np.ndarray, ignore_cash: bool = False, minimums: bool = True, budget: bool = True) -> np.ndarray:
        """(K, N) which candidate share counts keep every hard rule (see the module docstring)."""
        s = self.s
        ok = (c >= self.smin - _EPS) & (c <= self.smax + _EPS) & (np.abs(c - s) > _EPS)
        d = (c - s) * self.unit  # units of V
        up = d > 0
        # Cash: reserve and band (neither may get worse than it is).
        net = self.net[self.acct] + self.sign * d
        cash_after = self.cash[self.acct] - net
        slack = cash_after - self.reserve[self.acct]
        slack0 = self.cash[self.acct] - self.net[self.acct] - self.reserve[self.acct]
        if not ignore_cash:
            ok &= slack >= np.minimum(slack0, 0.0) - 1e-12
        excess = cash_after - self.band_top[self.acct]
        excess0 = self.cash[self.acct] - self.net[self.acct] - self.band_top[self.acct]
        ok &= excess <= np.maximum(excess0, 0.0) + 1e-12
        # Budget.
        if budget and math.isfinite(self.budget):
            g = self.gsum + self.gain * d
            ok &= g <= max(self.gsum, self.budget) + 1e-12
        # Wash-sale exclusivity: no buy of a group sold at a loss, no loss sale of a group bought.
        ok &= ~(up & self.is_buy & (self.losssold[self.gi] > 1e-15))
        ok &= ~(up & self.loss & (self.bought[self.gi] > 1e-15))
        # No buy and sale of one security in one account.
        ok &= ~(up & self.is_buy & (self.sell_at[self.key] > 0))
        ok &= ~(up & ~self.is_buy & (self.buy_at[self.key] > 0))
        # Minimum trade per (account, security, side), dust per row, minimum new position.
        agg = self.agg[self.side_key] + (c - s) * self.px
        nonfull = self.nonfull[self.side_key] - (~self.is_buy & (s < self.smax - _EPS)) \
            + (~self.is_buy & (c < self.smax - _EPS))
        closes = ~self.is_buy & (nonfull <= 0)
        exempt = self.forced_key[self.side_key] | closes | (not minimums)
        ok &= (agg < 1e-6) | (agg >= self.min_trade - 1e-6) | exempt
        row = c * self.px
        ok &= (c <= _EPS) | (row >= self.dust) | self.forced | (not minimums)
        ok &= ~self.new_pos | (c <= _EPS) | (row >= self.min_pos - 1e-6)
        return ok

    def deltas(self, c: np.ndarray) -> np.ndarray:
        """(K, N) exact change of f for each candidate (units of V)."""
        d = (c - self.s) * self.unit
        g = 2.0 * self.lam * self.sign * self.Sa[self.sec] + self.cost + 2.0 * self.q * self.x
        h = 2.0 * self.lam * self.diag[self.sec] + 2.0 * self.q
        return g * d + 0.5 * h * d * d

    # --- the descent -------------------------------------------------------------------------
    def clean(self) -> None:
        """Make the start keep the minimums: a buy under its minimum trade, a new position
        under its minimum or a row under dust is dropped; a sale under its minimum trade is
        raised to it (or to the whole lot) where the lot allows, else dropped."""
        for it in range(3):
            s = self.s
            row = s * self.px
            agg = self.agg[self.side_key]
            closes = ~self.is_buy & (self.nonfull[self.side_key] <= 0)
            exempt = self.forced_key[self.side_key] | closes
            bad = (s > _EPS) & ~self.forced & (
                ((agg < self.min_trade - 1e-6) & ~exempt) | (row < self.dust)
                | (self.new_pos & (row < self.min_pos - 1e-6)))
            if not bad.any():
                return
            for j in np.flatnonzero(bad).tolist():
                # A sale raised to the minimum must not realize more gain under a budget.
                gains = math.isfinite(self.budget) and self.gain[j] > 0
                if self.is_buy[j] or it > 0 or gains or self.smax[j] * self.px[j] < self.dust:
                    self.s[j] = 0.0  # a sale raised once and still short of the rules goes too
                else:
                    want = max(self.min_trade[j] - (agg[j] - row[j]), self.dust) / self.px[j]
                    up = math.ceil(want - 1e-9) if not self.frac[j] else math.ceil(want * 1e6 - 1e-6) / 1e6
                    self.s[j] = self.smax[j] if up >= self.smax[j] else float(up)
            self.set(self.s)

    def run(self, max_steps: int, pairs: int = 6) -> None:
        """Descend until no move helps or after ``max_steps`` steps (a step is one block, one
        move or one pair)."""
        self.clean()
        self.steps, self.max_steps = 0, max_steps
        self.sweep = np.full(self.A, np.nan)  # per account: the excess a cash sweep invests
        self.swept = np.zeros(self.N)  # per buy: what the sweep has bought
        self.restore_reserves()
        self.sweep_cash()
        while self.steps < max_steps:
            self.steps += 1
            c_rate, rate, c_df, df = self._best()
            if self._block_step(c_rate, rate):
                continue
            j = int(np.argmin(df))
            if df[j] < -self.tol:
                self.apply(j, c_df[j])
                continue
            c = self.candidates()
            dfs = self.deltas(c)
            if self._cash_step(c, dfs, reserve=True) or self._cash_step(c, dfs, reserve=False):
                continue
            if pairs and self._pair_step(c, dfs, self.valid(c), pairs):
                continue
            break
        self.restore_reserves()
        self.sweep_cash()

    def restore_reserves(self) -> None:
        """Bring every account back to its reserve (a clean-up can drop a sale it needed):
        reserve steps until none is short, not capped by the descent's steps."""
        for _ in range(10 * self.N + 10):
            if not np.any(self.cash - self.net - self.reserve < -1e-12):
                return
            c = self.candidates()
            if not self._cash_step(c, self.deltas(c), reserve=True):
                return

    def sweep_cash(self) -> None:
        """Invest the cash of every account over its band, as a desk's cash sweep does: each
        security of the account's model buys its target weight's share of the excess in whole
        shares at once, no further than its household target (where that buy keeps every
        rule), then one more share each, least cost per dollar first, while one fits. Not
        capped by the descent's steps: cash above the band is a hard rule."""
        ex = self.excess()
        over = ex > 1e-9
        if not over.any():
            return
        new = over & ~np.isfinite(self.sweep)
        self.sweep[new] = ex[new]
        j = np.flatnonzero(self.is_buy & over[self.acct] & (self.sweep_w > 0))
        if len(j):
            # Each security's share of the excess, but no further than its household target.
            k = np.minimum(self.sweep_w[j] * ex[self.acct[j]], np.maximum(-self.a[self.sec[j]], 0.0)) / self.unit[j]
            k = np.where(self.frac[j], np.floor(k * 1e6) / 1e6, np.floor(k))
            c = self.s.copy()
            c[j] = self.s[j] + k
            ok = self.valid(c[None, :])[0]
            take = j[ok[j] & (k > 0)]
            if len(take):
                s_new = self.s.copy()
                s_new[take] = c[take]
                self.swept[take] += (c[take] - self.s[take]) * self.unit[take]
                self.set(s_new)
                self.moves += len(take)
        # What rounding down left: one more share of a security each, cheapest f per dollar
        # first, while it fits in the excess and in the security's share of the sweep.
        ex = self.excess()
        if not np.any(ex > 1e-9):
            return
        c = self.candidates()
        up = c[0]
        use = (up - self.s) * self.unit
        room = self.sweep_w * self.sweep[self.acct] + self.unit - self.swept
        ok = self.valid(up[None, :])[0] & self.is_buy & (ex[self.acct] > 1e-9) & (use > 0) & (use <= room + 1e-15)
        ok &= self.a[self.sec] + use <= 0.5 * use + 1e-15
        j = np.flatnonzero(ok)
        if not len(j):
            return
        df = self.deltas(up[None, :])[0]
        j = j[np.argsort(df[j] / use[j], kind="stable")]
        left = ex.copy()
        s_new = self.s.copy()
        for v in j.tolist():
            a = self.acct[v]
            if use[v] <= left[a] + 1e-15:
                s_new[v] = up[v]
                self.swept[v] += use[v]
                left[a] -= use[v]
        self.set(s_new)

    def _best(self):
        bud = self.budget if math.isfinite(self.budget) else np.inf
        return _best_moves(self.s, self.smax, self.smin, self.unit, self.px, self.sign, self.is_buy, self.frac,
                           self.forced, self.acct, self.sec, self.gi, self.side_key, self.key, self.loss, self.new_pos,
                           self.min_trade, self.min_pos, float(self.dust), self.cash, self.net, self.reserve,
                           self.band_top, self.bought, self.losssold, self.agg, self.nonfull,
                           self.forced_key, self.buy_at, self.sell_at, float(bud), float(self.gsum), self.gain,
                           self.Sa, self.diag, self.cost, self.q, float(self.lam), float(self.tol))

    def _block_step(self, c_rate: np.ndarray, rate: np.ndarray) -> bool:
        """Many improving moves at once: each variable's best valid move by its gain per
        unit moved (steepest edge), one per security and wash group, all of them taken
        together if the cash rows, the band and the budget still hold and f falls (checked
        exactly), else the best half, and so on down to two."""
        cand = np.flatnonzero(np.isfinite(rate))
        if len(cand) < 2:
            return False
        cand = cand[np.argsort(rate[cand], kind="stable")]
        for ids in (self.sec, self.gi):
            _, first = np.unique(ids[cand], return_index=True)
            cand = cand[np.sort(first)]
        if len(cand) < 2:
            return False
        new = c_rate[cand]
        dx = (new - self.s[cand]) * self.unit[cand]
        f0 = self.objective()
        m = len(cand)
        while m >= 2:
            j, dxj = cand[:m], dx[:m]
            net = self.net + np.bincount(self.acct[j], weights=self.sign[j] * dxj, minlength=self.A)
            slack0 = self.cash - self.net - self.reserve
            ex0 = self.cash - self.net - self.band_top
            fine = np.all(self.cash - net - self.reserve >= np.minimum(slack0, 0.0) - 1e-12)
            fine &= np.all(self.cash - net - self.band_top <= np.maximum(ex0, 0.0) + 1e-12)
            if fine and math.isfinite(self.budget):
                fine &= self.gsum + float(self.gain[j] @ dxj) <= max(self.gsum, self.budget) + 1e-12
            if fine:
                # The trial's f from its active weights alone; the state moves only if it gains.
                x_new = self.x.copy()
                x_new[j] = new[:m] * self.unit[j]
                a_new = self.a + np.bincount(self.sec[j], weights=self.sign[j] * dxj, minlength=self.n)
                if self._f(a_new, self._sigma(a_new), x_new) < f0 - self.tol:
                    s_new = self.s.copy()
                    s_new[j] = new[:m]
                    self.set(s_new)
                    self.moves += m
                    return True
            m //= 2
        return False

    def excess(self) -> np.ndarray:
        """(A,) cash above target + band, units of V."""
        return self.cash - self.net - self.band_top

    def _cash_step(self, c: np.ndarray, df: np.ndarray, reserve: bool) -> bool:
        """In an account short of its reserve (``reserve``), the move that raises cash at the
        least cost of f per dollar; in one over its band, the buy that spends it so."""
        if reserve:
            off = (self.cash - self.net - self.reserve) < -1e-12
        else:
            off = self.excess() > 1e-9
        if not off.any():
            return False
        d = (c - self.s) * self.unit
        use = self.sign * d  # cash used, units of V
        ok = self.valid(c, ignore_cash=reserve) & off[self.acct]
        if reserve:
            ok &= use < 0
        else:
            # A cash sweep: the excess found when the account first went over its band is
            # invested across the account's model by its target weights, each security taking
            # at most its share (plus one share to round up). A blocked security's share stays
            # in cash, and the account's note says so.
            new = off & ~np.isfinite(self.sweep)
            self.sweep[new] = self.excess()[new]
            room = self.sweep_w * self.sweep[self.acct] + self.unit - self.swept
            # ... never more than the excess itself (cash ends at or above the band's top), and
            # toward the target: the security's household weight passes its target by at most
            # half of what is bought (rounding to the nearest share), never beyond.
            ok &= self.is_buy & (use > 0) & (use <= room + 1e-15) & (use <= self.excess()[self.acct] + 1e-15)
            ok &= self.a[self.sec] + use <= 0.5 * use + 1e-15
        if reserve and not ok.any():
            # The reserve (a withdrawal) outranks the minimums: a sale under the minimum trade
            # or dust is made when nothing else raises the cash.
            ok = self.valid(c, ignore_cash=True, minimums=False) & off[self.acct] & (use < 0)
        if reserve and not ok.any():
            # ... and the budget: the overrun is reported (status budget_exceeded).
            ok = self.valid(c, ignore_cash=True, minimums=False, budget=False) & off[self.acct] & (use < 0)
        if not ok.any():
            return False
        per = np.where(ok, df / np.maximum(np.abs(use), 1e-300), np.inf)
        r, j = divmod(int(np.argmin(per)), self.N)
        if not reserve:
            self.swept[j] += use[r, j]
        self.apply(j, c[r, j])
        return True

    def _pair_step(self, c: np.ndarray, df: np.ndarray, ok: np.ndarray, K: int) -> bool:
        """The best pair of moves in one account: a buy the reserve blocks, funded by a move
        that raises cash (a smaller buy or a sale). Exact: df_i + df_j + 2 lam dw_i dw_j Sigma_ij."""
        d = (c - self.s) * self.unit
        cash_use = self.sign * d  # > 0 uses cash
        blocked = self.valid(c, ignore_cash=True) & ~ok & (cash_use > 0)
        raise_ = ok & (cash_use < 0)
        best, move = -self.tol, None
        for a in np.unique(self.acct[np.any(blocked, axis=0)]).tolist():
            in_a = self.acct == a
            bi = np.flatnonzero((blocked & in_a).ravel())
            ri = np.flatnonzero((raise_ & in_a).ravel())
            if not len(bi) or not len(ri):
                continue
            dfl = df.ravel()
            bi = bi[np.argsort(dfl[bi], kind="stable")[:K]]
            ri = ri[np.argsort(dfl[ri] / -cash_use.ravel()[ri], kind="stable")[:K]]
            jb, jr = bi % self.N, ri % self.N
            same = jb[:, None] == jr[None, :]
            dwb = (self.sign * d).ravel()[bi]
            dwr = (self.sign * d).ravel()[ri]
            cross = 2.0 * self.lam * dwb[:, None] * dwr[None, :] * self._sigma_block(self.sec[jb], self.sec[jr])
            tot = dfl[bi][:, None] + dfl[ri][None, :] + cross
            slack0 = self.cash[a] - self.net[a] - self.reserve[a]
            fits = slack0 - cash_use.ravel()[bi][:, None] - cash_use.ravel()[ri][None, :] >= min(slack0, 0.0) - 1e-12
            if math.isfinite(self.budget):
                g = self.gsum + self.gain[jb][:, None] * d.ravel()[bi][:, None] + self.gain[jr][None, :] * d.ravel()[ri][None, :]
                fits &= g <= max(self.gsum, self.budget) + 1e-12
            # A sale and a buy of one group could break exclusivity together.
            gb, gr = self.gi[jb], self.gi[jr]
            conflict = (gb[:, None] == gr[None, :]) & self.loss[jr][None, :] & (d.ravel()[ri][None, :] > 0)
            tot = np.where(fits & ~same & ~conflict, tot, np.inf)
            u, v = np.unravel_index(int(np.argmin(tot)), tot.shape)
            if tot[u, v] < best:
                best, move = tot[u, v], (jb[u], c.ravel()[bi[u]], jr[v], c.ravel()[ri[v]])
        if move is None:
            return False
        jb, cb, jr, cr = move
        self.apply(int(jr), float(cr))
        self.apply(int(jb), float(cb))
        return True

    def _sigma_block(self, si: np.ndarray, sj: np.ndarray) -> np.ndarray:
        """Sigma[si][:, sj] from the factor part and the look-through rows."""
        out = self.XC[si] @ self.XC[sj].T
        m = len(self.d)
        Li = np.zeros((len(si), m))
        Lj = np.zeros((len(sj), m))
        for M, idx in ((Li, si), (Lj, sj)):
            for r, i in enumerate(idx.tolist()):
                lo, hi = self.row_start[i], self.row_start[i + 1]
                M[r, self.look.cols[lo:hi]] = self.look.vals[lo:hi]
        return out + (Li * self.d) @ Lj.T

    def notes(self, p: HouseholdProblem) -> tuple:
        """Why each account left cash above its band (None where it did not): some of its
        target it may not buy (its share of the sweep stays in cash), or no whole share fits."""
        ex = self.excess()
        open_buy = self.is_buy & (p.ub > 0) & ~(self.losssold[self.gi] > 1e-15)
        has_open = np.zeros(self.A * self.n, bool)
        has_open[self.key[open_buy]] = True
        out = []
        for a in range(self.A):
            if ex[a] <= 1e-9:
                out.append(None)
                continue
            pos, w = p.account_targets[a]
            i = np.searchsorted(p.securities, pos)
            blocked = np.any((np.asarray(w) > 0) & ~has_open[a * self.n + i])
            out.append(NOTE_BLOCKED if blocked else NOTE_NO_FIT)
        return tuple(out)


@njit(cache=True, nogil=True, error_model="numpy")
def _best_moves(s, smax, smin, unit, px, sign, is_buy, frac, forced, acct, sec, gi, side_key, key, loss, new_pos,
                min_trade, min_pos, dust, cash, net, reserve, band_top, bought, losssold, agg, nonfull, forced_key,
                buy_at, sell_at, budget, gsum, gain, Sa, diag, cost, q, lam, tol):  # pragma: no cover - compiled
    """Per variable, the valid candidate (:meth:`_Descent.candidates`, :meth:`_Descent.valid`)
    with the best gain per unit moved, and the one with the best gain: (c_rate, rate, c_df,
    df), inf where none is valid (or, for the rate, none gains more than ``tol``). The
    elementwise rules of ``valid`` fused into one pass (the numpy version's 35 passes over
    five candidate rows cost 0.3 ms a step at 1,000 variables)."""
    N = len(s)
    c_rate = s.copy()
    c_df = s.copy()
    rate = np.full(N, np.inf)
    dfb = np.full(N, np.inf)
    finite_budget = np.isfinite(budget)
    cands = np.empty(5)
    for j in range(N):
        sj = s[j]
        a = acct[j]
        whole = not frac[j]
        fl = np.floor(sj + 1e-9)
        cands[0] = min(fl + 1.0, smax[j]) if whole else min(sj + 1.0, smax[j])
        if whole:
            dn = np.round(sj) - 1.0 if abs(sj - np.round(sj)) < 1e-6 else fl
        else:
            dn = sj - 1.0
        cands[1] = max(dn, 0.0)
        cands[2] = 0.0
        cands[3] = smax[j] if np.isfinite(smax[j]) else sj
        if sj > 0:
            cands[4] = sj
        else:
            other = agg[side_key[j]] - sj * px[j]
            need = max(min_trade[j] - other, dust)
            if new_pos[j]:
                need = max(need, min_pos[j])
            k = need / px[j]
            jump = np.ceil(k - 1e-9) if whole else np.ceil(k * 1e6 - 1e-6) / 1e6
            cands[4] = smax[j] if jump > smax[j] else jump
        g = 2.0 * lam * sign[j] * Sa[sec[j]] + cost[j] + 2.0 * q[j] * sj * unit[j]
        h = 2.0 * lam * diag[sec[j]] + 2.0 * q[j]
        slack0 = cash[a] - net[a] - reserve[a]
        ex0 = cash[a] - net[a] - band_top[a]
        buyj = is_buy[j]
        nonfull_j = (not buyj) and sj < smax[j] - 1e-9
        for r in range(5):
            c = cands[r]
            if not (c >= smin[j] - 1e-9 and c <= smax[j] + 1e-9 and abs(c - sj) > 1e-9):
                continue
            d = (c - sj) * unit[j]
            up = d > 0
            use = sign[j] * d
            if slack0 - use < min(slack0, 0.0) - 1e-12:
                continue
            if ex0 - use > max(ex0, 0.0) + 1e-12:
                continue
            if finite_budget and gsum + gain[j] * d > max(gsum, budget) + 1e-12:
                continue
            if up:
                if buyj and (losssold[gi[j]] > 1e-15 or sell_at[key[j]] > 0):
                    continue
                if (not buyj) and buy_at[key[j]] > 0:
                    continue
                if loss[j] and bought[gi[j]] > 1e-15:
                    continue
            ag = agg[side_key[j]] + (c - sj) * px[j]
            nf = nonfull[side_key[j]] - (1.0 if nonfull_j else 0.0) + (1.0 if ((not buyj) and c < smax[j] - 1e-9) else 0.0)
            closes = (not buyj) and nf <= 0
            if not (ag < 1e-6 or ag >= min_trade[j] - 1e-6 or forced_key[side_key[j]] or closes):
                continue
            row = c * px[j]
            if not (c <= 1e-9 or row >= dust or forced[j]):
                continue
            if new_pos[j] and not (c <= 1e-9 or row >= min_pos[j] - 1e-6):
                continue
            df = g * d + 0.5 * h * d * d
            if df < dfb[j]:
                dfb[j] = df
                c_df[j] = c
            if df < -tol:
                rt = df / max(abs(d), 1e-300)
                if rt < rate[j]:
                    rate[j] = rt
                    c_rate[j] = c
    return c_rate, rate, c_df, dfb


def _shares_of(p: HouseholdProblem, hh: Household, lt: LotTax, orders: Orders) -> np.ndarray:
    """(N,) shares per variable of ``orders``."""
    x = orders_to_x(p, hh, lt, orders)
    unit = p.price[p.security] / p.value
    s = x / unit
    # Lot sales exactly as ordered (a whole lot's fractional shares included).
    j = np.flatnonzero(p.kind == _LOT_SELL)
    s[j] = orders.sold[p.lot[j]]
    j = np.flatnonzero(p.kind == _BUY)
    s[j] = orders.buys[p.account[j], p.security[j]]
    return s


def _orders_of(p: HouseholdProblem, hh: Household, s: np.ndarray, slack: np.ndarray | None = None,
               dust: float = 0.0) -> Orders:
    """Orders for shares ``s`` per variable: an IRA position's sale taken from its largest lots first."""
    lots = hh.lots
    L, A, n = len(lots), hh.n_accounts, len(p.securities)
    sold = np.zeros(L)
    forced = np.zeros(L, bool)
    j = np.flatnonzero(p.kind == _LOT_SELL)
    sold[p.lot[j]] = s[j]
    forced[p.lot[j[p.lb[j] > 0]]] = True
    pos = np.flatnonzero((p.kind == _POSITION_SELL) & (s > 0))
    if len(pos):
        order = fifo_order(lots.acquired, lots.lot_id)
        key = lots.account.astype(np.int64) * n + np.searchsorted(p.securities, lots.security)
        order = order[np.argsort(key[order], kind="stable")]
        okey = key[order]
        for j in pos.tolist():
            k = int(p.account[j]) * n + int(p.security[j])
            mine = order[np.searchsorted(okey, k, "left"):np.searchsorted(okey, k, "right")]
            if p.lb[j] > 0:
                forced[mine] = True
            left = s[j]
            # An IRA's lots carry no tax: a sale is taken from its largest lots first, so that
            # no lot row of it is a sliver (dust) of a larger order, and in fewer rows.
            mine = mine[np.argsort(-lots.shares[mine], kind="stable")]
            px = p.price[p.security[j]]
            a = int(p.account[j])
            for l in mine.tolist():
                take = min(lots.shares[l], left)
                if (0 < take * px < dust and take < lots.shares[l] and p.lb[j] <= 0 and slack is not None
                        and slack[a] >= dust):
                    # A sliver left for the last lot: sold a sliver less (under dust_usd of cash,
                    # which the account's slack above its reserve covers).
                    slack[a] -= take * px
                    break
                sold[l] = take
                left -= take
                if left <= _EPS:
                    break
    buys = np.zeros((A, n))
    j = np.flatnonzero(p.kind == _BUY)
    buys[p.account[j], p.security[j]] = s[j]
    return Orders(sold=sold, buys=buys, forced=forced)


def hold_orders(hh: Household, p0: HouseholdProblem, settings: OptimizerSettings, note: str) -> DiscreteResult:
    """No trades, as a :class:`DiscreteResult`: each account over its band carries ``note``."""
    lt = p0.lots
    values = np.bincount(hh.lots.account, weights=lt.value, minlength=hh.n_accounts) + hh.accounts.cash
    _, _, band = account_minimums(hh, values, settings)
    L, A, n = len(hh.lots), hh.n_accounts, len(p0.securities)
    orders = Orders(sold=np.zeros(L), buys=np.zeros((A, n)), forced=np.zeros(L, bool))
    cash = hh.accounts.cash.astype(float).copy()
    over = cash > hh.accounts.reserve + band + 1e-6
    return DiscreteResult(orders=orders, x=np.zeros(p0.n_vars), objective_hold=p0.objective(np.zeros(p0.n_vars)),
                          objective_naive_whole=math.nan, start="hold", moves=0,
                          cash=AccountCash(cash_after=cash, cash_target=hh.accounts.reserve.astype(float).copy(),
                                           cash_band=band, note=tuple(note if o else None for o in over)))


def whole_share_orders(market: Market, hh: Household, p0: HouseholdProblem, p: HouseholdProblem, x: np.ndarray,
                       x_naive: np.ndarray | None, settings: OptimizerSettings) -> DiscreteResult:
    """Orders for household ``hh`` from the convex solution ``x`` of ``p`` (``p0`` restricted
    by wash-sale directions and perhaps a relaxed budget), see the module docstring.
    ``x_naive``: the naive trades as a point of ``p0``, or None."""
    lt = p0.lots
    # The descent's problem: p0's bounds (directions are kept by the exclusivity rule, so
    # starts from other directions are comparable) with p's budget (relaxed where it had to be).
    q = p0 if p.budget == p0.budget else p0.with_budget(p.budget)
    values = np.bincount(hh.lots.account, weights=lt.value, minlength=hh.n_accounts) + hh.accounts.cash
    mt, mp, band = account_minimums(hh, values, settings)
    desc = _Descent(q, hh, lt, settings, mt, mp, band)
    cap = settings.descent_max_steps

    def descend(orders: Orders) -> tuple[np.ndarray, float, int]:
        desc.moves = 0
        desc.set(_shares_of(q, hh, lt, orders))
        desc.run(cap)
        return desc.s.copy(), desc.objective(), desc.moves

    start = round_solution(market, hh, p, x, lt, settings.min_weight)
    s_best, f_best, moves = descend(start)
    how = "continuous"

    # Holding: feasible when nothing is forced and every account's cash covers its reserve.
    hold_ok = not np.any(q.lb > 0) and bool(np.all(q.cash_rhs >= -1e-12)) and (not math.isfinite(q.budget) or q.budget >= 0)
    f_hold = q.objective(np.zeros(q.n_vars)) if hold_ok else math.nan
    if hold_ok and f_hold < f_best - _TOL:
        s, f, m = descend(Orders(sold=np.zeros(len(hh.lots)), buys=np.zeros((hh.n_accounts, len(q.securities))),
                                 forced=np.zeros(len(hh.lots), bool)))
        if f < f_best:
            s_best, f_best, moves, how = s, f, m, "hold"
    f_naive = math.nan
    if x_naive is not None:
        nv = round_solution(market, hh, q, x_naive, lt, settings.min_weight)
        # The naive trades made whole by the same rules: the descent's own clean-up of them
        # (minimums, dust), with no move after it.
        desc.set(_shares_of(q, hh, lt, nv))
        desc.clean()
        nv = _orders_of(q, hh, desc.s)
        xn = orders_to_x(q, hh, lt, nv)
        wg_ok = not (np.any(desc.bought[desc.losssold > 1e-15] > 1e-15))
        if max(q.violation(xn).values()) <= 1e-9 and wg_ok:
            f_naive = q.objective(xn)
            s, f, m = descend(nv)
            if f < f_best:
                s_best, f_best, moves, how = s, f, m, "naive"
    desc.set(s_best)
    orders = _orders_of(q, hh, s_best, (desc.cash - desc.net - desc.reserve) * q.value, settings.dust_usd)
    x_out = orders_to_x(q, hh, lt, orders)
    V = q.value
    # The guarantees outrank the band: where its sweep (or anything else) left the orders
    # worse than holding or than the whole-share naive trades, those are kept instead, and an
    # account left over its band says why.
    f_out, slack = q.objective(x_out), 0.005 / V
    if math.isfinite(f_hold) and f_out > f_hold + slack:
        r = hold_orders(hh, q, settings, NOTE_WORSE)
        return dataclasses.replace(r, objective_hold=f_hold, objective_naive_whole=f_naive)
    if math.isfinite(f_naive) and f_out > f_naive + slack:
        orders, x_out, how, moves = nv, xn, "naive", 0
    desc.set(_shares_of(q, hh, lt, orders))
    cash_after = (desc.cash - desc.net) * V
    notes = desc.notes(q)
    if how == "naive" and moves == 0:
        notes = tuple(None if n is None else NOTE_WORSE for n in notes)
    cash = AccountCash(cash_after=cash_after, cash_target=hh.accounts.reserve.astype(float).copy(),
                       cash_band=band, note=notes)
    return DiscreteResult(orders=orders, x=x_out, objective_hold=f_hold, objective_naive_whole=f_naive, start=how, moves=moves, cash=cash)
