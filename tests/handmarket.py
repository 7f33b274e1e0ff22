"""A small market whose numbers a test can work out by hand, and a household builder.

Securities (id: symbol, price):

    0 IBM  100   stock, tech         d = 0.03   yield 0
    1 MSFT 200   stock, tech         d = 0.03   (same exposures as IBM: its natural substitute)
    2 XOM   50   stock, energy       d = 0.05   attribute fossil_fuels
    3 JNJ  150   stock, health       d = 0.03
    4 IDXA 100   ETF on index IDX    wash group IDX
    5 IDXB 100   ETF on index IDX    wash group IDX (substantially identical to IDXA)
    6 IDXW 100   ETF on index IDXEW  wash group IDXEW (a harvest substitute for IDXA/IDXB)
    7 BOND 100   bond ETF, ordinary income, yield 4%
    8 MUNI 100   muni ETF, tax-exempt, yield 3%

Index IDX = IBM 40%, MSFT 30%, XOM 10%, JNJ 20%; IDXEW = 25% each. Factors: equity (var
0.03), tech (0.01), bond (0.002), uncorrelated. Every spread is 10 bp (a trade costs 5 bp),
yields of stocks and equity ETFs are 0, so tax drag only touches BOND and MUNI.

Models: see ``MODELS`` (model 1 "Stocks": IBM 3%, MSFT 3%, XOM 4%, JNJ 90%).

``household(...)`` builds the book tables of one household and runs them through
:func:`rebalancer.household.split_households`, so every test also goes through the checks.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from rebalancer.household import Household, split_households
from rebalancer.market import Market
from rebalancer.schema import TABLES, conform

AS_OF = dt.date(2021, 4, 21)
SPREAD = 0.001

IBM, MSFT, XOM, JNJ, IDXA, IDXB, IDXW, BOND, MUNI = range(9)

_SECURITIES = [
    # id, symbol, kind, asset_class, sector, price, wash_group, index_id, attributes, yield, class
    (IBM, "IBM", "stock", "us_equity", "Information Technology", 100.0, "IBM", None, [], 0.0, "qualified"),
    (MSFT, "MSFT", "stock", "us_equity", "Information Technology", 200.0, "MSFT", None, [], 0.0, "qualified"),
    (XOM, "XOM", "stock", "us_equity", "Energy", 50.0, "XOM", None, ["fossil_fuels"], 0.0, "qualified"),
    (JNJ, "JNJ", "stock", "us_equity", "Health Care", 150.0, "JNJ", None, [], 0.0, "qualified"),
    (IDXA, "IDXA", "etf", "us_equity", None, 100.0, "IDX", "IDX", [], 0.0, "qualified"),
    (IDXB, "IDXB", "etf", "us_equity", None, 100.0, "IDX", "IDX", [], 0.0, "qualified"),
    (IDXW, "IDXW", "etf", "us_equity", None, 100.0, "IDXEW", "IDXEW", [], 0.0, "qualified"),
    (BOND, "BOND", "etf", "us_bond", None, 100.0, "BOND", None, [], 0.04, "ordinary"),
    (MUNI, "MUNI", "etf", "muni_bond", None, 100.0, "MUNI", None, [], 0.03, "tax_exempt"),
]
INDEX = {"IDX": {IBM: 0.4, MSFT: 0.3, XOM: 0.1, JNJ: 0.2}, "IDXEW": {IBM: 0.25, MSFT: 0.25, XOM: 0.25, JNJ: 0.25}}
FACTOR_VAR = {"equity": 0.03, "tech": 0.01, "bond": 0.002}
# Exposures: stocks and equity ETFs load 1 on equity; tech stocks 1 on tech (ETFs by look-through).
SPECIFIC = {IBM: 0.03, MSFT: 0.03, XOM: 0.05, JNJ: 0.03, IDXA: 1e-6, IDXB: 1e-6, IDXW: 1e-6, BOND: 0.0004, MUNI: 0.0004}

# model id -> (name, {security: weight})
MODELS = {
    1: ("Stocks", {IBM: 0.03, MSFT: 0.03, XOM: 0.04, JNJ: 0.90}),
    2: ("Index 60/40", {IDXA: 0.60, BOND: 0.40}),
    3: ("Index", {IDXA: 1.0}),
    4: ("Bonds", {BOND: 1.0}),
    5: ("Stocks equal", {IBM: 0.25, MSFT: 0.25, XOM: 0.25, JNJ: 0.25}),
}


def _exposures(sid: int) -> dict[int, float]:
    tech = {IBM: 1.0, MSFT: 1.0}
    if sid in (IBM, MSFT, XOM, JNJ):
        return {0: 1.0, 1: tech.get(sid, 0.0)}
    if sid in (IDXA, IDXB, IDXW):
        idx = INDEX["IDX" if sid != IDXW else "IDXEW"]
        return {0: 1.0, 1: sum(w * tech.get(s, 0.0) for s, w in idx.items())}
    return {2: 1.0}


def reference_tables(models: dict | None = None) -> dict[str, pa.Table]:
    models = models or MODELS
    cols = ["security_id", "symbol", "kind", "asset_class", "sector", "price", "wash_group", "index_id",
            "attributes", "yield", "income_tax_class"]
    sec = [dict(zip(cols, r), name=r[1], spread=SPREAD) for r in _SECURITIES]
    exp_rows = [dict(security_id=s, factor_id=f, exposure=x) for s in range(len(_SECURITIES))
                for f, x in _exposures(s).items() if x != 0]
    F = np.diag(list(FACTOR_VAR.values()))
    rows = {
        "securities": sec,
        "models": [dict(model_id=m, model_name=n, security_id=s, weight=w) for m, (n, ws) in models.items()
                   for s, w in ws.items()],
        "index_constituents": [dict(index_id=i, security_id=s, weight=w) for i, ws in INDEX.items() for s, w in ws.items()],
        "screens": [dict(screen_id="fossil_free", attribute="fossil_fuels")],
        "risk_factors": [dict(factor_id=i, name=n, kind="asset_class") for i, n in enumerate(FACTOR_VAR)],
        "risk_covariance": [dict(factor_row=r, factor_col=c, covariance=float(F[r, c])) for r in range(3) for c in range(3)],
        "risk_exposures": exp_rows,
        "risk_specific": [dict(security_id=s, specific_variance=v) for s, v in SPECIFIC.items()],
    }
    return {name: conform(pa.Table.from_pylist(r), TABLES[name]) for name, r in rows.items()}


def market(models: dict | None = None, as_of: dt.date = AS_OF) -> Market:
    return Market.from_tables(reference_tables(models), as_of)


def account(account_id: int, account_type: str = "taxable", model_id: int = 1, cash: float = 0.0, *,
            deposit: float = 0.0, cash_reserve: float = 0.0, screens=(), never_buy=(), never_sell=(),
            direct_index_etf=None, min_trade: float = 0.0, min_position: float | None = None,
            cash_band: float | None = None, fractional_shares: bool = True,
            transition_years: int = 0, transition_start: dt.date | None = None) -> dict:
    return dict(account_id=account_id, account_type=account_type, model_id=model_id, cash=cash, deposit=deposit,
                cash_reserve=cash_reserve, screens=list(screens), never_buy=list(never_buy),
                never_sell=list(never_sell), direct_index_etf=direct_index_etf, min_trade=min_trade,
                min_position=min_position, cash_band=cash_band, fractional_shares=fractional_shares,
                transition_years=transition_years, transition_start=transition_start)


def lot(lot_id: int, account_id: int, security_id: int, shares: float, cost_basis: float, acquired: dt.date) -> dict:
    return dict(lot_id=lot_id, account_id=account_id, security_id=security_id, shares=shares,
                cost_basis=cost_basis, acquired=acquired)


def trade(trade_id: int, account_id: int, security_id: int, trade_date: dt.date, side: str, shares: float,
          price: float, realized_gain: float | None = None) -> dict:
    return dict(trade_id=trade_id, account_id=account_id, security_id=security_id, trade_date=trade_date,
                side=side, shares=shares, price=price, realized_gain=realized_gain)


def household(mkt: Market, accounts: list[dict], lots: list[dict], recent: list[dict] = (), *,
              household_id: int = 1, short_term_rate: float = 0.37, long_term_rate: float = 0.238,
              state_rate: float = 0.05, ytd_realized_st: float = 0.0, ytd_realized_lt: float = 0.0,
              loss_carryforward_st: float = 0.0, loss_carryforward_lt: float = 0.0, tax_budget: float | None = None,
              fee_rate: float = 0.01, tax_sensitivity: float = 1.0) -> Household:
    """One household through the real table path; raises the BookDataError a book would get."""
    base = dict(household_id=household_id, bucket=0)
    tables = {
        "households": [dict(base, advisor_id=1, short_term_rate=short_term_rate, long_term_rate=long_term_rate,
                            state_rate=state_rate, ytd_realized_st=ytd_realized_st, ytd_realized_lt=ytd_realized_lt,
                            loss_carryforward_st=loss_carryforward_st, loss_carryforward_lt=loss_carryforward_lt,
                            tax_budget=tax_budget, fee_rate=fee_rate, tax_sensitivity=tax_sensitivity)],
        "accounts": [dict(base, **a) for a in accounts],
        "lots": [dict(base, **l) for l in lots],
        "recent_trades": [dict(base, **t) for t in recent],
    }
    arrow = {n: conform(pa.Table.from_pylist(rows, schema=TABLES[n].schema), TABLES[n]) for n, rows in tables.items()}
    hhs, rejected = split_households(mkt, arrow)
    if rejected:
        raise AssertionError(f"household rejected: {rejected[0].reason}")
    assert len(hhs) == 1
    return hhs[0]


def days_ago(n: int) -> dt.date:
    return AS_OF - dt.timedelta(days=n)


def hand_covariance(ids) -> np.ndarray:
    """Security covariance ``X F X' + L D L'`` of ``ids`` worked out from this module's
    constants alone (no rebalancer code), for checking optima by hand.

    Stocks load 1 on equity (and tech for IBM/MSFT) and carry their own specific variance.
    An index ETF loads 1 on equity and its index's tech weight; its specific risk is its
    constituents' (look-through) plus a residual of its own, max(d_ETF - sum w^2 d, 0.001^2)
    (= 1e-6 for IDXA/IDXB/IDXW). BOND and MUNI load 1 on the bond factor.
    """
    tech = {IBM: 1.0, MSFT: 1.0}
    index_of = {IDXA: "IDX", IDXB: "IDX", IDXW: "IDXEW"}
    rows, var = [], {}
    for s in ids:
        if s in index_of:
            members = INDEX[index_of[s]]
            rows.append({**members, ("residual", s): 1.0})
            for c in members:
                var[c] = SPECIFIC[c]
            var[("residual", s)] = max(SPECIFIC[s] - sum(w * w * SPECIFIC[c] for c, w in members.items()), 1e-6)
        else:
            rows.append({s: 1.0})
            var[s] = SPECIFIC[s]
    keys = list(var)
    L = np.array([[r.get(k, 0.0) for k in keys] for r in rows])
    X = []
    for s in ids:
        if s in (BOND, MUNI):
            X.append([0.0, 0.0, 1.0])
        elif s in index_of:
            X.append([1.0, sum(w * tech.get(c, 0.0) for c, w in INDEX[index_of[s]].items()), 0.0])
        else:
            X.append([1.0, tech.get(s, 0.0), 0.0])
    X = np.array(X)
    F = np.diag(list(FACTOR_VAR.values()))
    return X @ F @ X.T + L @ np.diag([var[k] for k in keys]) @ L.T
