"""The household problem of DESIGN section 4, as arrays every solver reads.

All quantities are in units of household value V (a weight is dollars / V); the objective in
dollars is V times the objective here. Variables ``x`` (N,):

- LOT_SELL: value sold of one taxable lot, in ``[0, lot value]``;
- POSITION_SELL: value sold of one (traditional or Roth account, security) position;
- BUY: value bought of one security in one account, ``>= 0``.

With ``A`` the (n, N) incidence matrix (+1 buy, -1 sell on the variable's security) the
post-trade household weights are ``w = w0 + A x`` and the active weights ``a = w - target``.
Minimize

.. math::

    f(x) = \\lambda \\left( \\lVert C^T X^T a \\rVert^2 + \\sum_j d_j (L^T a)_j^2 \\right)
           + c^T x + \\sum_i q_i x_i^2 + c_0

where ``F = C C^T`` (Cholesky of the factor covariance), X the exposures of the household's
securities, L the look-through of ETFs to their constituents with specific variances d
(Grinold & Kahn, *Active Portfolio Management*, ch. 3: tracking variance ``a' (X F X' + D) a``),
``c`` the tax (each lot at its own rate times its gain per dollar, short-term gains priced for
waiting, see :func:`rebalancer.taxlots.wait_priced_rates`; a loss whose replacement shares are
in the wash-sale window at what its deferred part keeps, its destroyed part as a cost, see
:mod:`rebalancer.washsale`), half-spread, tax drag (yield times the rate of its income class,
taxable accounts only: asset location), a small cost on buying securities outside the target
(substitutes must earn their place) and one on buying a group with taxable losses (the losses
the buy puts in a wash-sale window, :func:`_loss_at_risk`), scaled by the household's tax
sensitivity, and ``q`` a small impact term. Subject to

- ``lb <= x <= ub`` (no shorts, sells only from held lots, never-sell, blocked buys, forced
  divestment as ``lb = ub``);
- per account: ``buys - sells <= (cash - reserve) / V`` (cash after trades >= reserve);
- per household: ``gain' x <= budget`` (net realized gains this year within the tax budget).
"""
from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from .errors import BookDataError
from .household import TAXABLE, Household
from .market import Market
from .settings import Divestment, OptimizerSettings
from .targets import household_target
from .taxlots import days_to_long_term, is_long_term, lot_rates, wait_priced_rates
from .washsale import WashState, wash_state

__all__ = ["VarKind", "LotTax", "lot_tax", "HouseholdProblem", "build_problem", "transition_allowance", "transition_end"]


class VarKind(enum.IntEnum):
    LOT_SELL = 0
    POSITION_SELL = 1
    BUY = 2


_BUY = int(VarKind.BUY)  # an int8 array compared with an int, not an IntEnum member: 4x faster


@dataclass(frozen=True, eq=False)
class LotTax:
    """Per-lot tax facts of a household at the run date, arrays (L,).

    price : USD/share; value : USD; gain : gain per dollar (1 - basis/price); long_term : bool;
    rate : the lot's own rate; priced : the optimizer's rate (wait pricing);
    deferred, destroyed, unmatched : the fractions of a loss lot's shares whose loss a sale of
    the whole lot would defer into a replacement's basis, destroy (an IRA replacement) or keep
    (:class:`rebalancer.washsale.WashState`; 0, 0, 1 for any other lot); disallowed : some of it
    would be disallowed (wash sale); g_eff : gain per dollar counted for the tax budget: the
    gain, but 0 for a loss lot a replacement share meets. The allowed loss of s shares of such a
    lot, ``gain * max(0, s - R)`` per share for R replacement shares, is 0 for the first R
    shares sold (Treas. Reg. 1.1091-1(c)), and 0 is the only linear count that never credits
    more loss than a sale realizes: a budget the optimizer meets is never broken by the matching.
    taxable : the lot is in a taxable account.
    """
    price: np.ndarray
    value: np.ndarray
    gain: np.ndarray
    long_term: np.ndarray
    rate: np.ndarray
    priced: np.ndarray
    disallowed: np.ndarray
    g_eff: np.ndarray
    taxable: np.ndarray
    deferred: np.ndarray
    destroyed: np.ndarray
    unmatched: np.ndarray


