"""The book's data contract: one Arrow schema per table, with unit and meaning per column.

A book is a prefix in object storage (DESIGN section 3). Reference tables (securities, models,
index constituents, screens, the risk model) are small single files; household-keyed tables
(households, accounts, lots, recent trades) are split into one file per household bucket,
``bucket = household_id % n_buckets``, so a task reading one shard touches only its files.

This module is the single source of truth: ``docs/data-contract.md`` is generated from it
(``rebalance schema --markdown``) and a test keeps the two equal.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import pyarrow as pa

__all__ = [
    "AccountType", "SecurityKind", "IncomeTaxClass", "TradeSide", "TradeReason", "FactorKind",
    "TableSpec", "TABLES", "REFERENCE_TABLES", "HOUSEHOLD_TABLES", "table_spec",
    "bucket_of", "castable", "conform", "contract_markdown",
]


class AccountType(enum.StrEnum):
    TAXABLE = "taxable"
    TRADITIONAL = "traditional"  # tax-deferred (traditional IRA, 401k rollover)
    ROTH = "roth"  # tax-exempt


class SecurityKind(enum.StrEnum):
    STOCK = "stock"
    ETF = "etf"
    FUND = "fund"
    BOND = "bond"
    CASH = "cash"


class IncomeTaxClass(enum.StrEnum):
    """How a security's distributions are taxed in a taxable account (asset location)."""
    QUALIFIED = "qualified"  # qualified dividends: long-term rate
    ORDINARY = "ordinary"  # interest, REIT and non-qualified dividends: ordinary rate
    TAX_EXEMPT = "tax_exempt"  # municipal bond interest: no federal tax


class TradeSide(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


class TradeReason(enum.StrEnum):
    """Why a trade was made (one per trade; the first that applies, in this order)."""
    SCREEN = "screen"  # divesting a security a screen excludes
    RESTRICTION = "restriction"  # selling a security the account may no longer buy
    CASH = "cash"  # raising cash for a reserve (withdrawal)
    TRANSITION = "transition"  # moving a legacy portfolio to its model
    HARVEST = "harvest"  # a loss sold beyond the rebalance, or its replacement
    DEPOSIT = "deposit"  # investing new money
    REBALANCE = "rebalance"  # back toward target


class FactorKind(enum.StrEnum):
    SECTOR = "sector"
    STYLE = "style"
    ASSET_CLASS = "asset_class"


def _field(name: str, type_: pa.DataType, unit: str, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"unit": unit, "doc": doc})


@dataclass(frozen=True)
class TableSpec:
    """One table of the contract.

    name : folder name under the book prefix.
    schema : the exact Arrow schema (column order, types, nullability) files must have.
    key : columns that identify a row (unique within the book).
    household_keyed : True when the table is split by household bucket.
    doc : what one row is.
    optional : nullable columns added after the format's first version, which a book written
        before them lacks: :func:`conform` and the validator read a missing one as all null.
        Other columns, nullable or not, must be present (a missing ``tax_budget`` would
        silently mean "no cap"), so only columns whose null is a harmless default belong here.
    """
    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    household_keyed: bool
    doc: str
    optional: tuple[str, ...] = ()

    def __post_init__(self):
        for name in self.optional:
            i = self.schema.get_field_index(name)
            if i < 0 or not self.schema.field(i).nullable:
                raise ValueError(f"{self.name}.{name}: an optional column must be a nullable column of the table")

    def empty(self) -> pa.Table:
        return self.schema.empty_table()


_ids = dict(
    household_id=lambda: _field("household_id", pa.int64(), "id", "Household the row belongs to."),
    bucket=lambda: _field("bucket", pa.int32(), "id", "household_id % n_buckets; the file the row lives in."),
    account_id=lambda: _field("account_id", pa.int64(), "id", "Account the row belongs to."),
    security_id=lambda: _field("security_id", pa.int32(), "id", "Security (securities.security_id)."),
)

SECURITIES = TableSpec(
    "securities",
    pa.schema([
        _field("security_id", pa.int32(), "id", "Key."),
        _field("symbol", pa.string(), "", "Ticker; unique."),
        _field("name", pa.string(), "", "Display name."),
        _field("kind", pa.string(), "enum", "stock | etf | fund | bond | cash."),
        _field("asset_class", pa.string(), "", "us_equity, intl_equity, em_equity, us_bond, muni_bond, tips, high_yield, ..."),
        _field("sector", pa.string(), "", "GICS sector of a stock (\"Unclassified\" when unknown); null for funds.", True),
        _field("price", pa.float64(), "USD/share", "Close on the book's as-of date; > 0."),
        _field("wash_group", pa.string(), "", "Substantially identical securities share a group (ETFs on one index); a stock is its own group."),
        _field("index_id", pa.string(), "", "Index an ETF tracks (index_constituents.index_id), for look-through and direct indexing.", True),
        _field("attributes", pa.list_(pa.string()), "", "Screen attributes (fossil_fuels, tobacco, alcohol, gambling, weapons, ...)."),
        _field("yield", pa.float64(), "1/year", "Distribution yield, fraction of price per year."),
        _field("income_tax_class", pa.string(), "enum", "qualified | ordinary | tax_exempt: how distributions are taxed (asset location)."),
        _field("spread", pa.float64(), "fraction", "Bid-ask spread as a fraction of price; a trade costs spread/2 of its value."),
    ]),
    ("security_id",), False, "One security that can be held or targeted.",
)

