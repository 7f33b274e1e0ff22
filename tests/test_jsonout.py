"""Strict outputs (issue 21, point 5): JSON without NaN or Infinity, tables without NaN.

- :mod:`rebalancer.jsonout` writes null for every non-finite number and refuses to write one
  it cannot map; its reader refuses NaN and Infinity;
- a household whose trades are the naive ones (solver ``<solver>+naive``: no dual residual)
  and one without a tax budget get nulls in ``households/``, not NaN or inf;
- run totals take the largest known residual whatever the order (a NaN first made
  ``max_dual_residual`` understate).
"""
from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from handmarket import IDXA, household, lot, market
from handmarket import account as acct

from rebalancer import jsonout
from rebalancer.optimize import rebalance_household
from rebalancer.outputs import households_table
from rebalancer.reference import solve_reference
from rebalancer.solution import SolveStatus
from rebalancer.totals import merge_totals, shard_totals


def test_strict_maps_non_finite_numbers_to_null():
    obj = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": (np.float64("nan"), np.int64(3)),
           "d": np.array([1.0, np.nan]), "e": np.bool_(True), "f": "NaN"}
    text = jsonout.dumps(obj, sort_keys=True)
    assert jsonout.loads_strict(text) == {"a": None, "b": [None, None, 1.5], "c": [None, 3], "d": [1.0, None],
                                          "e": True, "f": "NaN"}
    # what ``default`` makes is made strict too
    assert jsonout.loads_strict(jsonout.dumps({"x": object()}, default=lambda o: math.nan)) == {"x": None}


@pytest.mark.parametrize("word", ["NaN", "Infinity", "-Infinity"])
def test_the_strict_reader_refuses_nan_and_infinity(word):
    assert json.loads(f'{{"x": {word}}}')  # Python's own reader takes them
    with pytest.raises(jsonout.NonStrictJSON):
        jsonout.loads_strict(f'{{"x": {word}}}')


def _naive_household():
    """An IRA of $10,000 all in IDXA against model 2 (60% IDXA, 40% BOND), no tax budget."""
    mkt = market()
    hh = household(mkt, [acct(1, "traditional", model_id=2)], [lot(11, 1, IDXA, 100.0, 80.0, dt.date(2015, 1, 2))])
    return mkt, hh


def _hold_solver(p, tolerance):
    """A solver that returns holding as a barely usable answer: the naive rebalance beats it,
    so the household keeps the naive trades (solver 'hold+naive', no dual residual)."""
    r = solve_reference(p, tolerance)
    x = np.clip(np.zeros_like(r.x), p.lb, p.ub)
    return type(r)(solver="hold", status=SolveStatus.OPTIMAL_INACCURATE, x=x, objective=p.objective(x),
                   primal_residual=0.0, dual_residual=0.0, iterations=1, setup_seconds=0.0, solve_seconds=0.0)


def test_missing_figures_are_null_in_households():
    mkt, hh = _naive_household()
    r = rebalance_household(mkt, hh, solver=_hold_solver)
    assert r.solver == "hold+naive" and math.isnan(r.dual_residual) and r.budget_room == math.inf
    t = households_table([(hh, r)])
    row = t.to_pylist()[0]
    assert row["dual_residual"] is None and row["budget_room"] is None and row["objective"] == pytest.approx(r.objective)
    for f in t.schema:
        if pa.types.is_floating(f.type):
            col = t[f.name]
            assert pc.sum(pc.is_nan(col)).as_py() in (None, 0) and pc.sum(pc.is_inf(col)).as_py() in (None, 0), f.name
    # The column docs say what the nulls mean.
    schema = households_table([]).schema
    assert b"null: the household has no budget" in schema.field("budget_room").metadata[b"doc"]
    assert b"+naive" in schema.field("dual_residual").metadata[b"doc"]


def test_totals_take_the_largest_known_residual_in_any_order():
    mkt, hh = _naive_household()
    naive = rebalance_household(mkt, hh, solver=_hold_solver)
    solved = rebalance_household(mkt, hh)
    assert math.isfinite(solved.dual_residual)
    for pairs in ([(hh, naive), (hh, solved)], [(hh, solved), (hh, naive)]):
        t = shard_totals(pairs, [])
        assert t["solver"]["max_dual_residual"] == solved.dual_residual
    # A record written before outputs were strict holds NaN; merging it must not hide the other's.
    a, b = shard_totals([(hh, solved)], []), shard_totals([(hh, solved)], [])
    a["solver"]["max_dual_residual"] = math.nan
    for parts in ((a, b), (b, a)):
        assert merge_totals(parts)["solver"]["max_dual_residual"] == solved.dual_residual