def lot_tax(market: Market, hh: Household, date, wash: WashState) -> LotTax:
    """Per-lot tax facts of ``hh`` for a run on ``date`` with wash-sale state ``wash``."""
    lots, acc = hh.lots, hh.accounts
    price = market.price[lots.security]
    value = lots.shares * price
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(price > 0, 1.0 - lots.cost_basis / price, 0.0)
    lt = is_long_term(lots.acquired, date)
    rate = lot_rates(lt, hh.short_term_rate, hh.long_term_rate, hh.state_rate)
    priced = wait_priced_rates(rate, gain, days_to_long_term(lots.acquired, date),
                               hh.short_term_rate, hh.long_term_rate, hh.state_rate)
    loss = gain < 0
    deferred = np.where(loss, wash.deferred_share, 0.0)
    destroyed = np.where(loss, wash.destroyed_share, 0.0)
    unmatched = np.where(loss, wash.unmatched_share, 1.0)
    disallowed = (deferred + destroyed) > 0
    return LotTax(price=price, value=value, gain=gain, long_term=lt, rate=rate, priced=priced,
                  disallowed=disallowed, g_eff=np.where(disallowed, 0.0, gain),
                  taxable=acc.account_type[lots.account] == TAXABLE, deferred=deferred, destroyed=destroyed,
                  unmatched=unmatched)


@dataclass(frozen=True, eq=False)
class LookThrough:
    """A household's risk look-through L (n securities x m risk assets; the risk assets'
    weights of security weights w are L' w), kept as its nonzero entries row by row. The
    dense matrix is made when asked for (``dense``: the reference solver, a fund household's
    products): a direct-indexed household's L is 512 x 523 with 2,900 entries, and making it
    dense cost about 0.3 ms a household in the job, page faults mostly."""
    rows: np.ndarray  # (nnz,) nondecreasing
    cols: np.ndarray
    vals: np.ndarray  # nonzero
    shape: tuple[int, int]

    @classmethod
    def of_entries(cls, rows, cols, vals, shape) -> "LookThrough":
        """From entries in row order (Market.lookthrough_entries'); zero entries dropped."""
        vals = np.asarray(vals, float)
        keep = vals != 0.0
        return cls(*(_read_only(np.asarray(v)[keep]) for v in (rows, cols, vals)), (int(shape[0]), int(shape[1])))

    @classmethod
    def of_dense(cls, L: np.ndarray) -> "LookThrough":
        rows, cols = np.nonzero(L)
        return cls.of_entries(rows, cols, L[rows, cols], L.shape)

    @cached_property
    def dense(self) -> np.ndarray:
        L = np.zeros(self.shape)
        L.reshape(-1)[self.rows * self.shape[1] + self.cols] = self.vals
        return _read_only(L)

    @cached_property
    def sparse(self) -> bool:
        """Whether products are cheaper from the entries: under 5% of L. A direct-indexed
        household's (1%): ``L' a`` takes 0.04 ms so, 0.20 dense. A fund household's (30, 530)
        L holding two ETFs is 15% entries, where the dense product is the faster."""
        return 20 * len(self.vals) < self.shape[0] * self.shape[1]

    def t_dot(self, a: np.ndarray) -> np.ndarray:
        """``L' a`` for a (n,)."""
        if not self.sparse:
            return self.dense.T @ a
        return np.bincount(self.cols, weights=self.vals * a[self.rows], minlength=self.shape[1])

    def rows_dot(self, a: np.ndarray) -> np.ndarray:
        """``a L`` for a (R, n), each row summed in entry order whatever R where sparse."""
        if not self.sparse:
            return a @ self.dense
        R, m = a.shape[0], self.shape[1]
        return np.bincount((np.arange(R)[:, None] * m + self.cols).ravel(), weights=(a[:, self.rows] * self.vals).ravel(),
                           minlength=R * m).reshape(R, m)