MODELS = TableSpec(
    "models",
    pa.schema([
        _field("model_id", pa.int32(), "id", "Model (target portfolio)."),
        _field("model_name", pa.string(), "", "Display name of the model."),
        _field("security_id", pa.int32(), "id", "A security of the model."),
        _field("weight", pa.float64(), "fraction", "Target weight; >= 0, a model's weights sum to 1."),
    ]),
    ("model_id", "security_id"), False, "One security of one target portfolio.",
)

INDEX_CONSTITUENTS = TableSpec(
    "index_constituents",
    pa.schema([
        _field("index_id", pa.string(), "id", "Index (securities.index_id of the ETFs tracking it)."),
        _field("security_id", pa.int32(), "id", "A constituent stock."),
        _field("weight", pa.float64(), "fraction", "Weight in the index; >= 0, an index's weights sum to 1."),
    ]),
    ("index_id", "security_id"), False, "One constituent of one index.",
)

SCREENS = TableSpec(
    "screens",
    pa.schema([
        _field("screen_id", pa.string(), "id", "Screen name used in accounts.screens."),
        _field("attribute", pa.string(), "", "A screen excludes every security having any of its attributes."),
    ]),
    ("screen_id", "attribute"), False, "One excluded attribute of one screen (ESG, religious, ...).",
)

RISK_FACTORS = TableSpec(
    "risk_factors",
    pa.schema([
        _field("factor_id", pa.int16(), "id", "Key; 0..k-1."),
        _field("name", pa.string(), "", "Factor name."),
        _field("kind", pa.string(), "enum", "sector | style | asset_class."),
    ]),
    ("factor_id",), False, "One factor of the risk model.",
)

RISK_COVARIANCE = TableSpec(
    "risk_covariance",
    pa.schema([
        _field("factor_row", pa.int16(), "id", "Row factor."),
        _field("factor_col", pa.int16(), "id", "Column factor."),
        _field("covariance", pa.float64(), "1/year", "Covariance of daily factor returns, annualised (x252); all k*k entries, symmetric PSD."),
    ]),
    ("factor_row", "factor_col"), False, "One entry of the factor covariance matrix F.",
)

RISK_EXPOSURES = TableSpec(
    "risk_exposures",
    pa.schema([
        _field("security_id", pa.int32(), "id", "Security."),
        _field("factor_id", pa.int16(), "id", "Factor."),
        _field("exposure", pa.float64(), "", "Loading X[i, f]; missing entries are 0. ETFs by look-through of their index."),
    ]),
    ("security_id", "factor_id"), False, "One non-zero exposure of one security to one factor.",
)

RISK_SPECIFIC = TableSpec(
    "risk_specific",
    pa.schema([
        _field("security_id", pa.int32(), "id", "Security; every security has a row."),
        _field("specific_variance", pa.float64(), "1/year", "Annualised variance of the security's residual return d[i]; > 0."),
    ]),
    ("security_id",), False, "Specific (idiosyncratic) variance of one security.",
)

HOUSEHOLDS = TableSpec(
    "households",
    pa.schema([
        _field("household_id", pa.int64(), "id", "Key."),
        _ids["bucket"](),
        _field("advisor_id", pa.int32(), "id", "Advisor of the household."),
        _field("short_term_rate", pa.float64(), "fraction", "Federal rate on short-term gains (ordinary income)."),
        _field("long_term_rate", pa.float64(), "fraction", "Federal rate on long-term gains and qualified dividends (incl. NIIT)."),
        _field("state_rate", pa.float64(), "fraction", "State rate, added to both."),
        _field("ytd_realized_st", pa.float64(), "USD", "Net short-term gain realized this year before today (negative: net loss); includes recent_trades."),
        _field("ytd_realized_lt", pa.float64(), "USD", "Net long-term gain realized this year before today."),
        _field("loss_carryforward_st", pa.float64(), "USD", "Short-term capital loss carried from earlier years; >= 0."),
        _field("loss_carryforward_lt", pa.float64(), "USD", "Long-term capital loss carried from earlier years; >= 0."),
        _field("tax_budget", pa.float64(), "USD", "Cap on the year's net realized gains (after losses and carry-forward); null: no cap.", True),
        _field("fee_rate", pa.float64(), "1/year", "Advisory fee, fraction of household value per year."),
        _field("tax_sensitivity", pa.float64(), "", "Weight of tax against tracking risk: 0 ignores taxes (go to target), 1 prices taxes at face value, higher defers more."),
    ]),
    ("household_id",), True, "One household: the unit that is optimized.",
)

