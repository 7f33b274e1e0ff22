"""Kinds of household, for sampling and for tests: which features of the problem a household
exercises. A household can be of several kinds.

- ``small_etf``: no direct-indexed account (a fund portfolio: tens of securities);
- ``direct_index``: an account holds an index's stocks in place of its ETF (hundreds);
- ``multi_account_ira``: two or more accounts, one of them a traditional or Roth IRA;
- ``budget``: a finite tax budget (whether it binds depends on the solution:
  :func:`budget_binds`);
- ``wash_sale``: live wash-sale state: a blocked buy of a security the household may trade,
  or a lot whose loss would be disallowed;
- ``screens``: a screen, a never-buy or a never-sell list on an account.
"""
from __future__ import annotations

import math

import numpy as np

from .household import TAXABLE, Household
from .market import Market
from .problem import HouseholdProblem
from .washsale import wash_state

__all__ = ["KINDS", "household_kinds", "budget_binds"]

KINDS = ("small_etf", "direct_index", "multi_account_ira", "budget", "wash_sale", "screens")


def household_kinds(market: Market, hh: Household, p: HouseholdProblem, window: int = 30) -> frozenset[str]:
    """The kinds (of :data:`KINDS`) household ``hh`` with problem ``p`` belongs to."""
    acc = hh.accounts
    out = set()
    out.add("direct_index" if np.any(acc.di_etf >= 0) else "small_etf")
    if hh.n_accounts >= 2 and np.any(acc.account_type != TAXABLE):
        out.add("multi_account_ira")
    if math.isfinite(p.budget):
        out.add("budget")
    wash = wash_state(market, hh, p.date, window)
    if np.any(wash.blocked(market.wash_group[p.securities])) or np.any(p.lots.disallowed):
        out.add("wash_sale")
    if any(len(s) for s in acc.screens) or any(len(s) for s in acc.never_buy) or any(len(s) for s in acc.never_sell):
        out.add("screens")
    return frozenset(out)


def budget_binds(p: HouseholdProblem, x: np.ndarray, tol: float = 1e-7) -> bool:
    """The tax budget is finite and ``x`` realizes gains up to it (within ``tol``, units of V)."""
    return math.isfinite(p.budget) and float(p.gain @ x) >= p.budget - tol
