"""The reference solver: the household problem in cvxpy, solved by Clarabel (interior point).

Exact to the solver's tolerance and slow (the problem is compiled for each household); the
fast batched solver must agree with it. Variables fixed by their bounds (blocked buys, forced
or forbidden sells) are taken out before the problem is compiled.

The tracking term is written in the lifted form ``w = w0 + A x`` with the factor part
``C' X' (w - target)`` (k rows) and the specific part ``sqrt(d) * L' (w - target)`` (m rows),
both as sums of squares, so Clarabel sees a sparse QP.
"""
from __future__ import annotations

import time
import warnings

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

from .problem import HouseholdProblem
from .solution import SolveResult, SolveStatus

__all__ = ["solve_reference", "SOLVER_NAME"]

SOLVER_NAME = "reference"

_STATUS = {
    cp.OPTIMAL: SolveStatus.OPTIMAL,
    cp.OPTIMAL_INACCURATE: SolveStatus.OPTIMAL_INACCURATE,
    cp.INFEASIBLE: SolveStatus.INFEASIBLE,
    cp.INFEASIBLE_INACCURATE: SolveStatus.INFEASIBLE,
}


def solve_reference(p: HouseholdProblem, tolerance: float = 1e-8) -> SolveResult:
    """Solve ``p`` with cvxpy + Clarabel; never raises for solver trouble (see ``status``)."""
    t0 = time.perf_counter()
    ub = p.ub
    free = ub > p.lb + 1e-15
    fixed_x = np.where(free, 0.0, p.lb)
    fi = np.flatnonzero(free)
    A = p.incidence()
    C = p.cash_matrix()
    d0 = p.w0 - p.target + A @ fixed_x
    cash_rhs = p.cash_rhs - C @ fixed_x
    budget = p.budget - float(p.gain @ fixed_x)

    n = len(p.securities)
    M1 = p.factor_chol.T @ p.exposures.T  # (k, n)
    M2 = sp.csr_matrix(np.sqrt(p.specific_var)[:, None] * p.lookthrough.T)  # (m, n)
    x = cp.Variable(len(fi))
    a = cp.Variable(n)  # active weights after trades
    Af = A[:, fi]
    Cf = C[:, fi]
    cons = [a == d0 + Af @ x, x >= p.lb[fi]]
    fin = np.isfinite(ub[fi])
    if fin.any():
        cons.append(x[np.flatnonzero(fin)] <= ub[fi][fin])
    cons.append(Cf @ x <= cash_rhs)
    has_budget = np.isfinite(budget)
    if has_budget:
        cons.append(p.gain[fi] @ x <= budget)
    q = p.impact[fi]
    obj = (p.risk_aversion * (cp.sum_squares(M1 @ a) + cp.sum_squares(M2 @ a))
           + p.cost[fi] @ x + cp.sum_squares(cp.multiply(np.sqrt(q), x)))
    prob = cp.Problem(cp.Minimize(obj), cons)
    status, message, iters, solve_s = SolveStatus.FAILED, "", 0, 0.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # inaccuracy is reported through the status
            prob.solve(solver=cp.CLARABEL, tol_gap_abs=tolerance, tol_gap_rel=tolerance, tol_feas=tolerance,
                       max_iter=200)
        status = _STATUS.get(prob.status, SolveStatus.FAILED)
        message = str(prob.status)
        st = prob.solver_stats
        iters = int(st.num_iters or 0)
        solve_s = float(st.solve_time or 0.0)
    except cp.error.SolverError as e:
        message = f"solver error: {e}"
    setup_s = time.perf_counter() - t0 - solve_s

    xs = fixed_x.copy()
    if status.usable and x.value is not None:
        xs[fi] = x.value
    else:
        status = status if status == SolveStatus.INFEASIBLE else SolveStatus.FAILED
    primal = max(p.violation(xs).values()) if status.usable else float("nan")
    dual = float("nan")
    if status.usable:
        dual = _kkt_residual(p, xs, fi, cons, fin, has_budget, A, C, M1)
        xs = np.clip(xs, p.lb, np.where(np.isfinite(ub), ub, np.inf))
    return SolveResult(
        solver=SOLVER_NAME, status=status, x=xs, objective=p.objective(xs) if status.usable else float("nan"),
        primal_residual=primal, dual_residual=dual, iterations=iters, setup_seconds=setup_s,
        solve_seconds=solve_s, message=message)


def _kkt_residual(p: HouseholdProblem, x: np.ndarray, fi: np.ndarray, cons, fin, has_budget, A, C, M1) -> float:
    """Stationarity residual ``|grad f + duals' grad g|_inf`` over the free variables
    (A, C, M1: the incidence, cash and factor matrices of the solve)."""
    try:
        a = p.weights_after(x) - p.target
        S = p.lookthrough * p.specific_var[None, :]
        g_w = 2.0 * p.risk_aversion * (M1.T @ (M1 @ a) + S @ (p.lookthrough.T @ a))
        grad = (A.T @ g_w + p.cost + 2.0 * p.impact * x)[fi]
        r = grad - cons[1].dual_value
        k = 2
        if fin.any():
            r[np.flatnonzero(fin)] += cons[k].dual_value
            k += 1
        r += C[:, fi].T @ cons[k].dual_value
        k += 1
        if has_budget:
            r += p.gain[fi] * float(cons[k].dual_value)
        return float(np.max(np.abs(r), initial=0.0))
    except (TypeError, ValueError):
        return float("nan")
