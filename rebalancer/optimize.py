"""Rebalance one household: build, solve, settle wash-sale directions, round, measure.

:func:`rebalance_households` is what a shard task calls: every household of the shard at
once, each household's solves gathered into batches for the solver (the run of one household
is a generator that yields the problems it needs solved). :func:`rebalance_household` runs
one household, one solve at a time. A household's run returns a
:class:`HouseholdResult` (trades with reasons, status, objective, residuals, timings,
tracking error before and after, realized gains and losses, tax, the naive counterfactual's
tax and the taxes saved or deferred) or raises:

- :class:`~rebalancer.errors.BookDataError` for data that make the household meaningless;
- :class:`HouseholdInfeasible` when no trades satisfy the hard rules;
- :class:`SolverFailure` when the solver fails.

(:func:`rebalance_households` returns the exception in the household's place.) Nothing is
silently held: a caller records the error as the household's rejection reason.

Two parts of the problem are not convex and are settled around the convex solves:

- **in-run wash-sale exclusivity** (never buy a group and sell a lot of it at a loss in one
  run): the first solve may do both; each such group then gets a direction, *sell* (harvest
  the losses, block the group's buys; substitutes take the exposure) when its loss sales are
  at least its buys, else *buy* (no loss sales), and the problem is solved again with those
  directions until no group conflicts. When the naive rebalance's own trades obey every rule,
  the directions they imply are solved too and the better objective kept, so the optimizer
  is never worse than the naive rebalance it is measured against;
- **tax budget**: if the budget cannot be met (forced divestment or a cash reserve must
  realize more gain), the smallest achievable gain is found by a linear program and used as
  the budget; the household's status says ``budget_exceeded`` and by how much.
"""
from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Generator

import numpy as np
import scipy.optimize as so

from .dispersion import AccountFigures, account_figures
from .errors import OptimizationError
from .household import Household
from .market import Market
from .naive import NaiveRebalance, naive_rebalance
from .discrete import NOTE_HOLD_TE, AccountCash, hold_orders, whole_share_orders
from .postprocess import Orders
from .problem import HouseholdProblem, LotTax, VarKind, build_problem, transition_end
from .reference import solve_reference
from .schema import TradeReason
from .settings import OptimizerSettings
from .solution import SolveResult, SolveStatus, WarmStart
from .washsale import WashMatch, wash_match

__all__ = ["HouseholdStatus", "Trades", "HouseholdResult", "HouseholdInfeasible", "SolverFailure",
           "rebalance_household", "rebalance_households"]

Solver = Callable[[HouseholdProblem, float], SolveResult]
# problems, tolerance, a warm start (or None) per problem -> one result per problem
BatchSolver = Callable[[list[HouseholdProblem], float, list[WarmStart | None]], list[SolveResult]]
# A household's run as a generator: it yields each problem it needs solved, with a warm start
# where it has one (a re-solve starts where the solve it restricts ended), and is sent the
# result; it returns the HouseholdResult.
_Steps = Generator[tuple[HouseholdProblem, WarmStart | None], SolveResult, "HouseholdResult"]
_TRADE_TOL = 1e-7  # units of V: below this a trade is solver noise


class HouseholdInfeasible(OptimizationError):
    """No trades satisfy the household's hard rules (cash reserve, never-sell, divestment)."""

    def __init__(self, household_id: int, message: str):
        self.household_id = household_id
        super().__init__(f"household {household_id}: infeasible: {message}")


class SolverFailure(OptimizationError):
    """The solver did not converge or failed numerically."""

    def __init__(self, household_id: int, solver: str, message: str):
        self.household_id, self.solver = household_id, solver
        super().__init__(f"household {household_id}: solver {solver} failed: {message}")


class HouseholdStatus(enum.StrEnum):
    OPTIMAL = "optimal"
    OPTIMAL_INACCURATE = "optimal_inaccurate"
    BUDGET_EXCEEDED = "budget_exceeded"  # hard rules needed more gain than the budget allowed