@dataclass(frozen=True, eq=False)
class HouseholdProblem:
    """One household's convex problem (see the module docstring for the formula).

    Securities (n): ``securities`` market positions, ``price``, ``w0`` current and ``target``
    weights, ``exposures`` (n, k), ``look`` the look-through L (n, m) (:class:`LookThrough`;
    ``lookthrough`` its dense matrix) with ``specific_var`` (m,).
    Variables (N): ``kind``, ``account`` (index into the household's accounts), ``security``
    (index into ``securities``), ``lot`` (index into the household's lots, -1 if none), bounds
    ``lb``/``ub`` (``ub`` may be inf), ``cost`` (linear), ``impact`` (quadratic), ``gain``
    (realized gain per unit sold, for the budget), ``loss_sale`` (a sale at a loss, for
    in-run wash-sale exclusivity), ``wash_group`` (the security's group).
    Rows: ``cash_rhs`` (A,) and ``budget`` (inf: no cap).
    Household facts the problem was built from: ``lots`` (:class:`LotTax`) and
    ``account_targets`` (per account, (positions, weights)).
    """
    household_id: int
    date: np.datetime64
    value: float
    risk_aversion: float
    tax_weight: float
    securities: np.ndarray
    price: np.ndarray
    w0: np.ndarray
    target: np.ndarray
    exposures: np.ndarray
    factor_cov: np.ndarray
    factor_chol: np.ndarray
    look: LookThrough
    specific_var: np.ndarray
    kind: np.ndarray
    account: np.ndarray
    security: np.ndarray
    lot: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    cost: np.ndarray
    impact: np.ndarray
    gain: np.ndarray
    loss_sale: np.ndarray
    wash_group: np.ndarray
    cash_rhs: np.ndarray
    budget: float
    constant: float
    n_accounts: int
    lots: LotTax
    account_targets: tuple
    # The cash factor's volatility (OptimizerSettings.cash_active_vol), the last column of
    # ``exposures`` where > 0: part of the objective, not of the reported tracking error.
    cash_vol: float = 0.0
    # Data derived from the risk model (see derived_risk); restrict() and with_budget() share it.
    risk_derived: dict = field(default_factory=dict, repr=False)

    @property
    def lookthrough(self) -> np.ndarray:
        """The look-through L (n, m), dense (read-only)."""
        return self.look.dense

    @property
    def n_vars(self) -> int:
        return len(self.kind)

    @cached_property
    def sign(self) -> np.ndarray:
        """(N,) +1 for a buy, -1 for a sale; read-only, computed once per problem (a household's
        run asks for it about ten times: weights_after, violation, the dispersion figures)."""
        return _read_only(np.where(self.kind == _BUY, 1.0, -1.0))

    def incidence(self) -> sp.csr_matrix:
        """A (n, N): column j is +1 (buy) or -1 (sell) on the variable's security."""
        N = self.n_vars
        return sp.csr_matrix((self.sign, (self.security, np.arange(N))), shape=(len(self.securities), N))

    def cash_matrix(self) -> sp.csr_matrix:
        """C (A, N): row a is ``buys - sells`` of account a."""
        N = self.n_vars
        return sp.csr_matrix((self.sign, (self.account, np.arange(N))), shape=(self.n_accounts, N))

    def weights_after(self, x: np.ndarray) -> np.ndarray:
        return self.w0 + np.bincount(self.security, weights=self.sign * x, minlength=len(self.securities))

    def tracking_variance(self, w: np.ndarray) -> float:
        """Annual tracking variance of household weights ``w`` against the target."""
        a = w - self.target
        f = self.factor_chol.T @ (self.exposures.T @ a)
        s = self.look.t_dot(a)
        return float(f @ f + np.sum(self.specific_var * s * s))

    def model_variance(self, w: np.ndarray, variance: float | None = None) -> float:
        """Tracking variance of ``w`` under the book's risk model alone: the objective's
        variance less the cash factor's ``cash_vol^2 (1' a)^2`` (what reports call tracking
        error). ``variance``: :meth:`tracking_variance` of ``w`` where the caller has it."""
        if variance is None:
            variance = self.tracking_variance(w)
        if self.cash_vol > 0:
            variance -= self.cash_vol ** 2 * float(np.sum(w - self.target)) ** 2
        return max(variance, 0.0)

    def objective(self, x: np.ndarray, variance: float | None = None) -> float:
        """f(x) in units of V (multiply by ``value`` for dollars). ``variance``: the tracking
        variance of ``weights_after(x)`` where the caller has it already (the same float)."""
        if variance is None:
            variance = self.tracking_variance(self.weights_after(x))
        return self.risk_aversion * variance + float(self.cost @ x + np.sum(self.impact * x * x)) + self.constant

    def violation(self, x: np.ndarray) -> dict[str, float]:
        """Largest violation of each constraint family at ``x`` (units of V, >= 0)."""
        ub = np.where(np.isfinite(self.ub), self.ub, np.inf)
        cash = np.bincount(self.account, weights=self.sign * x, minlength=self.n_accounts) - self.cash_rhs
        return {
            "bounds": float(max(np.max(self.lb - x, initial=0.0), np.max(x - ub, initial=0.0))),
            "cash": float(np.max(cash, initial=0.0)),
            "budget": float(max(self.gain @ x - self.budget, 0.0)) if math.isfinite(self.budget) else 0.0,
        }

    def derived_risk(self, name: str, make):
        """``make(self)`` for a function of the risk model alone (``risk_aversion``,
        ``exposures``, ``factor_chol``, ``look``, ``specific_var``), computed once for
        this problem and the problems :meth:`restrict` and :meth:`with_budget` make from it
        (a re-solve does not rebuild its risk structure). Checked against the identity of
        those arrays, so a problem with another risk model never gets a stale value."""
        key = (self.risk_aversion, id(self.exposures), id(self.factor_chol), id(self.look), id(self.specific_var))
        hit = self.risk_derived.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = make(self)
        self.risk_derived[name] = (key, value)
        return value

    def restrict(self, zero: np.ndarray) -> "HouseholdProblem":
        """The same problem with variables ``zero`` (mask) fixed at 0."""
        if np.any(zero & (self.lb > 0)):
            raise ValueError("cannot fix a forced sale at 0")
        return dataclasses.replace(self, ub=np.where(zero, 0.0, self.ub))

    def with_budget(self, budget: float) -> "HouseholdProblem":
        return dataclasses.replace(self, budget=float(budget))


