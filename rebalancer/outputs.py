"""The outputs of a run as Arrow tables (DESIGN section 3): trades, households, accounts, rejected.

One row per lot sold or security bought; one row per household rebalanced; one row per
account of a rebalanced household (its distance from its own model before and after, for
dispersion, see :mod:`rebalancer.dispersion`); one row per account that could not be
processed, with its reason. Rows carry ids, never client names.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pyarrow as pa

from .household import Household, Rejection
from .market import Market
from .optimize import HouseholdResult
from .schema import AccountType, TradeSide

__all__ = ["TRADES_SCHEMA", "HOUSEHOLDS_SCHEMA", "ACCOUNTS_SCHEMA", "REJECTED_SCHEMA", "trades_table",
           "households_table", "accounts_table", "rejected_table"]


def _f(name: str, type_: pa.DataType, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


TRADES_SCHEMA = pa.schema([
    _f("household_id", pa.int64(), "Household."),
    _f("account_id", pa.int64(), "Account the trade is in."),
    _f("security_id", pa.int32(), "Security traded."),
    _f("lot_id", pa.int64(), "Lot sold (sells); null for buys.", True),
    _f("side", pa.string(), "buy | sell."),
    _f("shares", pa.float64(), "Shares traded (> 0)."),
    _f("price", pa.float64(), "Price used, USD/share (the book's as-of close)."),
    _f("value", pa.float64(), "shares * price, USD."),
    _f("realized_gain", pa.float64(), "Sells in taxable accounts: realized gain, USD (negative: loss); 0 in IRAs; null for buys.", True),
    _f("term", pa.string(), "Sells: ST | LT; null for buys.", True),
    _f("loss_disallowed", pa.bool_(), "A loss the wash-sale rule disallows."),
    _f("reason", pa.string(), "rebalance | harvest | cash | screen | restriction | transition | deposit."),
])

_HH_FIELDS = [
    ("value", pa.float64(), "Household value before trades, USD."),
    ("te_before", pa.float64(), "Tracking error before trades (annual volatility)."),
    ("te_after", pa.float64(), "Tracking error after trades."),
    ("te_naive", pa.float64(), "Tracking error after the naive rebalance."),
    ("realized_st_gain", pa.float64(), "Short-term gains realized, USD."),
    ("realized_st_loss", pa.float64(), "Short-term losses realized (<= 0), USD."),
    ("realized_lt_gain", pa.float64(), "Long-term gains realized, USD."),
    ("realized_lt_loss", pa.float64(), "Long-term losses realized (<= 0), USD."),
    ("disallowed_loss", pa.float64(), "Losses realized but disallowed by wash sales (<= 0), USD."),
    ("tax", pa.float64(), "Tax of the run's realized gains at the household's rates, USD."),
    ("naive_tax", pa.float64(), "Tax of the naive rebalance (FIFO, no harvesting, no deferral), USD."),
    ("taxes_saved", pa.float64(), "naive_tax - tax, USD."),
    ("harvest_value", pa.float64(), "Part of taxes_saved from extra losses harvested, USD."),
    ("deferral_value", pa.float64(), "Part from gains not realized, USD."),
    ("wait_value", pa.float64(), "Part from short-term gains left to turn long-term, USD."),
    ("fee", pa.float64(), "Annual advisory fee, USD."),
    ("bought", pa.float64(), "Value bought, USD."),
    ("sold", pa.float64(), "Value sold, USD."),
    ("turnover", pa.float64(), "(bought + sold) / value."),
    ("objective", pa.float64(), "Objective of the trades, USD."),
    ("objective_continuous", pa.float64(), "Objective of the convex solution, USD."),
    ("rounding_cost", pa.float64(), "objective - objective_continuous, USD."),
    ("naive_objective", pa.float64(), "Objective of the naive trades, USD."),
    ("naive_feasible", pa.bool_(), "The naive trades obey every rule of the problem."),
    ("budget_room", pa.float64(), "Gains the run could realize under the tax budget, USD (inf: no budget)."),
    ("budget_overrun", pa.float64(), "Realized gain above the budget, USD."),
    ("primal_residual", pa.float64(), "Largest constraint violation of the convex solution, USD."),
    ("dual_residual", pa.float64(), "KKT stationarity residual, USD."),
    ("iterations", pa.int32(), "Solver iterations of the final solve."),
    ("solves", pa.int32(), "Solves for this household."),
    ("fallbacks", pa.int32(), "Solves the fast solver handed to the reference because it did not converge."),
]
# Timings are not columns: the outputs of a run are a pure function of its inputs (same bytes
# on a re-run or a retried task); per-shard timings go to the shard's completion record.
HOUSEHOLDS_SCHEMA = pa.schema(
    [_f("household_id", pa.int64(), "Household."),
     _f("status", pa.string(), "optimal | optimal_inaccurate | budget_exceeded | rejected."),
     _f("solver", pa.string(), "Solver that produced the trades; null if rejected.", True),
     _f("reason", pa.string(), "Why the household was rejected (its first rejected account's reason); null otherwise.", True),
     _f("accounts", pa.int32(), "Accounts in the household (rejected: accounts rejected)."),
     _f("trades", pa.int32(), "Trade rows.")]
    + [_f(n, t, d + " Null if rejected.", True) for n, t, d in _HH_FIELDS])

ACCOUNTS_SCHEMA = pa.schema([
    _f("account_id", pa.int64(), "Account (of a rebalanced household; rejected accounts are in rejected/)."),
    _f("household_id", pa.int64(), "Its household."),
    _f("model_id", pa.int32(), "Model the account follows."),
    _f("account_type", pa.string(), "taxable | traditional | roth."),
    _f("direct_indexed", pa.bool_(), "The account holds an index's stocks in place of an ETF."),
    _f("value", pa.float64(), "Account value before trades (holdings plus cash), USD."),
    _f("te_before", pa.float64(), "Tracking error against the account's own target before trades (annual volatility)."),
    _f("te_after", pa.float64(), "The same after the run's trades."),
    _f("te_naive", pa.float64(), "The same after the naive rebalance."),
    _f("active_before", pa.float64(), "Active share before trades: half the sum of |active weights|, cash included."),
    _f("active_after", pa.float64(), "Active share after the run's trades."),
    _f("active_naive", pa.float64(), "Active share after the naive rebalance."),
])

_ACCOUNT_TYPES = np.array([AccountType.TAXABLE.value, AccountType.TRADITIONAL.value, AccountType.ROTH.value])

REJECTED_SCHEMA = pa.schema([
    _f("account_id", pa.int64(), "Account that could not be processed."),
    _f("household_id", pa.int64(), "Its household (rejected whole)."),
    _f("stage", pa.string(), "data (bad input) | optimization (infeasible, solver failure) | error (an unexpected failure of this household's run)."),
    _f("reason", pa.string(), "What is wrong, naming the table, row and field where there is one."),
    _f("table", pa.string(), "Table of the offending record.", True),
    _f("key", pa.string(), "Its key.", True),
    _f("field", pa.string(), "Its field.", True),
])


def trades_table(pairs: Iterable[tuple[Household, HouseholdResult]], market: Market) -> pa.Table:
    """All trades of ``(household, result)`` pairs, in the order given."""
    cols: dict[str, list] = {f.name: [] for f in TRADES_SCHEMA}
    for hh, r in pairs:
        t = r.trades
        n = len(t)
        if n == 0:
            continue
        cols["household_id"].append(np.full(n, hh.household_id, np.int64))
        cols["account_id"].append(hh.accounts.account_id[t.account])
        cols["security_id"].append(market.security_id[t.security].astype(np.int32))
        cols["lot_id"].append(np.where(t.lot >= 0, hh.lots.lot_id[np.maximum(t.lot, 0)] if len(hh.lots) else -1, -1))
        cols["side"].append(np.where(t.is_buy, TradeSide.BUY.value, TradeSide.SELL.value))
        cols["shares"].append(t.shares)
        cols["price"].append(t.price)
        cols["value"].append(t.value)
        cols["realized_gain"].append(t.realized_gain)
        cols["term"].append(np.where(t.long_term, "LT", "ST"))
        cols["loss_disallowed"].append(t.loss_disallowed)
        cols["reason"].append(t.reason.astype(str))
    if not cols["household_id"]:
        return TRADES_SCHEMA.empty_table()
    c = {k: np.concatenate(v) for k, v in cols.items()}
    buy = c["side"] == TradeSide.BUY.value
    arrays = [
        pa.array(c["household_id"], pa.int64()), pa.array(c["account_id"], pa.int64()),
        pa.array(c["security_id"], pa.int32()), pa.array(c["lot_id"], pa.int64(), mask=buy),
        pa.array(c["side"], pa.string()), pa.array(c["shares"], pa.float64()), pa.array(c["price"], pa.float64()),
        pa.array(c["value"], pa.float64()), pa.array(c["realized_gain"], pa.float64(), mask=buy),
        pa.array(c["term"], pa.string(), mask=buy), pa.array(c["loss_disallowed"], pa.bool_()),
        pa.array(c["reason"], pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=TRADES_SCHEMA)


def households_table(pairs: Iterable[tuple[Household, HouseholdResult]],
                     rejections: Iterable[Rejection] = ()) -> pa.Table:
    """One row per household rebalanced (``pairs``) and per household rejected, by household id."""
    rows = []
    for hh, r in pairs:
        row = {"household_id": hh.household_id, "status": str(r.status), "solver": r.solver, "reason": None,
               "accounts": hh.n_accounts, "trades": len(r.trades), "turnover": r.turnover}
        for name, _, _ in _HH_FIELDS:
            if name not in row:
                row[name] = getattr(r, name)
        rows.append(row)
    rejected: dict[int, list[Rejection]] = {}
    for j in rejections:
        rejected.setdefault(j.household_id, []).append(j)
    for hid, js in rejected.items():
        rows.append({"household_id": hid, "status": "rejected", "solver": None, "reason": js[0].reason,
                     "accounts": len({j.account_id for j in js}), "trades": 0})
    rows.sort(key=lambda x: x["household_id"])
    return pa.Table.from_pylist(rows, schema=HOUSEHOLDS_SCHEMA) if rows else HOUSEHOLDS_SCHEMA.empty_table()


def accounts_table(pairs: Iterable[tuple[Household, HouseholdResult]]) -> pa.Table:
    """One row per account of the rebalanced households ``pairs``, in the order given."""
    parts = []
    for hh, r in pairs:
        f, acc = r.accounts, hh.accounts
        if f is None:
            raise ValueError(f"household {hh.household_id}: result has no account figures")
        parts.append({
            "account_id": acc.account_id.astype(np.int64), "household_id": np.full(hh.n_accounts, hh.household_id, np.int64),
            "model_id": acc.model_id.astype(np.int32), "account_type": _ACCOUNT_TYPES[acc.account_type],
            "direct_indexed": acc.di_etf >= 0, "value": f.value,
            "te_before": f.te_before, "te_after": f.te_after, "te_naive": f.te_naive,
            "active_before": f.active_before, "active_after": f.active_after, "active_naive": f.active_naive})
    if not parts:
        return ACCOUNTS_SCHEMA.empty_table()
    return pa.Table.from_arrays([pa.array(np.concatenate([p[f.name] for p in parts]), f.type) for f in ACCOUNTS_SCHEMA],
                                schema=ACCOUNTS_SCHEMA)


def rejected_table(rejections: Iterable[Rejection]) -> pa.Table:
    rows = [dict(account_id=r.account_id, household_id=r.household_id, stage=r.stage, reason=r.reason,
                 table=r.table or None, key=r.key or None, field=r.field or None) for r in rejections]
    return pa.Table.from_pylist(rows, schema=REJECTED_SCHEMA) if rows else REJECTED_SCHEMA.empty_table()