@dataclass(frozen=True, eq=False)
class Trades:
    """Orders of one household, arrays (T,). ``account`` indexes the household's accounts,
    ``security`` is a market position, ``lot`` a household lot index (-1 for buys).
    realized_gain : USD (sells; 0 for buys); long_term : the sale is long-term;
    disallowed_loss : USD (<= 0), the part of a sell's loss the wash-sale rule disallows (pro
    rata to the replacement shares, :func:`rebalancer.washsale.wash_match`; 0 for buys);
    loss_destroyed : the part of it whose replacement is in an IRA or Roth (gone; the rest is
    deferred into the replacement's basis); loss_disallowed : some of the loss is disallowed;
    reason : TradeReason values."""
    account: np.ndarray
    security: np.ndarray
    lot: np.ndarray
    is_buy: np.ndarray
    shares: np.ndarray
    price: np.ndarray
    value: np.ndarray
    realized_gain: np.ndarray
    long_term: np.ndarray
    loss_disallowed: np.ndarray
    reason: np.ndarray
    disallowed_loss: np.ndarray
    loss_destroyed: np.ndarray

    def __len__(self) -> int:
        return len(self.account)


@dataclass(frozen=True, eq=False)
class HouseholdResult:
    """One household's run. Money in USD; tracking errors are annual volatilities.

    objective : of the orders (whole shares, minimums: :mod:`rebalancer.discrete`);
    objective_continuous : of the convex solution; rounding_cost : their difference;
    objective_hold : of no trades (nan where holding breaks a hard rule: a forced sale, a
    reserve short of cash). objective_naive_whole : of the naive trades made whole by the same
    share and minimum rules (nan where those break a rule). cash : per account cash after, target, band and why cash above
    the band was left. discrete_moves, discrete_start : the descent's moves and where it
    started (continuous | hold | naive). budget_overrun : realized gain above the budget (USD; whole
    shares or hard rules needed it; status budget_exceeded). fallbacks : solves the fast solver
    handed to the reference because it did not converge. naive_objective : of the naive trades, in the same
    objective; naive_feasible : those trades obey every rule of the problem (then
    objective_continuous <= naive_objective up to solver tolerance). taxes_saved : naive_tax - tax (DESIGN section 6), split
    into harvest_value (extra losses), deferral_value (gains not realized) and wait_value
    (short-term gains left to turn long-term). Realized gains and losses are the allowed ones;
    disallowed_loss (<= 0) is the wash-sale part apart, loss_deferred (into replacements' basis)
    plus loss_destroyed (replacements in an IRA or Roth). wash : the matches themselves, which
    :func:`rebalancer.simulate.apply_result` carries to the next day. accounts : per-account
    tracking error and active share before, after and naive (:mod:`rebalancer.dispersion`).
    timings : seconds per stage.
    """
    household_id: int
    status: HouseholdStatus
    solver: str
    value: float
    trades: Trades
    objective: float
    objective_continuous: float
    rounding_cost: float
    naive_objective: float
    naive_feasible: bool
    primal_residual: float
    dual_residual: float
    iterations: int
    solves: int
    te_before: float
    te_after: float
    te_naive: float
    realized_st_gain: float
    realized_st_loss: float
    realized_lt_gain: float
    realized_lt_loss: float
    disallowed_loss: float
    loss_deferred: float
    loss_destroyed: float
    tax: float
    naive_tax: float
    taxes_saved: float
    harvest_value: float
    deferral_value: float
    wait_value: float
    budget_room: float
    budget_overrun: float
    bought: float
    sold: float
    fee: float
    fallbacks: int = 0
    objective_hold: float = math.nan
    objective_naive_whole: float = math.nan
    cash: AccountCash | None = None
    discrete_moves: int = 0
    discrete_start: str = "continuous"
    accounts: AccountFigures | None = None
    wash: WashMatch = field(default_factory=WashMatch.empty)
    timings: dict = field(default_factory=dict)

    @property
    def turnover(self) -> float:
        return (self.bought + self.sold) / self.value if self.value else 0.0


def rebalance_household(market: Market, hh: Household, settings: OptimizerSettings | None = None,
                        solver: Solver | None = None, date=None) -> HouseholdResult:
    """Rebalance household ``hh`` (see the module docstring), one solve at a time."""
    settings = settings or OptimizerSettings()
    solve = solver or solve_reference
    steps = _steps(market, hh, settings, date)
    try:
        p, _ = next(steps)
        while True:
            p, _ = steps.send(solve(p, settings.solver_tolerance))
    except StopIteration as done:
        return done.value


