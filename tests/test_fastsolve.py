"""The batched interior-point solver against the reference (cvxpy + Clarabel) on generated
households of every kind: same objective within max(1e-3 x |reference|, 1e-5 x value)."""
from __future__ import annotations

import numpy as np
import pytest

from rebalancer.book import Book
from rebalancer.fastsolve import risk_structure, solve_batch
from rebalancer.generate import GeneratorSettings, generate_book
from rebalancer.household import split_households
from rebalancer.market import Market
from rebalancer.problem import build_problem
from rebalancer.reference import solve_reference
from rebalancer.schema import HOUSEHOLD_TABLES, REFERENCE_TABLES
from rebalancer.settings import OptimizerSettings


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("book"))
    generate_book(GeneratorSettings(accounts=120, seed=21, accounts_per_bucket=120), uri)
    book = Book.open(uri)
    market = Market.from_tables({t.name: book.read(t.name) for t in REFERENCE_TABLES}, book.as_of)
    hhs, _ = split_households(market, {t.name: book.read(t.name, 0) for t in HOUSEHOLD_TABLES})
    return [build_problem(market, h, OptimizerSettings()) for h in hhs]


def test_risk_structure_is_exact(problems):
    for p in problems[:10]:
        Dp, W, Z = risk_structure(p)
        P = 2 * p.risk_aversion * (p.exposures @ p.factor_cov @ p.exposures.T
                                   + p.lookthrough @ np.diag(p.specific_var) @ p.lookthrough.T)
        assert np.abs(np.diag(Dp) + W @ Z.T - P).max() <= 1e-10 * max(1.0, np.abs(P).max())


def test_batched_solver_agrees_with_the_reference(problems):
    small = [p for p in problems if len(p.securities) < 100]
    big = [p for p in problems if len(p.securities) >= 100]
    assert small and big  # fund households and direct-indexed ones
    usable = 0
    for group in (small, big):
        for p, f in zip(group, solve_batch(group)):
            r = solve_reference(p)
            if not f.status.usable:
                continue
            usable += 1
            assert f.primal_residual <= 1e-7
            assert abs(f.objective - r.objective) <= max(1e-3 * abs(r.objective), 1e-5), p.household_id
    assert usable >= 0.95 * len(problems)
