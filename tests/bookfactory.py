"""A tiny, fully valid book built by hand, and tools to corrupt a copy of it in tests.

Six securities (three stocks, two ETFs on one three-stock index, a bond ETF), two models, two
screens, a two-factor risk model, and four households in two buckets with six accounts of all
three types, twelve lots and two recent trades. Every number is chosen by hand, so a test can
name the exact row it breaks.

``write_book`` writes tables as given (no conforming), so a test can store a wrong type or a
missing column and see what the validator says about it.
"""
from __future__ import annotations

import datetime as dt
import math

import pyarrow as pa
import pyarrow.compute as pc

from rebalancer.book import BookInfo, BookWriter, BucketStats, table_path
from rebalancer.schema import HOUSEHOLD_TABLES, TABLES, bucket_of, conform

__all__ = [
    "AS_OF", "N_BUCKETS", "tiny_book_tables", "book_info", "write_book",
    "get_row", "set_cell", "add_row", "drop_row", "move_row",
]

AS_OF = dt.date(2021, 4, 21)
N_BUCKETS = 2

_D = dt.date


def _securities() -> list[dict]:
    def sec(security_id, symbol, kind, asset_class, sector, price, wash_group, index_id, attributes,
            yield_, tax_class, spread):
        name = f"{symbol} Inc." if kind == "stock" else f"{symbol} fund"
        return dict(security_id=security_id, symbol=symbol, name=name,
                    kind=kind, asset_class=asset_class, sector=sector, price=price, wash_group=wash_group,
                    index_id=index_id, attributes=attributes, **{"yield": yield_}, income_tax_class=tax_class,
                    spread=spread)
    return [
        sec(1, "AAA", "stock", "us_equity", "Information Technology", 150.0, "AAA", None, [], 0.01, "qualified", 0.0004),
        sec(2, "BBB", "stock", "us_equity", "Energy", 60.0, "BBB", None, ["fossil_fuels"], 0.03, "qualified", 0.0006),
        sec(3, "CCC", "stock", "us_equity", "Consumer Staples", 40.0, "CCC", None, ["tobacco"], 0.04, "qualified", 0.0008),
        # Two ETFs on one index: substantially identical, hence one wash group.
        sec(4, "IVV", "etf", "us_equity", None, 400.0, "TINY3", "TINY3", [], 0.013, "qualified", 0.0001),
        sec(5, "VOO", "etf", "us_equity", None, 380.0, "TINY3", "TINY3", [], 0.013, "qualified", 0.0001),
        sec(6, "AGG", "etf", "us_bond", None, 110.0, "AGG", None, [], 0.025, "ordinary", 0.0001),
    ]


def _households() -> list[dict]:
    def hh(household_id, st, lt, state, ytd_st, ytd_lt, cf_st, cf_lt, budget, sensitivity):
        return dict(household_id=household_id, bucket=bucket_of(household_id, N_BUCKETS), advisor_id=7,
                    short_term_rate=st, long_term_rate=lt, state_rate=state, ytd_realized_st=ytd_st,
                    ytd_realized_lt=ytd_lt, loss_carryforward_st=cf_st, loss_carryforward_lt=cf_lt,
                    tax_budget=budget, fee_rate=0.01, tax_sensitivity=sensitivity)
    return [
        hh(10, 0.37, 0.238, 0.05, -150.0, 0.0, 0.0, 0.0, None, 1.0),  # ytd includes trade 1's loss
        hh(11, 0.24, 0.15, 0.0, 0.0, 2500.0, 0.0, 1000.0, 10000.0, 1.5),
        hh(12, 0.32, 0.15, 0.093, 0.0, 0.0, 500.0, 0.0, 0.0, 2.0),
        hh(13, 0.12, 0.0, 0.03, 0.0, 0.0, 0.0, 0.0, None, 0.0),
    ]


def _accounts() -> list[dict]:
    def acct(account_id, household_id, account_type, model_id, cash, deposit=0.0, screens=(), never_buy=(),
             never_sell=(), direct_index_etf=None, transition_years=0, transition_start=None):
        return dict(account_id=account_id, household_id=household_id, bucket=bucket_of(household_id, N_BUCKETS),
                    account_type=account_type, model_id=model_id, cash=cash, deposit=deposit, cash_reserve=0.0,
                    screens=list(screens), never_buy=list(never_buy), never_sell=list(never_sell),
                    direct_index_etf=direct_index_etf, min_trade=25.0, fractional_shares=account_type != "taxable",
                    transition_years=transition_years, transition_start=transition_start)
    return [
        acct(100, 10, "taxable", 1, 2000.0),
        acct(101, 10, "traditional", 1, 500.0),
        acct(110, 11, "taxable", 2, 1500.0, screens=["esg"], never_buy=[2], direct_index_etf=5),
        acct(111, 11, "roth", 2, 300.0, never_sell=[6]),
        acct(120, 12, "taxable", 2, 10000.0, deposit=5000.0, transition_years=3, transition_start=_D(2020, 1, 2)),
        acct(130, 13, "roth", 1, 0.0),
    ]