def rebalance_households(market: Market, households: list[Household], settings: OptimizerSettings | None = None,
                         solver: BatchSolver | None = None, date=None,
                         on_done: Callable[[int], None] | None = None) -> list[HouseholdResult | Exception]:
    """Rebalance many households with their solves batched: each round gathers the next
    problem of every household still running (first solves, wash-sale re-solves, budget
    relaxations) and hands them to ``solver`` in one call. Returns, per household, its
    :class:`HouseholdResult` or the exception its run raised (:class:`BookDataError`,
    :class:`OptimizationError` or any other); ``on_done(n)`` is called as households finish.
    """
    settings = settings or OptimizerSettings()
    solver = solver or (lambda ps, tol, starts: [solve_reference(p, tol) for p in ps])
    out: list = [None] * len(households)
    pending: dict[int, tuple[_Steps, tuple[HouseholdProblem, WarmStart | None]]] = {}
    finished = 0

    def advance(i: int, steps: _Steps, result: SolveResult | None) -> None:
        nonlocal finished
        try:
            p = next(steps) if result is None else steps.send(result)
        except StopIteration as done:
            out[i] = done.value
        except Exception as e:  # noqa: BLE001 - the caller files it under the household
            out[i] = e
        else:
            pending[i] = (steps, p)
            return
        finished += 1
        if on_done is not None:
            on_done(finished)

    for i, hh in enumerate(households):
        advance(i, _steps(market, hh, settings, date), None)
    while pending:
        items = sorted(pending.items())
        pending.clear()
        results = solver([p for _, (_, (p, _)) in items], settings.solver_tolerance,
                         [w for _, (_, (_, w)) in items])
        for (i, (steps, _)), r in zip(items, results, strict=True):
            advance(i, steps, r)
    return out


