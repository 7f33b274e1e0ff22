"""The optimizer on generated households (every kind the generator makes) and on asset location."""
from __future__ import annotations

import math

import numpy as np
import pytest

import handmarket as hm
from rebalancer.generate import GeneratorSettings, generate_bucket, reference_tables
from rebalancer.household import TAXABLE, split_households
from rebalancer.market import Market
from rebalancer.optimize import HouseholdStatus, rebalance_household
from rebalancer.problem import build_problem
from rebalancer.settings import OptimizerSettings
from rebalancer.universe import build_universe


@pytest.fixture(scope="module")
def generated():
    """One generated bucket of 500 accounts (~215 households): ETF, multi-account, direct
    index, transitions, screens, restrictions, reserves, deposits, live wash windows."""
    u = build_universe()
    market = Market.from_tables(reference_tables(u), u.as_of)
    tables, _ = generate_bucket(GeneratorSettings(accounts=500, seed=11, accounts_per_bucket=500), 0)
    hhs, rejected = split_households(market, tables)
    return market, hhs, rejected, tables


def _cash_after(hh, r):
    t = r.trades
    flow = np.bincount(t.account, weights=np.where(t.is_buy, -t.value, t.value), minlength=hh.n_accounts)
    return hh.accounts.cash + flow


@pytest.mark.slow
def test_every_generated_household_is_solved_within_its_rules(generated):
    market, hhs, rejected, tables = generated
    assert not rejected
    assert sum(h.n_accounts for h in hhs) == tables["accounts"].num_rows
    kinds = {"direct": 0, "multi": 0, "budget": 0}
    for hh in hhs:
        r = rebalance_household(market, hh)
        assert r.status in (HouseholdStatus.OPTIMAL, HouseholdStatus.BUDGET_EXCEEDED)
        t = r.trades
        # residuals of the convex solution, in dollars
        assert r.primal_residual <= 1e-6 * r.value
        assert r.dual_residual <= 1e-4 * r.value or r.solver.endswith("+naive")
        # no shorts, sells only from held lots
        sold = np.zeros(len(hh.lots))
        np.add.at(sold, t.lot[~t.is_buy], t.shares[~t.is_buy])
        assert np.all(sold <= hh.lots.shares + 1e-9)
        assert np.all(hh.lots.account[t.lot[~t.is_buy]] == t.account[~t.is_buy])
        assert np.all(t.shares > 0)
        # cash after trades >= reserve
        assert np.all(_cash_after(hh, r) >= hh.accounts.reserve - 0.01)
        # budget
        if r.status == HouseholdStatus.OPTIMAL and math.isfinite(r.budget_room):
            gain = r.realized_st_gain + r.realized_st_loss + r.realized_lt_gain + r.realized_lt_loss
            assert gain <= r.budget_room + 0.01
        # in-run wash-sale exclusivity
        bought = set(market.wash_group[t.security[t.is_buy]].tolist())
        loss_sold = ~t.is_buy & (t.realized_gain < 0) & (hh.accounts.account_type[t.account] == TAXABLE)
        assert not bought & set(market.wash_group[t.security[loss_sold]].tolist())
        # the optimizer never does worse than the naive rebalance when that one is allowed
        if r.naive_feasible:
            assert r.objective_continuous <= r.naive_objective + 1e-6 * r.value
        kinds["direct"] += bool((hh.accounts.di_etf >= 0).any())
        kinds["multi"] += hh.n_accounts > 1
        kinds["budget"] += math.isfinite(hh.tax_budget)
    assert min(kinds.values()) >= 10, kinds


def test_asset_location_puts_bonds_in_the_ira_and_equity_in_the_taxable_account():
    """Taxable $600k and IRA $400k, both on 60/40 (IDXA/BOND), both in cash. Bond interest is
    taxed at the ordinary rate (4% yield x 42% = 1.68% a year of drag in the taxable account),
    the index ETF has no yield here: the household target is the same wherever each sits, so
    the optimizer holds the bonds in the IRA."""
    m = hm.market()
    hh = hm.household(m, [hm.account(1, "taxable", 2, cash=600_000.0), hm.account(2, "traditional", 2, cash=400_000.0)], [])
    r = rebalance_household(m, hh)
    t = r.trades
    bond_in = {a: float(t.value[t.is_buy & (t.security == hm.BOND) & (t.account == a)].sum()) for a in (0, 1)}
    # The IRA is (almost) all bonds: the last ~$1,000 of bonds would cost 1.68% a year of drag
    # in the taxable account ($17) against ~$3 of tracking variance, so it stays a hair short.
    assert bond_in[1] == pytest.approx(400_000.0, rel=5e-3)
    assert bond_in[0] == 0.0
    assert r.te_after < 1e-3


def test_problem_scaling_and_bounds_on_a_direct_indexed_household(generated):
    market, hhs, _, _ = generated
    hh = next(h for h in hhs if (h.accounts.di_etf >= 0).any())
    p = build_problem(market, hh, OptimizerSettings())
    assert p.value == pytest.approx(hh.value(market))
    assert p.w0.sum() <= 1.0 + 1e-12
    assert p.target.sum() == pytest.approx(1.0 - hh.accounts.reserve.sum() / p.value)
    assert np.all(p.lb <= p.ub)
    # the direct-indexed ETF's weight went to its constituents: many stocks in the target
    assert np.count_nonzero(p.target[market.kind[p.securities] == "stock"]) > 100