def transition_end(start: np.datetime64, years: int) -> np.datetime64:
    """The day a transition of ``years`` years started on ``start`` ends."""
    month = start.astype("datetime64[M]")
    return (month + 12 * int(years)).astype("datetime64[D]") + (start - month.astype("datetime64[D]"))


def transition_allowance(market: Market, hh: Household, date, account_targets, lot_value, lot_gain) -> float:
    """Gains (USD) today's run may realize while an account is in a transition; inf if none is.

    The rule: a taxable account onboarded with legacy holdings and ``transition_years = N``
    spreads the net unrealized gain ``U`` of its holdings outside its target evenly over the
    tax years left until the transition ends (``transition_start`` + N years):
    ``R = end year - this year + 1``. With ``x`` the household's net gain realized so far this
    tax year, this year's gains may total ``(U + x) / R``, so today's run may add
    ``max((U + x) / R - x, 0)``. In the end year ``R = 1`` and everything left may go; after
    the end date the rule lapses. Losses harvested along the way raise the room one for one.
    Run daily, the account converges to its model within N years, realizing roughly equal
    gains in each tax year (tracking error decides whether the room is used). With several
    transition accounts in a household, U is their total and R the smallest. IRAs have no tax
    and simply rebalance.
    """
    date = np.datetime64(date, "D")
    acc = hh.accounts
    year = date.astype("datetime64[Y]").astype(np.int64)
    U, R = 0.0, None
    for a in np.flatnonzero((acc.transition_years > 0) & (acc.account_type == TAXABLE)):
        end = transition_end(acc.transition_start[a], int(acc.transition_years[a]))
        if date >= end:
            continue
        r = max(1, int(end.astype("datetime64[Y]").astype(np.int64) - year) + 1)
        R = r if R is None else min(R, r)
        legacy = (hh.lots.account == a) & ~np.isin(hh.lots.security, account_targets[a][0])
        U += max(float(np.sum(lot_value[legacy] * lot_gain[legacy])), 0.0)
    if R is None:
        return math.inf
    x = max(hh.ytd_realized_st + hh.ytd_realized_lt, 0.0)
    return max((U + x) / R - x, 0.0)


