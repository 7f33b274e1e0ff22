"""The solvers a run can name, as batch solvers: a list of problems in, one result each out.

- ``fast`` (the default): :func:`rebalancer.fastsolve.solve_batch`, all problems of a batch
  solved together, a re-solve from the warm start it is given. A problem it does not solve (status ``failed``) is solved again by the
  reference, and that result is marked ``extra["fallback"] = True``: the household's
  ``fallbacks`` count and the run summary show how often that happened. If the batch itself
  raises (a bug, not a hard problem), every problem of it falls back.
- ``reference``: cvxpy + Clarabel (:func:`rebalancer.reference.solve_reference`), one
  problem at a time, always from a cold start (Clarabel takes none).
"""
from __future__ import annotations

import logging

from .fastsolve import solve_batch
from .problem import HouseholdProblem
from .reference import solve_reference
from .solution import SolveResult, WarmStart

__all__ = ["SOLVERS", "DEFAULT_SOLVER", "fast_with_fallback", "reference_batch"]

log = logging.getLogger(__name__)


def reference_batch(problems: list[HouseholdProblem], tolerance: float,
                    starts: list[WarmStart | None] | None = None) -> list[SolveResult]:
    return [solve_reference(p, tolerance) for p in problems]


def _fallback(p: HouseholdProblem, tolerance: float, why: str) -> SolveResult:
    r = solve_reference(p, tolerance)
    r.extra.update(fallback=True, fallback_reason=why)
    return r


def fast_with_fallback(problems: list[HouseholdProblem], tolerance: float,
                       starts: list[WarmStart | None] | None = None) -> list[SolveResult]:
    try:
        results = solve_batch(problems, tolerance, starts)
    except Exception as e:  # noqa: BLE001 - a solver bug must cost speed, not households
        log.exception("fast solver failed on a batch of %d problems; solving them with the reference", len(problems))
        return [_fallback(p, tolerance, f"batch raised {type(e).__name__}: {e}") for p in problems]
    return [r if r.status.usable else _fallback(p, tolerance, r.message) for p, r in zip(problems, results)]


SOLVERS = {"fast": fast_with_fallback, "reference": reference_batch}
DEFAULT_SOLVER = "fast"