ACCOUNTS = TableSpec(
    "accounts",
    pa.schema([
        _field("account_id", pa.int64(), "id", "Key."),
        _ids["household_id"](),
        _ids["bucket"](),
        _field("account_type", pa.string(), "enum", "taxable | traditional | roth."),
        _field("model_id", pa.int32(), "id", "Target model (models.model_id)."),
        _field("cash", pa.float64(), "USD", "Cash balance, deposit included; >= 0."),
        _field("deposit", pa.float64(), "USD", "New money received since the last run (already in cash) to invest; >= 0."),
        _field("cash_reserve", pa.float64(), "USD", "Cash that must remain after trades (scheduled withdrawals); >= 0."),
        _field("screens", pa.list_(pa.string()), "", "Screens applied (screens.screen_id)."),
        _field("never_buy", pa.list_(pa.int32()), "", "Security ids the account may not buy."),
        _field("never_sell", pa.list_(pa.int32()), "", "Security ids the account may not sell."),
        _field("direct_index_etf", pa.int32(), "id", "A model ETF whose weight is replaced by its index constituents (screened); null: none.", True),
        _field("min_trade", pa.float64(), "USD", "Smallest trade worth making; >= 0. 0: the firm default "
               "(max of `min_trade_usd` and `min_trade_fraction` of the account's value); > 0 stands alone."),
        _field("min_position", pa.float64(), "USD",
               "A buy that opens a position must make it worth at least this; >= 0 (0: none beyond `dust_usd`). "
               "Set, it stands alone: the firm's `min_position_usd` and `min_position_fraction` do not apply. "
               "Null: the firm default.", True),
        _field("cash_band", pa.float64(), "USD",
               "Cash that may stay uninvested above the target (cash_reserve); >= 0 (0: invest all above the "
               "reserve). Set, it stands alone: the firm's `cash_band_usd` and `cash_band_fraction` do not "
               "apply. Null: the firm default.", True),
        _field("fractional_shares", pa.bool_(), "", "Fractional shares allowed; otherwise trades are whole shares."),
        _field("transition_years", pa.int16(), "years", "Legacy portfolio to move to the model over this many years; 0: none."),
        _field("transition_start", pa.date32(), "date", "First day of the transition; null when transition_years is 0.", True),
    ]),
    ("account_id",), True, "One account of a household, following one model.",
    optional=("min_position", "cash_band"),
)

LOTS = TableSpec(
    "lots",
    pa.schema([
        _field("lot_id", pa.int64(), "id", "Key."),
        _ids["account_id"](),
        _ids["household_id"](),
        _ids["bucket"](),
        _ids["security_id"](),
        _field("shares", pa.float64(), "shares", "Shares held in the lot, split-adjusted; > 0."),
        _field("cost_basis", pa.float64(), "USD/share", "Cost basis per (split-adjusted) share; >= 0."),
        _field("acquired", pa.date32(), "date", "Acquisition date (not after the as-of date); > 1 year before as-of: long-term."),
    ]),
    ("lot_id",), True, "One tax lot (positions in IRAs are lots too; their basis is not taxed).",
)

RECENT_TRADES = TableSpec(
    "recent_trades",
    pa.schema([
        _field("trade_id", pa.int64(), "id", "Key."),
        _ids["account_id"](),
        _ids["household_id"](),
        _ids["bucket"](),
        _ids["security_id"](),
        _field("trade_date", pa.date32(), "date", "Within the 31 days before the as-of date."),
        _field("side", pa.string(), "enum", "buy | sell."),
        _field("shares", pa.float64(), "shares", "Shares traded; > 0."),
        _field("price", pa.float64(), "USD/share", "Execution price; > 0."),
        _field("realized_gain", pa.float64(), "USD", "Sells: realized gain (negative: loss); null for buys. In a traditional IRA or Roth the gain against the position's basis, which is no tax loss: it starts a wash-sale window only under the conservative setting `ira_loss_blocks`.", True),
    ]),
    ("trade_id",), True, "One trade of the last 31 days (wash-sale windows).",
)