def _lots() -> list[dict]:
    owner = {a["account_id"]: a["household_id"] for a in _accounts()}

    def lot(lot_id, account_id, security_id, shares, cost_basis, acquired):
        hh = owner[account_id]
        return dict(lot_id=lot_id, account_id=account_id, household_id=hh, bucket=bucket_of(hh, N_BUCKETS),
                    security_id=security_id, shares=shares, cost_basis=cost_basis, acquired=acquired)
    return [
        lot(1, 100, 4, 50.0, 300.0, _D(2019, 3, 1)),
        lot(2, 100, 4, 10.0, 420.0, _D(2021, 2, 10)),  # a short-term loss
        lot(3, 100, 6, 100.0, 112.0, _D(2020, 6, 15)),
        lot(4, 101, 4, 20.0, 250.0, _D(2017, 9, 5)),
        lot(5, 101, 6, 40.0, 105.0, _D(2018, 1, 3)),
        lot(6, 120, 1, 30.0, 90.0, _D(2016, 5, 20)),
        lot(7, 120, 3, 75.0, 55.0, _D(2019, 11, 11)),
        lot(8, 110, 1, 12.0, 160.0, _D(2021, 4, 12)),  # bought by trade 2
        lot(9, 110, 2, 100.0, 45.0, _D(2020, 3, 23)),
        lot(10, 110, 5, 5.5, 310.0, _D(2020, 8, 1)),
        lot(11, 111, 6, 25.0, 108.0, _D(2019, 7, 9)),
        lot(12, 130, 4, 2.25, 390.0, _D(2021, 1, 4)),
    ]


def _recent_trades() -> list[dict]:
    return [
        dict(trade_id=1, account_id=100, household_id=10, bucket=0, security_id=4, trade_date=_D(2021, 4, 5),
             side="sell", shares=5.0, price=395.0, realized_gain=-150.0),
        dict(trade_id=2, account_id=110, household_id=11, bucket=1, security_id=1, trade_date=_D(2021, 4, 12),
             side="buy", shares=12.0, price=160.0, realized_gain=None),
    ]


def _reference_rows() -> dict[str, list[dict]]:
    return {
        "securities": _securities(),
        "models": [
            dict(model_id=1, model_name="Core 70/30", security_id=4, weight=0.7),
            dict(model_id=1, model_name="Core 70/30", security_id=6, weight=0.3),
            dict(model_id=2, model_name="Stocks and bonds", security_id=1, weight=0.2),
            dict(model_id=2, model_name="Stocks and bonds", security_id=2, weight=0.2),
            dict(model_id=2, model_name="Stocks and bonds", security_id=3, weight=0.1),
            dict(model_id=2, model_name="Stocks and bonds", security_id=5, weight=0.2),
            dict(model_id=2, model_name="Stocks and bonds", security_id=6, weight=0.3),
        ],
        "index_constituents": [
            dict(index_id="TINY3", security_id=1, weight=0.5),
            dict(index_id="TINY3", security_id=2, weight=0.3),
            dict(index_id="TINY3", security_id=3, weight=0.2),
        ],
        "screens": [
            dict(screen_id="esg", attribute="fossil_fuels"),
            dict(screen_id="esg", attribute="tobacco"),
            dict(screen_id="sin", attribute="tobacco"),
            dict(screen_id="sin", attribute="alcohol"),
        ],
        "risk_factors": [
            dict(factor_id=0, name="us_equity", kind="asset_class"),
            dict(factor_id=1, name="us_bond", kind="asset_class"),
        ],
        "risk_covariance": [
            dict(factor_row=0, factor_col=0, covariance=0.04),
            dict(factor_row=0, factor_col=1, covariance=0.002),
            dict(factor_row=1, factor_col=0, covariance=0.002),
            dict(factor_row=1, factor_col=1, covariance=0.0025),
        ],
        "risk_exposures": [
            dict(security_id=s, factor_id=f, exposure=x)
            for s, f, x in [(1, 0, 1.1), (2, 0, 0.9), (3, 0, 0.7), (4, 0, 1.0), (5, 0, 1.0), (6, 1, 1.0)]
        ],
        "risk_specific": [
            dict(security_id=s, specific_variance=v)
            for s, v in [(1, 0.04), (2, 0.05), (3, 0.03), (4, 1e-4), (5, 1e-4), (6, 2e-4)]
        ],
    }


def tiny_book_tables() -> dict:
    """A fresh copy of the tiny book's tables.

    Returns
    -------
    dict
        Reference tables as ``name -> pa.Table``; household-keyed tables as
        ``name -> {bucket: pa.Table}`` for buckets ``0..N_BUCKETS-1``. Types follow the contract.
    """
    tables: dict = {name: conform(pa.Table.from_pylist(rows), TABLES[name])
                    for name, rows in _reference_rows().items()}
    household_rows = {"households": _households(), "accounts": _accounts(), "lots": _lots(),
                      "recent_trades": _recent_trades()}
    for name, rows in household_rows.items():
        spec = TABLES[name]
        table = conform(pa.Table.from_pylist(rows, schema=spec.schema), spec)
        tables[name] = {b: table.filter(pc.equal(table["bucket"], b)) for b in range(N_BUCKETS)}
    return tables


