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
from .postprocess import Orders, orders_to_x, round_solution
from .problem import HouseholdProblem, LotTax, VarKind, build_problem, transition_end
from .reference import solve_reference
from .schema import TradeReason
from .settings import OptimizerSettings
from .solution import SolveResult, SolveStatus, WarmStart

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
    loss_disallowed : a loss that wash-sale rules disallow; reason : TradeReason values."""
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

    def __len__(self) -> int:
        return len(self.account)


@dataclass(frozen=True, eq=False)
class HouseholdResult:
    """One household's run. Money in USD; tracking errors are annual volatilities.

    objective : of the rounded trades; objective_continuous : of the convex solution;
    rounding_cost : their difference. budget_overrun : realized gain above the budget (USD; whole
    shares or hard rules needed it; status budget_exceeded). fallbacks : solves the fast solver
    handed to the reference because it did not converge. naive_objective : of the naive trades, in the same
    objective; naive_feasible : those trades obey every rule of the problem (then
    objective_continuous <= naive_objective up to solver tolerance). taxes_saved : naive_tax - tax (DESIGN section 6), split
    into harvest_value (extra losses), deferral_value (gains not realized) and wait_value
    (short-term gains left to turn long-term). accounts : per-account tracking error and active
    share before, after and naive (:mod:`rebalancer.dispersion`). timings : seconds per stage.
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
    accounts: AccountFigures | None = None
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
    naive = naive_rebalance(market, hh, p0)
    naive_obj = p0.objective(naive.x)  # the same function for every restriction of p0
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
    status = HouseholdStatus.OPTIMAL
    r = yield from solve(p)
    if r.status == SolveStatus.INFEASIBLE or (not r.status.usable and math.isfinite(p.budget)):
        # An unmeetable budget shows up as infeasible, or as a failure when the solver cannot
        # certify it: the LP in _relax_budget tells which.
        p, r, _ = yield from _relax_budget(p, solve, r)
    _check(p, r)

    best_p, best = yield from _settle_directions(p, r, solve, {})
    naive_ok = max(p.violation(naive.x).values()) <= 1e-9 and not _conflicts(p, naive.x)
    if naive_ok:
        # The directions the naive trades imply, completed by the first solve's for groups
        # the naive leaves alone; solved only when they differ from the ones chosen.
        modes = {**_directions(p, r.x), **_naive_modes(p, naive.x)}
        chosen = best.extra.get("modes", {})
        if _conflicts(p, r.x) and any(chosen.get(g) != m for g, m in modes.items()):
            q = p.restrict(_mode_mask(p, modes))
            cand = yield from solve(q, r.start)
            if cand.status.usable and not _conflicts(q, cand.x) and cand.objective < best.objective:
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
    orders = round_solution(market, hh, best_p, best.x, lt, settings.min_weight)
    x_round = orders_to_x(best_p, hh, lt, orders)
    trades = _trades(market, hh, best_p, orders, lt)
    accounts = account_figures(p0, hh, x_round, naive.x)
    timings["postprocess"] = time.perf_counter() - t

    V = p0.value
    obj_round = best_p.objective(x_round) * V
    obj_cont = best.objective * V
    sells = ~trades.is_buy
    allowed = sells & ~trades.loss_disallowed
    g = trades.realized_gain
    st_gain = float(np.sum(g[allowed & ~trades.long_term & (g > 0)]))
    st_loss = float(np.sum(g[allowed & ~trades.long_term & (g < 0)]))
    lt_gain = float(np.sum(g[allowed & trades.long_term & (g > 0)]))
    lt_loss = float(np.sum(g[allowed & trades.long_term & (g < 0)]))
    split = _tax_split(hh, lt, orders, naive, date)
    tax = split["tax"]
    realized_run = float(np.sum(np.where(lt.taxable, orders.sold * lt.price * lt.g_eff, 0.0)))
    room = best_p.budget * V
    overrun = max(realized_run - p0.budget * V, 0.0) if math.isfinite(p0.budget) else 0.0
    if overrun > 0.005:
        # Whole shares: the cash reserve needed a little more sold than the budget allowed
        # (or a relaxed budget). The reserve wins; the overrun is reported, not hidden.
        status = HouseholdStatus.BUDGET_EXCEEDED
    return HouseholdResult(
        household_id=hh.household_id, status=status, solver=best.solver, value=V, trades=trades,
        objective=obj_round, objective_continuous=obj_cont, rounding_cost=obj_round - obj_cont,
        naive_objective=naive_obj * V, naive_feasible=naive_ok, primal_residual=best.primal_residual * V,
        dual_residual=best.dual_residual * V, iterations=best.iterations, solves=solves,
        te_before=math.sqrt(max(p0.tracking_variance(p0.w0), 0.0)),
        te_after=math.sqrt(max(p0.tracking_variance(p0.weights_after(x_round)), 0.0)),
        te_naive=math.sqrt(max(p0.tracking_variance(p0.weights_after(naive.x)), 0.0)),
        realized_st_gain=st_gain, realized_st_loss=st_loss, realized_lt_gain=lt_gain, realized_lt_loss=lt_loss,
        disallowed_loss=float(np.sum(g[sells & trades.loss_disallowed & (g < 0)])),
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


def _group_flows(p: HouseholdProblem, x: np.ndarray) -> tuple[dict, dict]:
    """Per wash group: value bought, and value of taxable lots sold at a loss (units of V)."""
    traded = x > _TRADE_TOL
    out = []
    for sel in (traded & (p.kind == VarKind.BUY), traded & p.loss_sale):
        g = p.wash_group[sel]
        if len(g) == 0:
            out.append({})
            continue
        u, inv = np.unique(g, return_inverse=True)
        out.append(dict(zip(u.tolist(), np.bincount(inv, weights=x[sel]).tolist())))
    return out[0], out[1]


def _conflicts(p: HouseholdProblem, x: np.ndarray) -> dict[int, str]:
    """Groups both bought and sold at a loss by ``x``, with the direction to give them."""
    buys, losses = _group_flows(p, x)
    return {g: ("sell" if losses[g] >= buys[g] else "buy") for g in buys.keys() & losses.keys()}


def _mode_mask(p: HouseholdProblem, modes: dict[int, str]) -> np.ndarray:
    """Variables a direction fixes at 0: buys of 'sell' groups, loss sales of 'buy' groups."""
    sell = np.isin(p.wash_group, [g for g, m in modes.items() if m == "sell"])
    buy = np.isin(p.wash_group, [g for g, m in modes.items() if m == "buy"])
    return ((p.kind == VarKind.BUY) & sell) | (p.loss_sale & buy & (p.lb <= 0))


def _naive_modes(p: HouseholdProblem, x: np.ndarray) -> dict[int, str]:
    buys, losses = _group_flows(p, x)
    modes = {g: "buy" for g in buys}
    modes.update({g: "sell" for g in losses})
    return modes


def _directions(p: HouseholdProblem, x: np.ndarray) -> dict[int, str]:
    """A direction for every group the problem could both buy and sell at a loss, from ``x``:
    a group with a forced loss sale: sell; a conflicting group by its larger flow (ties:
    sell, i.e. harvest); a group ``x`` only
    buys, or only sells at a loss, keeps what ``x`` does; an untouched one by its active
    weight after ``x`` (underweight: buy)."""
    open_ = p.ub > 0
    can_buy = set(np.unique(p.wash_group[(p.kind == VarKind.BUY) & open_]).tolist())
    can_loss = set(np.unique(p.wash_group[p.loss_sale & open_]).tolist())
    forced_loss = set(np.unique(p.wash_group[p.loss_sale & (p.lb > 0)]).tolist())
    groups = can_buy & can_loss
    if not groups:
        return {}
    buys, losses = _group_flows(p, x)
    active = p.weights_after(x) - p.target
    sec_group = np.full(len(p.securities), -1, np.int64)
    sec_group[p.security] = p.wash_group
    modes = {}
    for g in groups:
        b, l = buys.get(g, 0.0), losses.get(g, 0.0)
        if g in forced_loss:
            modes[g] = "sell"  # a forced loss sale (divestment): the group cannot be bought
        elif b > 0 or l > 0:
            modes[g] = "sell" if l >= b else "buy"
        else:
            modes[g] = "buy" if float(np.sum(active[sec_group == g])) < 0 else "sell"
    return modes


def _settle_directions(p: HouseholdProblem, r: SolveResult, solve, modes: dict[int, str]):
    """If ``r`` buys a group and sells it at a loss, give every group that could do both a
    direction (:func:`_directions`, ``modes`` first) and solve once more: the result cannot
    conflict. If those directions leave no feasible trades, every group gets 'sell'.
    A generator (``solve`` yields the problem); returns (problem, result)."""
    _check(p, r)
    if not _conflicts(p, r.x):
        r.extra.update(modes=dict(modes))
        return p, r
    fixed = {**_directions(p, r.x), **modes}
    q = p.restrict(_mode_mask(p, fixed))
    r2 = yield from solve(q, r.start)
    if not r2.status.usable and any(m == "buy" for m in fixed.values()):
        # A 'buy' direction forbade a loss sale the budget or a cash reserve needs. 'sell'
        # only forbids buys, which no hard rule needs, so all-'sell' is always feasible (the
        # solver may report such an empty set as a failure rather than certify it).
        fixed = {g: "sell" for g in fixed}
        q = p.restrict(_mode_mask(p, fixed))
        r2 = yield from solve(q)
    _check(q, r2)
    if _conflicts(q, r2.x):  # cannot happen: every group that could conflict has a direction
        raise SolverFailure(p.household_id, r2.solver, "wash-sale directions did not settle")
    r2.extra.update(modes=fixed)
    return q, r2


def _tax_split(hh: Household, lt: LotTax, orders: Orders, naive: NaiveRebalance, date) -> dict[str, float]:
    """Tax of the optimized and the naive trades and the section-6 split of the difference.

    harvest: tax benefit of the optimizer's losses minus the naive's; the gains part (naive
    gain tax minus optimized gain tax) splits into wait (short-term gains the naive sold and
    the optimizer kept, at the rate difference) and deferral (the rest).
    """
    sold_value = orders.sold * lt.price
    taxable = lt.taxable
    opt_g = lt.g_eff  # the optimizer never buys a group it sells at a loss: no in-run disallowance
    nv_g = np.where(naive.loss_disallowed, np.maximum(lt.gain, 0.0), lt.gain)
    opt = np.where(taxable, sold_value * opt_g * lt.rate, 0.0)
    nv = np.where(taxable, naive.lot_sold * nv_g * lt.rate, 0.0)
    gain_part = float(np.sum(np.where(nv > 0, nv, 0.0)) - np.sum(np.where(opt > 0, opt, 0.0)))
    harvest = float(-np.sum(np.where(opt < 0, opt, 0.0)) + np.sum(np.where(nv < 0, nv, 0.0)))
    t_st = hh.short_term_rate + hh.state_rate
    t_lt = hh.long_term_rate + hh.state_rate
    kept = np.maximum(naive.lot_sold - sold_value, 0.0)
    wait = float(np.sum(np.where(taxable & ~lt.long_term & (lt.gain > 0), kept * lt.gain * (t_st - t_lt), 0.0)))
    wait = min(max(wait, 0.0), max(gain_part, 0.0))
    return {"tax": float(np.sum(opt)), "naive_tax": float(np.sum(nv)), "harvest": harvest,
            "deferral": gain_part - wait, "wait": wait}


def _trades(market: Market, hh: Household, p: HouseholdProblem, orders: Orders, lt: LotTax) -> Trades:
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

    rows = []
    order = np.lexsort((lots.lot_id, lots.account))
    harvested = False
    for a in range(hh.n_accounts):
        excluded = market.screened(acc.screens[a])
        never_buy = set(acc.never_buy[a].tolist())
        target_pos = set(p.account_targets[a][0].tolist())
        cash_need = max(acc.reserve[a] - acc.cash[a], 0.0)
        sell_ls = order[(lots.account[order] == a) & (orders.sold[order] > 0)]
        # Cash-raising sales: the cheapest first, up to the shortfall.
        for l in sorted(sell_ls, key=lambda l: (lt.priced[l] * lt.g_eff[l] if lt.taxable[l] else 0.0)):
            s = int(lots.security[l])
            v = orders.sold[l] * lt.price[l]
            if excluded[s]:
                reason = TradeReason.SCREEN
            elif s in never_buy:
                reason = TradeReason.RESTRICTION
            elif cash_need > 1e-6:
                reason = TradeReason.CASH
                cash_need -= v
            elif in_transition[a] and s not in target_pos:
                reason = TradeReason.TRANSITION
            elif lt.taxable[l] and lt.gain[l] < 0 and not lt.disallowed[l] and (below_target[loc[l]] or p.target[loc[l]] == 0):
                reason = TradeReason.HARVEST
                harvested = True
            else:
                reason = TradeReason.REBALANCE
            rows.append((a, s, int(l), False, orders.sold[l], lt.price[l], v,
                         v * lt.gain[l] if lt.taxable[l] else 0.0, bool(lt.long_term[l]),
                         bool(lt.taxable[l] and lt.disallowed[l] and lt.gain[l] < 0), reason.value))
    for a in range(hh.n_accounts):
        deposit_left = acc.deposit[a]
        for i in np.flatnonzero(orders.buys[a] > 0):
            v = orders.buys[a, i] * p.price[i]
            if deposit_left > 1e-6:
                reason = TradeReason.DEPOSIT
                deposit_left -= v
            elif in_transition[a]:
                reason = TradeReason.TRANSITION
            elif harvested and above_target[i]:
                reason = TradeReason.HARVEST
            else:
                reason = TradeReason.REBALANCE
            rows.append((a, int(p.securities[i]), -1, True, orders.buys[a, i], p.price[i], v, 0.0, False, False,
                         reason.value))
    cols = list(zip(*rows)) if rows else [()] * 11
    return Trades(
        account=np.array(cols[0], np.int64), security=np.array(cols[1], np.int64), lot=np.array(cols[2], np.int64),
        is_buy=np.array(cols[3], bool), shares=np.array(cols[4], float), price=np.array(cols[5], float),
        value=np.array(cols[6], float), realized_gain=np.array(cols[7], float), long_term=np.array(cols[8], bool),
        loss_disallowed=np.array(cols[9], bool), reason=np.array(cols[10], object))