def build_problem(market: Market, hh: Household, settings: OptimizerSettings, date=None) -> HouseholdProblem:
    """The convex problem of household ``hh`` for a run on ``date`` (default: the market's).

    Raises BookDataError (naming the account and field) when the data make the problem
    meaningless: no value, a model screened away, a cash reserve no sale can reach.
    """
    date = np.datetime64(date if date is not None else market.as_of, "D")
    acc, lots = hh.accounts, hh.lots
    A = hh.n_accounts
    tgt_pos, tgt_w, account_targets = household_target(market, hh)

    wash = wash_state(market, hh, date, settings.wash_window_days, ira_loss_blocks=settings.ira_loss_blocks)
    lt = lot_tax(market, hh, date, wash)
    lot_value, lot_gain, priced, g_eff = lt.value, lt.gain, lt.priced, lt.g_eff
    # Tax per dollar sold as the optimizer prices it: an allowed loss at face value, a deferred
    # one at deferred_loss_value of it, a destroyed one as a cost of destroyed_loss_cost of it.
    wash_value = np.where(lt.disallowed, lt.unmatched + lt.deferred * settings.deferred_loss_value
                          - lt.destroyed * settings.destroyed_loss_cost, 1.0)
    tax_priced = priced * lot_gain * wash_value
    V = float(lot_value.sum() + acc.cash.sum())  # > 0: household_target checked it

    # The household's securities: held, targeted, and buyable substitutes of its funds (any
    # fund of the asset class of one it holds or targets), as a mask over the market's (an
    # np.isin over the S asset-class strings and two np.union1d took 0.1 ms a household).
    fund, buyable, asset_class = market.derived("problem.securities", _security_facts)
    mine = np.zeros(market.n, bool)
    mine[lots.security] = True
    mine[tgt_pos] = True
    if (mine & fund).any():
        classes = np.zeros(asset_class.max(initial=-1) + 1, bool)
        classes[asset_class[mine & fund]] = True
        mine |= fund & buyable & classes[asset_class]
    secs = np.flatnonzero(mine)
    n = len(secs)
    target = np.zeros(n)
    target[np.searchsorted(secs, tgt_pos)] = tgt_w
    lot_sec_local = np.searchsorted(secs, lots.security)
    w0 = np.zeros(n)
    np.add.at(w0, lot_sec_local, lot_value / V)

    tax_weight = max(hh.tax_sensitivity, settings.sensitivity_floor)
    half_spread = market.spread[secs] / 2.0
    income_class = market.income_class[secs]
    drag_rate = np.where(income_class == 0, hh.long_term_rate + hh.state_rate,
                         np.where(income_class == 1, hh.short_term_rate + hh.state_rate, 0.0))
    drag = market.yield_[secs] * drag_rate  # per dollar held a year, in a taxable account

    kinds, accts, sec_l, lot_l, lb, ub, cost, gain, loss = ([] for _ in range(9))

    def add(kind, a, s, lot, lo, hi, c, g, is_loss):
        kinds.append(np.full(len(s), int(kind), np.int8)); accts.append(np.full(len(s), a, np.int64) if np.isscalar(a) else a)
        sec_l.append(s); lot_l.append(lot); lb.append(lo); ub.append(hi); cost.append(c); gain.append(g); loss.append(is_loss)

    # What no account may buy is the same for all of them; np.isin is skipped for the empty
    # never-sell and never-buy lists of nearly every account (it takes 10-15 us even then).
    wash_group = market.wash_group[secs]
    may_buy = ~wash.blocked(wash_group) & buyable[secs]
    at_risk = _loss_at_risk(lt, lot_sec_local, wash_group, w0 - target, V, settings)
    constant = 0.0
    for a in range(A):
        excluded = market.screened(acc.screens[a])
        never_sell = acc.never_sell[a]
        never_buy = acc.never_buy[a]
        in_a = lots.account == a
        if acc.account_type[a] == TAXABLE:
            idx = np.flatnonzero(in_a)
            s_loc = lot_sec_local[idx]
            hi = lot_value[idx] / V
            if len(never_sell):
                hi = np.where(np.isin(lots.security[idx], never_sell), 0.0, hi)
            scr = excluded[lots.security[idx]] & (hi > 0)
            if settings.divestment == Divestment.IMMEDIATE:
                lo = np.where(scr, hi, 0.0)
            else:
                lo = np.where(scr & (lot_gain[idx] <= 0), hi, 0.0)
            c = tax_weight * (tax_priced[idx] + half_spread[s_loc] - drag[s_loc])
            if settings.divestment == Divestment.TAX_SENSITIVE:
                c = c - np.where(scr, settings.screen_hold_cost, 0.0)
            add(VarKind.LOT_SELL, a, s_loc, idx, lo, hi, c, g_eff[idx], lot_gain[idx] < 0)
            constant += tax_weight * float(np.sum(drag[s_loc] * lot_value[idx] / V))
        else:
            ps = np.unique(lots.security[in_a])
            if len(ps):
                pv = np.bincount(np.searchsorted(ps, lots.security[in_a]), weights=lot_value[in_a], minlength=len(ps)) / V
                hi = np.where(np.isin(ps, never_sell), 0.0, pv) if len(never_sell) else pv
                scr = excluded[ps] & (hi > 0)
                lo = np.where(scr, hi, 0.0)  # no tax in these accounts: a screen always divests at once
                s_loc = np.searchsorted(secs, ps)
                add(VarKind.POSITION_SELL, a, s_loc, np.full(len(ps), -1), lo, hi, tax_weight * half_spread[s_loc],
                    np.zeros(len(ps)), np.zeros(len(ps), bool))
        # Buys: any security of the household's universe the account may buy.
        ok = ~excluded[secs] & may_buy
        if len(never_buy):
            ok &= ~np.isin(secs, never_buy)
        b = np.flatnonzero(ok)
        c = tax_weight * (half_spread[b] + (drag[b] if acc.account_type[a] == TAXABLE else 0.0)
                          + np.where(target[b] > 0, 0.0, settings.substitute_cost))
        if at_risk is not None:
            lost = 1.0 - settings.deferred_loss_value if acc.account_type[a] == TAXABLE else 1.0
            c = c + tax_weight * settings.wash_buy_risk * lost * at_risk[b]
        add(VarKind.BUY, a, b, np.full(len(b), -1), np.zeros(len(b)), np.full(len(b), np.inf), c,
            np.zeros(len(b)), np.zeros(len(b), bool))

    kind = np.concatenate(kinds).astype(np.int8)
    account = np.concatenate(accts)
    security = np.concatenate(sec_l).astype(np.int64)
    lb_ = np.concatenate(lb)
    ub_ = np.concatenate(ub)
    cash_rhs = (acc.cash - acc.reserve) / V
    # A reserve no sale can reach is a data problem of that account, not an optimization one.
    sellable = np.bincount(account, weights=np.where(kind != _BUY, ub_, 0.0), minlength=A)
    short = cash_rhs + sellable < -1e-12
    if short.any():
        a = int(np.flatnonzero(short)[0])
        raise BookDataError("accounts", f"account_id={int(acc.account_id[a])}", "cash_reserve",
                            f"reserve {acc.reserve[a]:,.2f} exceeds cash {acc.cash[a]:,.2f} plus everything the account "
                            f"may sell ({sellable[a] * V:,.2f})")

    budget = hh.tax_budget
    year_net = hh.ytd_realized_st + hh.ytd_realized_lt - hh.loss_carryforward_st - hh.loss_carryforward_lt
    room = max(budget - year_net, 0.0) if math.isfinite(budget) else math.inf
    room = min(room, transition_allowance(market, hh, date, account_targets, lot_value, lot_gain))

    _, (lt_rows, lt_cols, lt_vals), d = market.lookthrough_entries(secs)
    # Shared by every problem of the market, read-only (5 us a household). The cash factor
    # (OptimizerSettings.cash_active_vol) is one more factor with exposure 1 on every
    # security: (1' a)^2 is the household's net active weight in securities squared, the
    # negative of its active cash, so idle cash carries the risk of the target it is not in.
    vol = settings.cash_active_vol
    F, chol = market.derived(("problem.factors", vol), lambda m: _factors(m.risk.factor_cov, vol))
    X = market.risk.exposures[secs]
    if vol > 0:
        X = np.hstack([X, np.ones((n, 1))])
    N = len(kind)
    return HouseholdProblem(
        household_id=hh.household_id, date=date, value=V, risk_aversion=settings.risk_aversion, tax_weight=tax_weight,
        securities=secs, price=market.price[secs], w0=w0, target=target, exposures=X, factor_cov=F, factor_chol=chol,
        look=LookThrough.of_entries(lt_rows, lt_cols, lt_vals, (len(secs), len(d))), specific_var=d, kind=kind, account=account, security=security,
        lot=np.concatenate(lot_l).astype(np.int64), lb=lb_, ub=ub_, cost=np.concatenate(cost),
        impact=np.full(N, tax_weight * settings.impact), gain=np.concatenate(gain),
        loss_sale=np.concatenate(loss).astype(bool), wash_group=wash_group[security],
        cash_rhs=cash_rhs, budget=room / V, constant=constant, n_accounts=A, lots=lt,
        account_targets=tuple(account_targets), cash_vol=float(vol) if vol > 0 else 0.0)


