"""What a solver returns for one household problem: the trades vector, status, residuals."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SolveStatus", "SolveResult"]


class SolveStatus(enum.StrEnum):
    OPTIMAL = "optimal"
    OPTIMAL_INACCURATE = "optimal_inaccurate"  # solved to reduced accuracy; usable, flagged
    INFEASIBLE = "infeasible"
    FAILED = "failed"  # numerical failure, iteration limit, solver error

    @property
    def usable(self) -> bool:
        return self in (SolveStatus.OPTIMAL, SolveStatus.OPTIMAL_INACCURATE)


@dataclass(frozen=True, eq=False)
class SolveResult:
    """x : (N,) the solution (units of household value), clipped into its bounds.
    objective : f(x) in units of V, evaluated by the problem (not the solver's own figure).
    primal_residual : largest constraint violation of x before clipping (units of V).
    dual_residual : infinity norm of the KKT stationarity residual (units of V), NaN if unknown.
    iterations, setup_seconds, solve_seconds : solver statistics.
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