def _steps(market: Market, hh: Household, settings: OptimizerSettings, date) -> _Steps:
    """The run of one household; yields the problems to solve (see :func:`rebalance_households`)."""
    date = np.datetime64(date if date is not None else market.as_of, "D")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    p0 = build_problem(market, hh, settings, date)
    lt = p0.lots
    naive = naive_rebalance(market, hh, p0, settings.wash_window_days)
    # Every problem of the run is p0 with other bounds or budget (restrict, with_budget): the
    # same objective, and tracking variance, for all of them. The variances of the naive and
    # of the rounded trades are kept for te_naive and te_after (two products with the
    # look-through matrix fewer, 0.1 ms a household).
    naive_var = p0.tracking_variance(p0.weights_after(naive.x))
    naive_obj = p0.objective(naive.x, naive_var)
    timings["build"] = time.perf_counter() - t

    # Solve time: the solver's own seconds for each problem (a batch shares its time out)
    # plus this household's work between solves, never the wait for other households.
    solved: list[SolveResult] = []
    waited = [0.0]

    def solve(q: HouseholdProblem, start: WarmStart | None = None):
        t_yield = time.perf_counter()
        r = yield q, start
        waited[0] += time.perf_counter() - t_yield
        solved.append(r)
        return r

    t = time.perf_counter()
    p = p0
    wg = _WashGroups(p0)  # every problem of the run is p0 with other bounds or budget
    status = HouseholdStatus.OPTIMAL
    r = yield from solve(p)
    if r.status == SolveStatus.INFEASIBLE or (not r.status.usable and math.isfinite(p.budget)):
        # An unmeetable budget shows up as infeasible, or as a failure when the solver cannot
        # certify it: the LP in _relax_budget tells which.
        p, r, _ = yield from _relax_budget(p, solve, r)
    _check(p, r)

    best_p, best = yield from _settle_directions(p, r, solve, {}, wg)
    naive_ok = max(p.violation(naive.x).values()) <= 1e-9 and not wg.conflicts(naive.x)
    if naive_ok and wg.conflicts(r.x):
        # The directions the naive trades imply, completed by the first solve's for groups
        # the naive leaves alone; solved only when they differ from the ones chosen.
        modes = {**wg.directions(p, r.x), **wg.naive_modes(naive.x)}
        chosen = best.extra.get("modes", {})
        if any(chosen.get(g) != m for g, m in modes.items()):
            q = p.restrict(wg.mode_mask(modes))
            cand = yield from solve(q, r.start)
            if cand.status.usable and not wg.conflicts(cand.x) and cand.objective < best.objective:
                best_p, best = q, cand
    if naive_ok and naive_obj < best.objective - 1e-7:
        # Only an inaccurate solve lands this far above a feasible point: keep the better trades.
        best_p = p
        best = SolveResult(solver=f"{best.solver}+naive", status=best.status, x=naive.x.copy(),
                           objective=naive_obj, primal_residual=max(p.violation(naive.x).values()),
                           dual_residual=float("nan"), iterations=best.iterations, setup_seconds=best.setup_seconds,
                           solve_seconds=best.solve_seconds, message="the naive trades were better than the solve",
                           extra=best.extra)
    if best.status == SolveStatus.OPTIMAL_INACCURATE and status == HouseholdStatus.OPTIMAL:
        status = HouseholdStatus.OPTIMAL_INACCURATE
    solves = len(solved)
    fallbacks = sum(1 for x in solved if x.extra.get("fallback"))
    timings["solve"] = sum(x.setup_seconds + x.solve_seconds for x in solved) + (time.perf_counter() - t - waited[0])

    t = time.perf_counter()
    disc = whole_share_orders(market, hh, p0, best_p, best.x, naive.x if naive_ok else None, settings)
    orders, x_round = disc.orders, disc.x
    if hh.tax_sensitivity == 0 and math.isfinite(disc.objective_hold):
        # Tax sensitivity 0 goes to target: never end further from it than holding (the
        # sensitivity floor's costs could otherwise buy a hair of tracking error).
        if p0.model_variance(p0.weights_after(x_round)) > p0.model_variance(p0.w0):
            disc = whole_share_orders(market, hh, p0, best_p, np.zeros(p0.n_vars), None, settings)
            orders, x_round = disc.orders, disc.x
        if p0.model_variance(p0.weights_after(x_round)) > p0.model_variance(p0.w0):
            # Still further (the descent's objective counts idle cash, the reported tracking
            # error does not): no trades at all.
            disc = hold_orders(hh, p0, settings, NOTE_HOLD_TE)
            orders, x_round = disc.orders, disc.x
    b_acc, b_i = np.nonzero(orders.buys > 0)  # the order of _trades' buy rows
    wash = wash_match(market, hh, date, orders.sold, (b_acc, best_p.securities[b_i], orders.buys[b_acc, b_i]),
                      settings.wash_window_days)
    deferred, destroyed = wash.per_lot(len(hh.lots))
    trades = _trades(market, hh, best_p, orders, lt, deferred + destroyed, destroyed)
    accounts = account_figures(p0, hh, x_round, naive.x)
    timings["postprocess"] = time.perf_counter() - t

    V = p0.value
    after_var = p0.tracking_variance(p0.weights_after(x_round))
    obj_round = best_p.objective(x_round, after_var) * V
    obj_cont = best.objective * V
    sells = ~trades.is_buy
    g = np.where(sells, trades.realized_gain - trades.disallowed_loss, 0.0)  # the allowed gain or loss
    st_gain = float(np.sum(g[sells & ~trades.long_term & (g > 0)]))
    st_loss = float(np.sum(g[sells & ~trades.long_term & (g < 0)]))
    lt_gain = float(np.sum(g[sells & trades.long_term & (g > 0)]))
    lt_loss = float(np.sum(g[sells & trades.long_term & (g < 0)]))
    split = _tax_split(hh, lt, orders, naive, deferred + destroyed)
    tax = split["tax"]
    realized_run = float(np.sum(np.where(lt.taxable, orders.sold * lt.price * lt.gain - deferred - destroyed, 0.0)))
    room = best_p.budget * V
    overrun = max(realized_run - p0.budget * V, 0.0) if math.isfinite(p0.budget) else 0.0
    if overrun > 0.005:
        # Whole shares: the cash reserve needed a little more sold than the budget allowed
        # (or a relaxed budget). The reserve wins; the overrun is reported, not hidden.
        status = HouseholdStatus.BUDGET_EXCEEDED
    return HouseholdResult(
        household_id=hh.household_id, status=status, solver=best.solver, value=V, trades=trades,
        objective=obj_round, objective_continuous=obj_cont, rounding_cost=obj_round - obj_cont,
        objective_hold=disc.objective_hold * V, objective_naive_whole=disc.objective_naive_whole * V, cash=disc.cash, discrete_moves=disc.moves, discrete_start=disc.start,
        naive_objective=naive_obj * V, naive_feasible=naive_ok, primal_residual=best.primal_residual * V,
        dual_residual=best.dual_residual * V, iterations=best.iterations, solves=solves,
        te_before=math.sqrt(p0.model_variance(p0.w0)),
        te_after=math.sqrt(p0.model_variance(p0.weights_after(x_round), after_var)),
        te_naive=math.sqrt(p0.model_variance(p0.weights_after(naive.x), naive_var)),
        realized_st_gain=st_gain, realized_st_loss=st_loss, realized_lt_gain=lt_gain, realized_lt_loss=lt_loss,
        disallowed_loss=float(np.sum(deferred + destroyed)), loss_deferred=float(np.sum(deferred)),
        loss_destroyed=float(np.sum(destroyed)), wash=wash,
        tax=tax, naive_tax=split["naive_tax"], taxes_saved=split["naive_tax"] - tax,
        harvest_value=split["harvest"], deferral_value=split["deferral"], wait_value=split["wait"],
        budget_room=room if math.isfinite(room) else math.inf, budget_overrun=overrun,
        bought=float(np.sum(trades.value[trades.is_buy])), sold=float(np.sum(trades.value[sells])),
        fee=hh.fee_rate * V, fallbacks=fallbacks, accounts=accounts, timings=timings)