def _loss_at_risk(lt: LotTax, lot_sec: np.ndarray, wash_group: np.ndarray, active: np.ndarray, V: float,
                  settings: OptimizerSettings) -> np.ndarray | None:
    """(n,) per dollar bought of each household security, the tax value of the taxable losses
    of its wash group that the buy would put in a wash-sale window; None when there are none.

    A replacement share disallows the loss of one loss share sold within 30 days (Treas. Reg.
    1.1091-1(c)). Buying b dollars of group G puts the losses of about min(b, Q_G) dollars of
    G's loss lots at risk, Q_G the value of their shares not matched already. That is concave in
    b, so it is priced linearly: per dollar bought, ``B_G / max(Q_G, need_G)``, with B_G the tax
    value of those losses (value x |gain| x rate) and need_G the group's shortfall to target
    (the buy the rebalance expects). It is exact for a buy up to the smaller of the two and
    overstates a larger one. ``lot_sec`` (L,) is each lot's household security index,
    ``active`` (n,) the weights minus the target, ``wash_group`` (n,) the groups.
    """
    loss = lt.taxable & (lt.gain < 0)
    if not loss.any() or settings.wash_buy_risk == 0:
        return None
    free = lt.value * lt.unmatched * loss
    benefit = free * -lt.gain * lt.priced
    sec_g = wash_group  # the market's group codes, one bin per code up to the largest here
    lot_g = sec_g[lot_sec]
    G = int(sec_g.max(initial=-1)) + 1
    Q = np.bincount(lot_g, weights=free, minlength=G)
    B = np.bincount(lot_g, weights=benefit, minlength=G)
    need = np.maximum(-np.bincount(sec_g, weights=active, minlength=G), 0.0) * V
    spread = np.maximum(Q, need)
    per_dollar = np.divide(B, spread, out=np.zeros(G), where=(B > 0) & (spread > 0))
    return per_dollar[sec_g]