REFERENCE_TABLES: tuple[TableSpec, ...] = (
    SECURITIES, MODELS, INDEX_CONSTITUENTS, SCREENS,
    RISK_FACTORS, RISK_COVARIANCE, RISK_EXPOSURES, RISK_SPECIFIC,
)
HOUSEHOLD_TABLES: tuple[TableSpec, ...] = (HOUSEHOLDS, ACCOUNTS, LOTS, RECENT_TRADES)
TABLES: dict[str, TableSpec] = {t.name: t for t in REFERENCE_TABLES + HOUSEHOLD_TABLES}


def table_spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; the contract has {sorted(TABLES)}") from None


def bucket_of(household_id, n_buckets: int):
    """The bucket of a household id (scalar or ndarray): ``household_id % n_buckets``."""
    return household_id % n_buckets


def castable(src: pa.DataType, dst: pa.DataType) -> bool:
    """Whether a ``src`` column may stand for a ``dst`` one: the same kind of value, no loss.

    Within a kind the cast itself (``safe=True``) still rejects values that do not fit. Arrow's
    safe cast alone would parse strings into numbers and dates: not a conversion a data
    contract should make silently. Used by :func:`conform` and by the validator, so writing
    and checking a book accept the same types.
    """
    t = pa.types
    if t.is_dictionary(src):
        return castable(src.value_type, dst)
    if t.is_null(src):
        return True
    if t.is_integer(dst):
        return t.is_integer(src)
    if t.is_floating(dst):
        return t.is_integer(src) or (t.is_floating(src) and src.bit_width <= dst.bit_width)
    if t.is_string(dst) or t.is_large_string(dst):
        return t.is_string(src) or t.is_large_string(src) or t.is_string_view(src)
    if t.is_date(dst):
        return t.is_date(src)
    if t.is_boolean(dst):
        return t.is_boolean(src)
    if t.is_list(dst) or t.is_large_list(dst):
        return (t.is_list(src) or t.is_large_list(src)) and castable(src.value_type, dst.value_type)
    return False


def conform(table: pa.Table, spec: TableSpec) -> pa.Table:
    """Return ``table`` with exactly the spec's columns, order and types (safe casts only).

    A missing column of ``spec.optional`` (added after books were written without it) is
    filled with nulls. Raises ``ValueError`` naming the table and column if another column is
    missing or a cast would lose information. Field metadata is attached so written files
    carry their documentation.
    """
    missing = [f.name for f in spec.schema if f.name not in table.column_names and f.name not in spec.optional]
    if missing:
        raise ValueError(f"{spec.name}: missing columns {missing}")
    cols = []
    for f in spec.schema:
        if f.name not in table.column_names:
            cols.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table[f.name]
        if not col.type.equals(f.type):
            if not castable(col.type, f.type):
                raise ValueError(f"{spec.name}.{f.name}: type {col.type}, expected {f.type}")
            try:
                col = col.cast(f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ValueError(f"{spec.name}.{f.name}: cannot cast {col.type} to {f.type}: {e}") from None
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=spec.schema)


def contract_markdown() -> str:
    """The data contract as Markdown (docs/data-contract.md is this text)."""
    out = [
        "# Book data contract",
        "",
        "Generated from `rebalancer/schema.py` by `rebalance schema --markdown`; a test keeps it equal.",
        "",
        "A book is a prefix (`/path`, `file:///path` or `s3://bucket/prefix`) holding:",
        "",
        "- `book.json`: format, version, as-of date, `n_buckets` and per-bucket counts. Written last:",
        "  a book without it is incomplete.",
        "- reference tables, one file each: `<table>/part-0.parquet`;",
        "- household-keyed tables, one file per bucket: `<table>/bucket-NNNNN.parquet`, where a",
        "  household's bucket is `household_id % n_buckets`. All rows of a household (its accounts,",
        "  lots and recent trades) are in the files of its bucket, so a reader of one shard reads",
        "  only those files.",
        "",
        "Units: money in USD, rates and weights as fractions (0.2 = 20%), variances annualised from",
        "daily returns (x252), dates as date32 (days). Non-nullable columns must not hold nulls;",
        "floats must be finite. Every column must be present, except those marked \"yes, may be",
        "absent\" (added after books were written without them): a missing one reads as null.",
        "",
    ]
    for spec in TABLES.values():
        kind = "household-keyed, one file per bucket" if spec.household_keyed else "reference, one file"
        out += [f"## `{spec.name}`", "", f"{spec.doc} Key: `{', '.join(spec.key)}`; {kind}.", "",
                "| column | type | unit | null | meaning |", "|---|---|---|---|---|"]
        for f in spec.schema:
            md = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
            out.append(f"| `{f.name}` | {f.type} | {md.get('unit', '')} | {_null_cell(spec, f)} | {md.get('doc', '')} |")
        out.append("")
    return "\n".join(out)


def _null_cell(spec: TableSpec, f: pa.Field) -> str:
    if f.name in spec.optional:
        return "yes, may be absent"
    return "yes" if f.nullable else "no"