def _check(p: HouseholdProblem, r: SolveResult) -> None:
    if r.status == SolveStatus.INFEASIBLE:
        raise HouseholdInfeasible(p.household_id, "no trades satisfy the cash reserves, never-sell lists and "
                                  "forced divestments together")
    if not r.status.usable:
        raise SolverFailure(p.household_id, r.solver, r.message or str(r.status))


def _relax_budget(p: HouseholdProblem, solve, first: SolveResult):
    """After a solve that failed or found no feasible point: the smallest realizable gain under
    the other hard rules (an LP); if the budget is below it, or so close to it that the
    feasible set is too thin for the solver, solve with the budget raised just above it.
    A generator (``solve`` yields the problem); returns (problem, result, relaxed)."""
    C = p.cash_matrix()
    ub = np.where(np.isfinite(p.ub), p.ub, None)
    lp = so.linprog(p.gain, A_ub=C, b_ub=p.cash_rhs, bounds=list(zip(p.lb, ub)), method="highs")
    if lp.status == 2:
        raise HouseholdInfeasible(p.household_id, "no trades satisfy the cash reserves, never-sell lists and forced "
                                  "divestments together")
    if lp.status != 0:
        raise SolverFailure(p.household_id, "highs", f"budget feasibility LP: {lp.message}")
    g_min = float(lp.fun)
    if g_min < p.budget - 1e-4 * (1.0 + abs(g_min)):
        return p, first, False  # the budget leaves room: it is not what went wrong
    # The smallest gain leaves a feasible set with no interior: give the solver some room,
    # more if it still cannot converge. The overrun is reported against the true budget.
    for slack in (1e-8, 1e-7, 1e-6, 1e-5, 1e-4):
        q = p.with_budget(max(p.budget, g_min + slack * (1.0 + abs(g_min))))
        r = yield from solve(q)
        if r.status.usable:
            break
    return q, r, True