def _security_facts(market: Market) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S,) masks of funds (anything but a stock) and of securities with a price > 0, and a
    code per asset class: what every household's universe is drawn from."""
    codes: dict = {}
    asset_class = np.array([codes.setdefault(c, len(codes)) for c in market.asset_class.tolist()], np.int64)
    return (market.kind != "stock"), np.isfinite(market.price) & (market.price > 0), asset_class


def _factors(F: np.ndarray, cash_vol: float) -> tuple[np.ndarray, np.ndarray]:
    """The factor covariance and its factor C (F = C C'), with the cash factor's variance
    ``cash_vol^2`` as one more diagonal entry where ``cash_vol > 0``; read-only."""
    C = _psd_factor(F)
    if cash_vol > 0:
        k = F.shape[0]
        F2, C2 = np.zeros((k + 1, k + 1)), np.zeros((k + 1, C.shape[1] + 1))
        F2[:k, :k], F2[k, k] = F, cash_vol ** 2
        C2[:k, :C.shape[1]], C2[k, -1] = C, cash_vol
        F, C = F2, C2
    return _read_only(np.array(F)), _read_only(C)


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _psd_factor(F: np.ndarray) -> np.ndarray:
    """C with F = C C' (Cholesky, or a symmetric square root when F is only semidefinite)."""
    try:
        return np.linalg.cholesky(F)
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(0.5 * (F + F.T))
        return vecs * np.sqrt(np.clip(vals, 0.0, None))
