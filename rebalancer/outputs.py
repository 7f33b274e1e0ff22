"""The outputs of a run as Arrow tables (DESIGN section 3): trades, households, accounts, rejected.

One row per lot sold or security bought; one row per household rebalanced; one row per
account of a rebalanced household (its distance from its own model before and after, for
dispersion, see :mod:`rebalancer.dispersion`); one row per account that could not be
processed, with its reason. Rows carry ids, never client names.

No column holds NaN or infinity: a figure that is missing or undefined is null, and its
column's doc says when (a NaN is a number to Parquet readers: it passes a null check and
turns a sum into NaN).
"""
from __future__ import annotations

import math
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
    _f("loss_disallowed", pa.bool_(), "Some of the sell's loss is disallowed by the wash-sale rule."),
    _f("disallowed_loss", pa.float64(), "Sells: the part of realized_gain's loss the wash-sale rule disallows, pro rata to the "
       "replacement shares the household bought of the group in the 30 days before (any account), matched first in, first "
       "out (Treas. Reg. 1.1091-1), USD <= 0; null for buys.", True),
    _f("loss_destroyed", pa.float64(), "Sells: the part of disallowed_loss whose replacement is in a traditional IRA or Roth: "
       "gone for good (Rev. Rul. 2008-5), USD <= 0; the rest is deferred into the replacement lot's basis (the first "
       "lot of the replacement buy's account, security and date; its holding period tacks on); null for buys.", True),
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
    ("disallowed_loss", pa.float64(), "Losses realized but disallowed by wash sales (<= 0), USD: loss_deferred + loss_destroyed."),
    ("loss_deferred", pa.float64(), "Disallowed losses deferred into taxable replacements' basis (<= 0), USD."),
    ("loss_destroyed", pa.float64(), "Disallowed losses destroyed by replacements in an IRA or Roth (<= 0), USD."),
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
    ("objective_hold", pa.float64(), "Objective of no trades, USD; null where holding breaks a hard rule (a forced sale, a reserve short of cash). Value found: objective_hold - objective_continuous; kept by the orders: objective_hold - objective."),
    ("naive_objective", pa.float64(), "Objective of the naive trades, USD."),
    ("objective_naive_whole", pa.float64(), "Objective of the naive trades made whole by the same share and minimum rules, USD; null where those trades break a rule."),
    ("naive_feasible", pa.bool_(), "The naive trades obey every rule of the problem."),
    ("budget_room", pa.float64(), "Gains the run could realize under the tax budget, USD; null: the household has no budget."),
    ("budget_overrun", pa.float64(), "Realized gain above the budget, USD."),
    ("primal_residual", pa.float64(), "Largest constraint violation of the convex solution, USD."),
    ("dual_residual", pa.float64(), "KKT stationarity residual, USD; null where the trades have none (solver "
                                    "'<solver>+naive': the naive trades, kept because they were better than the solve)."),
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
    _f("cash_after", pa.float64(), "Cash after the run's trades, USD."),
    _f("cash_target", pa.float64(), "Cash the account targets, USD: its reserve (models hold no cash)."),
    _f("cash_band", pa.float64(), "Tolerance above the target, USD: cash above cash_target + cash_band is invested unless cash_note says why not."),
    _f("cash_note", pa.string(), "Why cash above the band was left; null where it was not.", True),
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
    """All trades of ``(household, result)`` pairs, in the order given.

    Each column is one concatenation over the households and one gather: a trade's account
    and lot (indexes into its household's) are offset by where its household's accounts and
    lots start in the concatenated ids: the same values as a gather per household. (Column
    at a time, the three tables of a shard and their Parquet took 0.16 -> 0.12 ms a household
    on the 10k book.)"""
    pairs = [(hh, r) for hh, r in pairs if len(r.trades)]
    if not pairs:
        return TRADES_SCHEMA.empty_table()
    ts = [r.trades for _, r in pairs]
    rows = np.array([len(t) for t in ts])

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(t, name) for t in ts])

    def offsets(sizes: list[int]) -> np.ndarray:
        return np.repeat(np.cumsum([0] + sizes[:-1]), rows)

    account_ids = np.concatenate([hh.accounts.account_id for hh, _ in pairs])
    lot_ids = np.concatenate([hh.lots.lot_id for hh, _ in pairs])
    lot, buy = cat("lot"), cat("is_buy")
    sold = lot >= 0
    lot_id = np.full(len(lot), -1, np.int64)
    lot_id[sold] = lot_ids[(offsets([len(hh.lots) for hh, _ in pairs]) + lot)[sold]]
    arrays = [
        pa.array(np.repeat(np.array([hh.household_id for hh, _ in pairs], np.int64), rows), pa.int64()),
        pa.array(account_ids[offsets([hh.n_accounts for hh, _ in pairs]) + cat("account")], pa.int64()),
        pa.array(market.security_id[cat("security")].astype(np.int32), pa.int32()),
        pa.array(lot_id, pa.int64(), mask=buy),
        pa.array(np.where(buy, TradeSide.BUY.value, TradeSide.SELL.value), pa.string()),
        pa.array(cat("shares"), pa.float64()), pa.array(cat("price"), pa.float64()),
        pa.array(cat("value"), pa.float64()), pa.array(cat("realized_gain"), pa.float64(), mask=buy),
        pa.array(np.where(cat("long_term"), "LT", "ST"), pa.string(), mask=buy), pa.array(cat("loss_disallowed"), pa.bool_()),
        pa.array(cat("disallowed_loss"), pa.float64(), mask=buy), pa.array(cat("loss_destroyed"), pa.float64(), mask=buy),
        pa.array(cat("reason"), pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=TRADES_SCHEMA)


def households_table(pairs: Iterable[tuple[Household, HouseholdResult]],
                     rejections: Iterable[Rejection] = ()) -> pa.Table:
    """One row per household rebalanced (``pairs``) and per household rejected, by household id.
    Built a column at a time, not a dict per row and ``from_pylist``."""
    pairs = list(pairs)
    rejected: dict[int, list[Rejection]] = {}
    for j in rejections:
        rejected.setdefault(j.household_id, []).append(j)
    if not pairs and not rejected:
        return HOUSEHOLDS_SCHEMA.empty_table()
    results = [r for _, r in pairs]
    nulls = [None] * len(rejected)
    cols = {
        "household_id": [hh.household_id for hh, _ in pairs] + list(rejected),
        "status": [str(r.status) for r in results] + ["rejected"] * len(rejected),
        "solver": [r.solver for r in results] + nulls,
        "reason": [None] * len(pairs) + [js[0].reason for js in rejected.values()],
        "accounts": [hh.n_accounts for hh, _ in pairs] + [len({j.account_id for j in js}) for js in rejected.values()],
        "trades": [len(r.trades) for r in results] + [0] * len(rejected),
    }
    for name, type_, _ in _HH_FIELDS:
        vals = [getattr(r, name) for r in results]
        if pa.types.is_floating(type_):  # a missing figure (NaN) or none at all (inf: no budget) is null
            vals = [float(v) if math.isfinite(v) else None for v in vals]
        cols[name] = vals + nulls
    # Rows by household id; a stable sort, as list.sort was.
    order = np.argsort(np.array(cols["household_id"], np.int64), kind="stable").tolist()
    return pa.Table.from_arrays([pa.array([cols[f.name][i] for i in order], f.type) for f in HOUSEHOLDS_SCHEMA],
                                schema=HOUSEHOLDS_SCHEMA)


def accounts_table(pairs: Iterable[tuple[Household, HouseholdResult]]) -> pa.Table:
    """One row per account of the rebalanced households ``pairs``, in the order given."""
    pairs = list(pairs)
    for hh, r in pairs:
        if r.accounts is None or r.cash is None:
            raise ValueError(f"household {hh.household_id}: result has no account figures")
    if not pairs:
        return ACCOUNTS_SCHEMA.empty_table()
    accs = [hh.accounts for hh, _ in pairs]
    figs = [r.accounts for _, r in pairs]

    def cat(items, name: str) -> np.ndarray:
        return np.concatenate([getattr(x, name) for x in items])

    cols = {
        "account_id": cat(accs, "account_id").astype(np.int64),
        "household_id": np.repeat(np.array([hh.household_id for hh, _ in pairs], np.int64), [hh.n_accounts for hh, _ in pairs]),
        "model_id": cat(accs, "model_id").astype(np.int32), "account_type": _ACCOUNT_TYPES[cat(accs, "account_type")],
        "direct_indexed": cat(accs, "di_etf") >= 0,
        **{name: cat(figs, name) for name in ("value", "te_before", "te_after", "te_naive", "active_before",
                                              "active_after", "active_naive")},
        **{name: np.concatenate([getattr(r.cash, name) for _, r in pairs]) for name in ("cash_after", "cash_target", "cash_band")},
        "cash_note": [n for _, r in pairs for n in r.cash.note]}
    return pa.Table.from_arrays([pa.array(cols[f.name], f.type) for f in ACCOUNTS_SCHEMA], schema=ACCOUNTS_SCHEMA)


def rejected_table(rejections: Iterable[Rejection]) -> pa.Table:
    rows = [dict(account_id=r.account_id, household_id=r.household_id, stage=r.stage, reason=r.reason,
                 table=r.table or None, key=r.key or None, field=r.field or None) for r in rejections]
    return pa.Table.from_pylist(rows, schema=REJECTED_SCHEMA) if rows else REJECTED_SCHEMA.empty_table()
