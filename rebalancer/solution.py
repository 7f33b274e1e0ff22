"""What a solver returns for one household problem: the trades vector, status, residuals."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SolveStatus", "SolveResult", "WarmStart"]


class SolveStatus(enum.StrEnum):
    OPTIMAL = "optimal"
    OPTIMAL_INACCURATE = "optimal_inaccurate"  # solved to reduced accuracy; usable, flagged
    INFEASIBLE = "infeasible"
    FAILED = "failed"  # numerical failure, iteration limit, solver error

    @property
    def usable(self) -> bool:
        return self in (SolveStatus.OPTIMAL, SolveStatus.OPTIMAL_INACCURATE)


@dataclass(frozen=True, eq=False)
class WarmStart:
    """Where an interior-point solve of a problem ended, to start a solve of a problem with the
    same variables from (a re-solve with some of them fixed, a relaxed budget, yesterday's
    problem of the household): x (N,) trades, zl and zu (N,) the duals of the lower and upper
    bounds (0 for a fixed variable), y (n_accounts + 1,) of the cash rows and the budget row.
    Units of household value, as the problem's."""
    x: np.ndarray
    zl: np.ndarray
    zu: np.ndarray
    y: np.ndarray


@dataclass(frozen=True, eq=False)
class SolveResult:
    """x : (N,) the solution (units of household value), clipped into its bounds.
    objective : f(x) in units of V, evaluated by the problem (not the solver's own figure).
    primal_residual : largest constraint violation of x before clipping (units of V).
    dual_residual : infinity norm of the KKT stationarity residual (units of V), NaN if unknown.
    iterations, setup_seconds, solve_seconds : solver statistics.
    start : the solver's final iterate, for a warm start of a related problem (None when the
        solver has none to give: the reference).
    """
    solver: str
    status: SolveStatus
    x: np.ndarray
    objective: float
    primal_residual: float
    dual_residual: float
    iterations: int
    setup_seconds: float
    solve_seconds: float
    message: str = ""
    extra: dict = field(default_factory=dict)
    start: WarmStart | None = None