def _num(x) -> float:
    """A cell as a float for the book.json value, 0 when a test has broken it."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else 0.0


def book_info(tables: dict, as_of: dt.date = AS_OF, n_buckets: int = N_BUCKETS) -> BookInfo:
    """The ``book.json`` that matches ``tables`` (counts from whatever rows they hold)."""
    sec = tables.get("securities")
    prices = {}
    if sec is not None and {"security_id", "price"} <= set(sec.column_names):
        prices = dict(zip(sec["security_id"].to_pylist(), sec["price"].to_pylist()))
    stats = []
    for b in range(n_buckets):
        part = {spec.name: tables.get(spec.name, {}).get(b) for spec in HOUSEHOLD_TABLES}
        rows = {name: (t.to_pylist() if t is not None else []) for name, t in part.items()}
        lots = rows["lots"]
        value = (sum(_num(r.get("shares")) * _num(prices.get(r.get("security_id"))) for r in lots)
                 + sum(_num(r.get("cash")) for r in rows["accounts"]))
        stats.append(BucketStats(
            bucket=b,
            households=len(rows["households"]),
            accounts=len(rows["accounts"]),
            lots=len(lots),
            recent_trades=len(rows["recent_trades"]),
            positions=len({(r.get("account_id"), r.get("security_id")) for r in lots}),
            value=value,
        ))
    return BookInfo(as_of=as_of, n_buckets=n_buckets, buckets=tuple(stats), source={"factory": "tests.bookfactory"})


def write_book(uri: str, tables: dict, as_of: dt.date = AS_OF, info_override: BookInfo | None = None) -> None:
    """Write ``tables`` as a book at ``uri``, byte for byte as given, then its ``book.json``.

    Tables go straight to Parquet (``BookWriter.write`` would conform, i.e. fix, a wrong type);
    ``info_override`` replaces the computed ``book.json`` contents.
    """
    writer = BookWriter(uri, overwrite=True)
    for name, table in tables.items():
        spec = TABLES[name]
        if spec.household_keyed:
            for b, part in table.items():
                writer.loc.write_parquet(table_path(spec, b), part)
        else:
            writer.loc.write_parquet(table_path(spec), table)
    writer.finish(info_override if info_override is not None else book_info(tables, as_of))


# --- corrupting a copy ---------------------------------------------------------------------

def _parts(tables: dict, name: str):
    """(bucket or None, table) for each file of a table."""
    if TABLES[name].household_keyed:
        return list(tables[name].items())
    return [(None, tables[name])]


def _store(tables: dict, name: str, bucket, table: pa.Table) -> None:
    if bucket is None:
        tables[name] = table
    else:
        tables[name][bucket] = table


def _matches(table: pa.Table, name: str, key) -> list[int]:
    spec = TABLES[name]
    key = key if isinstance(key, dict) else {spec.key[0]: key}
    cols = {c: table[c].to_pylist() for c in key}
    return [i for i in range(table.num_rows) if all(cols[c][i] == v for c, v in key.items())]


def _locate(tables: dict, name: str, key):
    found = [(b, t, i) for b, t in _parts(tables, name) for i in _matches(t, name, key)]
    if len(found) != 1:
        raise KeyError(f"{name}: {len(found)} rows match {key!r}, expected 1")
    return found[0]


def get_row(tables: dict, name: str, key) -> dict:
    """The row of ``name`` whose key is ``key`` (a value for one-column keys, else a dict)."""
    _, t, i = _locate(tables, name, key)
    return t.slice(i, 1).to_pylist()[0]


def set_cell(tables: dict, name: str, key, column: str, value) -> None:
    """Set one cell, keeping the column's type (and allowing null in any column)."""
    b, t, i = _locate(tables, name, key)
    values = t[column].to_pylist()
    values[i] = value
    f = t.schema.field(column)
    # Nullable, or Parquet would refuse to write the null a test puts in a required column.
    _store(tables, name, b, t.set_column(t.schema.get_field_index(column), f.with_nullable(True),
                                         pa.array(values, f.type)))


def add_row(tables: dict, name: str, row: dict, bucket: int | None = None) -> None:
    """Append ``row`` to a reference table, or to ``bucket`` (default: ``row["bucket"]``)."""
    if TABLES[name].household_keyed:
        bucket = row["bucket"] if bucket is None else bucket
        t = tables[name][bucket]
    else:
        t = tables[name]
    _store(tables, name, bucket, pa.concat_tables([t, pa.Table.from_pylist([row], schema=t.schema)]))


def drop_row(tables: dict, name: str, key) -> dict:
    """Remove one row; return it."""
    b, t, i = _locate(tables, name, key)
    row = t.slice(i, 1).to_pylist()[0]
    _store(tables, name, b, pa.concat_tables([t.slice(0, i), t.slice(i + 1)]))
    return row


def move_row(tables: dict, name: str, key, to_bucket: int) -> None:
    """Move a household-keyed row to another bucket's file, leaving its columns unchanged."""
    add_row(tables, name, drop_row(tables, name, key), bucket=to_bucket)