class _WashGroups:
    """The wash groups of one household's problems, for the wash-sale logic between solves.

    A household's problems (the first, its restrictions, its relaxed budgets) share ``kind``,
    ``security``, ``wash_group``, ``loss_sale`` and ``lb``; only ``ub`` and ``budget`` differ.
    What depends on the shared arrays alone is computed once here, and the flows of a trades
    vector are kept for the last few vectors (one is asked about up to four times: by the
    conflict check, by :meth:`directions`, again after the naive comparison). Group sums are
    ``np.bincount`` over the variables in their order, as the dict-per-call version summed
    them: the same floats. Measured on 400 households of the 10k book: the logic between
    solves 0.70 -> 0.31 ms per household (median of 5 interleaved runs).
    """

    def __init__(self, p: HouseholdProblem):
        # Group codes are the market's, numbered from 0: one bin per code up to the household's
        # largest (most of them empty) beats np.unique (5 us against 38 a household, 656
        # variables on average on the 10k book).
        w = p.wash_group
        self.first = int(w.min(initial=0))
        self.groups = np.arange(self.first, int(w.max(initial=-1)) + 1)
        self.var_group = w - self.first
        self.is_buy = p.kind == VarKind.BUY
        self.loss_sale = p.loss_sale
        self.loss_open = p.loss_sale & (p.lb <= 0)  # loss sales a 'buy' direction may forbid
        self.forced_loss = self._any(p.loss_sale & (p.lb > 0))
        # Each security's group, for the active weight of a group (-1: no variable of it).
        self.sec_group = np.full(len(p.securities), -1, np.int64)
        self.sec_group[p.security] = p.wash_group
        self._flows: list[tuple[np.ndarray, tuple]] = []
        self._last_directions: tuple | None = None

    def _any(self, sel: np.ndarray) -> np.ndarray:
        """(G,) groups with a variable in ``sel``."""
        out = np.zeros(len(self.groups), bool)
        out[self.var_group[sel]] = True
        return out

    def flows(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per group (G,): value bought, value of taxable lots sold at a loss (units of V), and
        whether each is traded at all. Kept by the identity of ``x`` (trades vectors are never
        written to once solved)."""
        for y, f in self._flows:
            if y is x:
                return f
        traded = x > _TRADE_TOL
        G = len(self.groups)
        out = []
        for sel in (traded & self.is_buy, traded & self.loss_sale):
            g = self.var_group[sel]
            out.append(np.bincount(g, weights=x[sel], minlength=G))
            out.append(np.bincount(g, minlength=G) > 0)
        f = (out[0], out[2], out[1], out[3])
        self._flows = [(x, f)] + self._flows[:3]
        return f

    def conflicts(self, x: np.ndarray) -> bool:
        """Whether ``x`` buys a group and sells a lot of it at a loss."""
        _, _, bought, lost = self.flows(x)
        return bool(np.any(bought & lost))

    def mode_mask(self, modes: dict[int, str]) -> np.ndarray:
        """Variables a direction fixes at 0: buys of 'sell' groups, loss sales of 'buy' groups."""
        G = len(self.groups)
        sell, buy = np.zeros(G + 1, bool), np.zeros(G + 1, bool)
        if modes:
            i = np.fromiter(modes.keys(), np.int64, len(modes)) - self.first
            i[(i < 0) | (i >= G)] = G  # not a group of p's variables: fixes nothing
            m = np.array(list(modes.values()))
            sell[i[m == "sell"]] = True
            buy[i[m == "buy"]] = True
        return (self.is_buy & sell[self.var_group]) | (self.loss_open & buy[self.var_group])

    def naive_modes(self, x: np.ndarray) -> dict[int, str]:
        """The directions ``x`` implies: 'sell' for a group it sells at a loss, else 'buy' for
        one it buys."""
        _, _, bought, lost = self.flows(x)
        i = np.flatnonzero(bought | lost)
        return {g: ("sell" if s else "buy") for g, s in zip(self.groups[i].tolist(), lost[i].tolist())}

    def directions(self, p: HouseholdProblem, x: np.ndarray) -> dict[int, str]:
        """A direction for every group ``p`` could both buy and sell at a loss, from ``x``:
        a group with a forced loss sale: sell; a conflicting group by its larger flow (ties:
        sell, i.e. harvest); a group ``x`` only buys, or only sells at a loss, keeps what
        ``x`` does; an untouched one by its active weight after ``x`` (underweight: buy).
        Kept for the last (``p``, ``x``) asked (a caller must not change the dict)."""
        if self._last_directions is not None and self._last_directions[0] is p and self._last_directions[1] is x:
            return self._last_directions[2]
        open_ = p.ub > 0
        gi = np.flatnonzero(self._any(self.is_buy & open_) & self._any(self.loss_sale & open_))
        modes: dict[int, str] = {}
        if len(gi):
            buys, losses, _, _ = self.flows(x)
            b, l, forced = buys[gi], losses[gi], self.forced_loss[gi]
            sell = forced | (l >= b)
            untouched = ~forced & ~((b > 0) | (l > 0))
            gs = self.groups[gi].tolist()
            modes = dict(zip(gs, np.where(sell, "sell", "buy").tolist()))
            if untouched.any():
                # Rare (an interior-point x trades nearly every group a little): one np.sum per
                # group, as ever, since another summation order could flip a near-zero sign.
                active = p.weights_after(x) - p.target
                for g in np.asarray(gs)[untouched].tolist():
                    modes[g] = "buy" if float(np.sum(active[self.sec_group == g])) < 0 else "sell"
        self._last_directions = (p, x, modes)
        return modes


def _settle_directions(p: HouseholdProblem, r: SolveResult, solve, modes: dict[int, str], wg: _WashGroups):
    """If ``r`` buys a group and sells it at a loss, give every group that could do both a
    direction (:meth:`_WashGroups.directions`, ``modes`` first) and solve once more: the
    result cannot conflict. If those directions leave no feasible trades, every group gets
    'sell'. ``wg``: the wash groups of ``p``'s household.
    A generator (``solve`` yields the problem); returns (problem, result)."""
    _check(p, r)
    if not wg.conflicts(r.x):
        r.extra.update(modes=dict(modes))
        return p, r
    fixed = {**wg.directions(p, r.x), **modes}
    q = p.restrict(wg.mode_mask(fixed))
    r2 = yield from solve(q, r.start)
    if not r2.status.usable and any(m == "buy" for m in fixed.values()):
        # A 'buy' direction forbade a loss sale the budget or a cash reserve needs. 'sell'
        # only forbids buys, which no hard rule needs, so all-'sell' is always feasible (the
        # solver may report such an empty set as a failure rather than certify it).
        fixed = {g: "sell" for g in fixed}
        q = p.restrict(wg.mode_mask(fixed))
        r2 = yield from solve(q)
    _check(q, r2)
    if wg.conflicts(r2.x):  # cannot happen: every group that could conflict has a direction
        raise SolverFailure(p.household_id, r2.solver, "wash-sale directions did not settle")
    r2.extra.update(modes=fixed)
    return q, r2


def _tax_split(hh: Household, lt: LotTax, orders: Orders, naive: NaiveRebalance,
               disallowed: np.ndarray) -> dict[str, float]:
    """Tax of the optimized and the naive trades and the section-6 split of the difference.

    ``disallowed`` (L,): USD (<= 0) of each lot's loss the optimized trades' wash sales
    disallow (the naive's own are ``naive.disallowed``); tax is on the rest.
    harvest: tax benefit of the optimizer's losses minus the naive's; the gains part (naive
    gain tax minus optimized gain tax) splits into wait (short-term gains the naive sold and
    the optimizer kept, at the rate difference) and deferral (the rest).
    """
    sold_value = orders.sold * lt.price
    taxable = lt.taxable
    opt = np.where(taxable, (sold_value * lt.gain - disallowed) * lt.rate, 0.0)
    nv = np.where(taxable, (naive.lot_sold * lt.gain - naive.disallowed) * lt.rate, 0.0)
    gain_part = float(np.sum(np.where(nv > 0, nv, 0.0)) - np.sum(np.where(opt > 0, opt, 0.0)))
    harvest = float(-np.sum(np.where(opt < 0, opt, 0.0)) + np.sum(np.where(nv < 0, nv, 0.0)))
    t_st = hh.short_term_rate + hh.state_rate
    t_lt = hh.long_term_rate + hh.state_rate
    kept = np.maximum(naive.lot_sold - sold_value, 0.0)
    wait = float(np.sum(np.where(taxable & ~lt.long_term & (lt.gain > 0), kept * lt.gain * (t_st - t_lt), 0.0)))
    wait = min(max(wait, 0.0), max(gain_part, 0.0))
    return {"tax": float(np.sum(opt)), "naive_tax": float(np.sum(nv)), "harvest": harvest,
            "deferral": gain_part - wait, "wait": wait}


def _trades(market: Market, hh: Household, p: HouseholdProblem, orders: Orders, lt: LotTax,
            disallowed: np.ndarray, destroyed: np.ndarray) -> Trades:
    """The orders as trade rows with reasons: each account's sales, cheapest tax first, then
    each account's buys by security. Vectorized per account (row by row took 0.24 ms a
    household on the 10k book, this 0.18); the running cash need and deposit left are
    ``np.subtract.accumulate``, the same float steps as a ``-=`` loop, and a reason that
    stops at the first row past the threshold is a ``logical_and.accumulate``."""
    acc, lots = hh.accounts, hh.lots
    V = p.value
    in_transition = [acc.transition_years[a] > 0
                     and p.date < transition_end(acc.transition_start[a], int(acc.transition_years[a]))
                     for a in range(hh.n_accounts)]
    # Post-trade household weights, to tell a harvest from a rebalance.
    w_after = p.w0.copy()
    loc = np.searchsorted(p.securities, lots.security)
    np.add.at(w_after, loc, -orders.sold * lt.price / V)
    w_after += (orders.buys * p.price).sum(axis=0) / V
    below_target = w_after < p.target - 1e-9
    above_target = w_after > p.target + 1e-9

    # Sales by account, then by tax cost (cheapest first: the first ones raise the cash a
    # reserve needs), ties by lot id. The costs are finite (rates and gains are), so a stable
    # argsort orders them as Python's sorted() did.
    order = np.lexsort((lots.lot_id, lots.account))
    sl = order[orders.sold[order] > 0]
    cost = np.where(lt.taxable[sl], lt.priced[sl] * lt.g_eff[sl], 0.0)
    sl = sl[np.lexsort((cost, lots.account[sl]))]
    s_acc, s_sec = lots.account[sl], lots.security[sl]
    s_val = orders.sold[sl] * lt.price[sl]
    s_tax = lt.taxable[sl]
    s_reason = np.full(len(sl), _REBALANCE)
    for a in np.unique(s_acc).tolist():
        k = np.flatnonzero(s_acc == a)
        sec = s_sec[k]
        screen = market.screened(acc.screens[a])[sec]
        # np.isin takes 15 us even for the empty never-buy list of nearly every account.
        restricted = ~screen & np.isin(sec, acc.never_buy[a]) if len(acc.never_buy[a]) else np.zeros(len(sec), bool)
        # Cash-raising sales: the cheapest first while a shortfall is left.
        free = np.flatnonzero(~screen & ~restricted)
        need = np.subtract.accumulate(np.concatenate(([max(acc.reserve[a] - acc.cash[a], 0.0)], s_val[k[free]])))
        cash = np.zeros(len(k), bool)
        cash[free] = np.logical_and.accumulate(need[:-1] > 1e-6)
        reason = np.where(cash, _CASH, _REBALANCE)
        if in_transition[a]:
            reason[~cash & ~np.isin(sec, p.account_targets[a][0])] = _TRANSITION
        reason[restricted] = _RESTRICTION
        reason[screen] = _SCREEN
        s_reason[k] = reason
    lots_loc = loc[sl]
    s_gain = np.where(s_tax, s_val * lt.gain[sl], 0.0)
    s_dis = np.where(s_tax, disallowed[sl], 0.0)
    harvest = (s_reason == _REBALANCE) & s_tax & (s_gain - s_dis < 0) \
        & (below_target[lots_loc] | (p.target[lots_loc] == 0))
    s_reason[harvest] = _HARVEST
    harvested = bool(harvest.any())

    b_acc, b_i = np.nonzero(orders.buys > 0)  # by account, then security
    b_sh = orders.buys[b_acc, b_i]
    b_val = b_sh * p.price[b_i]
    b_reason = np.where(harvested & above_target[b_i], _HARVEST, _REBALANCE)
    for a in np.unique(b_acc).tolist():
        k = np.flatnonzero(b_acc == a)
        left = np.subtract.accumulate(np.concatenate(([acc.deposit[a]], b_val[k])))
        deposit = np.logical_and.accumulate(left[:-1] > 1e-6)
        b_reason[k] = np.where(deposit, _DEPOSIT, _TRANSITION if in_transition[a] else b_reason[k])
    nb = len(b_acc)
    return Trades(
        account=np.concatenate((s_acc, b_acc)).astype(np.int64),
        security=np.concatenate((s_sec, p.securities[b_i])).astype(np.int64),
        lot=np.concatenate((sl, np.full(nb, -1))).astype(np.int64),
        is_buy=np.concatenate((np.zeros(len(sl), bool), np.ones(nb, bool))),
        shares=np.concatenate((orders.sold[sl], b_sh)).astype(float),
        price=np.concatenate((lt.price[sl], p.price[b_i])).astype(float),
        value=np.concatenate((s_val, b_val)).astype(float),
        realized_gain=np.concatenate((s_gain, np.zeros(nb))).astype(float),
        long_term=np.concatenate((lt.long_term[sl], np.zeros(nb, bool))).astype(bool),
        loss_disallowed=np.concatenate((s_dis < 0, np.zeros(nb, bool))),
        reason=_REASONS[np.concatenate((s_reason, b_reason))],
        disallowed_loss=np.concatenate((s_dis, np.zeros(nb))).astype(float),
        loss_destroyed=np.concatenate((np.where(s_tax, destroyed[sl], 0.0), np.zeros(nb))).astype(float))


# Trade reasons as codes while rows are classified; _REASONS[code] is the value a row carries.
_REASON_ORDER = (TradeReason.REBALANCE, TradeReason.SCREEN, TradeReason.RESTRICTION, TradeReason.CASH,
                 TradeReason.TRANSITION, TradeReason.HARVEST, TradeReason.DEPOSIT)
_REBALANCE, _SCREEN, _RESTRICTION, _CASH, _TRANSITION, _HARVEST, _DEPOSIT = range(len(_REASON_ORDER))
_REASONS = np.array([r.value for r in _REASON_ORDER], object)
