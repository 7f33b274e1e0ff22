"""validate_book: the tiny book is clean; each kind of bad input is named by table, key and field."""
from __future__ import annotations

import dataclasses
import datetime as dt
import os

import pyarrow as pa
import pytest

from rebalancer.book import Book
from rebalancer.validate import Problem, ValidationReport, validate_book
try:  # tests/ is on sys.path under pytest's default "prepend" import mode
    from bookfactory import (
        AS_OF, add_row, book_info, drop_row, get_row, move_row, set_cell, tiny_book_tables, write_book,
    )
except ImportError:  # tests/ made a package
    from tests.bookfactory import (
        AS_OF, add_row, book_info, drop_row, get_row, move_row, set_cell, tiny_book_tables, write_book,
    )


@pytest.fixture
def tables():
    return tiny_book_tables()


def check(tmp_path, tables, **kw) -> ValidationReport:
    uri = str(tmp_path / "book")
    write_book(uri, tables, **kw)
    return validate_book(uri)


def find(report: ValidationReport, table: str, key: str, field: str, severity: str = "error") -> Problem:
    """The problem at (table, key, field); fails with the whole report when there is none."""
    for p in report.problems:
        if (p.table, p.key, p.field, p.severity) == (table, key, field, severity):
            return p
    pytest.fail(f"no {severity} at {table}[{key}].{field}; report:\n{report.format()}")


def assert_error(report: ValidationReport, table: str, key: str, field: str) -> Problem:
    assert not report.ok
    return find(report, table, key, field)


# --- the clean book --------------------------------------------------------------------------

def test_tiny_book_is_valid(tmp_path, tables):
    report = check(tmp_path, tables)
    assert report.problems == (), report.format()
    assert report.ok and report.omitted == {}
    assert report.rows_checked["lots"] == 12
    assert report.rows_checked["accounts"] == 6
    assert report.rows_checked["households"] == 4
    assert report.rows_checked["securities"] == 6
    assert report.format().startswith("book OK")


def test_accepts_an_open_book(tmp_path, tables):
    write_book(str(tmp_path / "book"), tables)
    assert validate_book(Book.open(str(tmp_path / "book"))).problems == ()


def test_lossless_cast_is_accepted(tmp_path, tables):
    lots = tables["lots"][0]
    i = lots.schema.get_field_index("lot_id")
    tables["lots"][0] = lots.set_column(i, "lot_id", lots["lot_id"].cast(pa.int32()))
    assert check(tmp_path, tables).problems == ()


# --- lots --------------------------------------------------------------------------------

def test_negative_shares(tmp_path, tables):
    set_cell(tables, "lots", 3, "shares", -5.0)
    p = assert_error(check(tmp_path, tables), "lots", "lot_id=3", "shares")
    assert str(p) == "lots[lot_id=3].shares: must be > 0 (got -5.0)"


def test_zero_shares(tmp_path, tables):
    set_cell(tables, "lots", 4, "shares", 0.0)
    assert_error(check(tmp_path, tables), "lots", "lot_id=4", "shares")


def test_duplicate_lot_id(tmp_path, tables):
    add_row(tables, "lots", {**get_row(tables, "lots", 9), "lot_id": 3})  # lot 3 is in bucket 0, this in 1
    p = assert_error(check(tmp_path, tables), "lots", "lot_id=3", "lot_id")
    assert p.message.startswith("duplicate lot id")


def test_lot_with_unknown_account(tmp_path, tables):
    set_cell(tables, "lots", 5, "account_id", 999)
    p = assert_error(check(tmp_path, tables), "lots", "lot_id=5", "account_id")
    assert "999" in p.message


def test_lot_with_unknown_security(tmp_path, tables):
    set_cell(tables, "lots", 6, "security_id", 99)
    assert_error(check(tmp_path, tables), "lots", "lot_id=6", "security_id")


def test_lot_household_mismatch(tmp_path, tables):
    set_cell(tables, "lots", 7, "household_id", 10)  # account 120 belongs to household 12
    p = assert_error(check(tmp_path, tables), "lots", "lot_id=7", "household_id")
    assert "household 12" in p.message


def test_acquired_after_as_of(tmp_path, tables):
    set_cell(tables, "lots", 1, "acquired", AS_OF + dt.timedelta(days=10))
    p = assert_error(check(tmp_path, tables), "lots", "lot_id=1", "acquired")
    assert "2021-05-01" in p.message


# --- securities --------------------------------------------------------------------------

@pytest.mark.parametrize("price", [0.0, -1.0])
def test_price_not_positive(tmp_path, tables, price):
    set_cell(tables, "securities", 2, "price", price)
    assert_error(check(tmp_path, tables), "securities", "security_id=2", "price")


def test_missing_price(tmp_path, tables):
    set_cell(tables, "securities", 2, "price", None)
    p = assert_error(check(tmp_path, tables), "securities", "security_id=2", "price")
    assert "null" in p.message


def test_nan_price(tmp_path, tables):
    set_cell(tables, "securities", 2, "price", float("nan"))
    report = check(tmp_path, tables)
    p = assert_error(report, "securities", "security_id=2", "price")
    assert "finite" in p.message and "nan" in p.message
    # A non-finite value is reported once, not again by the "> 0" rule.
    assert len([q for q in report.problems if q.field == "price"]) == 1


# --- models ------------------------------------------------------------------------------

def test_model_weights_do_not_sum_to_one(tmp_path, tables):
    set_cell(tables, "models", {"model_id": 1, "security_id": 4}, "weight", 0.6)
    p = assert_error(check(tmp_path, tables), "models", "model_id=1", "weight")
    assert "0.9" in p.message


def test_model_with_unknown_security(tmp_path, tables):
    set_cell(tables, "models", {"model_id": 2, "security_id": 3}, "security_id", 77)
    assert_error(check(tmp_path, tables), "models", "model_id=2, security_id=77", "security_id")


# --- accounts ----------------------------------------------------------------------------

def test_account_without_household(tmp_path, tables):
    set_cell(tables, "accounts", 120, "household_id", 14)  # 14 % 2 == 0: right bucket, no such household
    report = check(tmp_path, tables)
    assert_error(report, "accounts", "account_id=120", "household_id")
    find(report, "households", "household_id=12", "*", severity="warning")  # left without accounts


def test_account_with_unknown_model(tmp_path, tables):
    set_cell(tables, "accounts", 101, "model_id", 9)
    assert_error(check(tmp_path, tables), "accounts", "account_id=101", "model_id")


def test_unknown_account_type(tmp_path, tables):
    set_cell(tables, "accounts", 130, "account_type", "brokerage")
    p = assert_error(check(tmp_path, tables), "accounts", "account_id=130", "account_type")
    assert "'brokerage'" in p.message


def test_unknown_screen(tmp_path, tables):
    set_cell(tables, "accounts", 110, "screens", ["esg", "halal"])
    p = assert_error(check(tmp_path, tables), "accounts", "account_id=110", "screens")
    assert "'halal'" in p.message and "esg" not in p.message


def test_never_buy_unknown_security(tmp_path, tables):
    set_cell(tables, "accounts", 110, "never_buy", [2, 999])
    p = assert_error(check(tmp_path, tables), "accounts", "account_id=110", "never_buy")
    assert "999" in p.message


def test_direct_index_etf_not_in_model(tmp_path, tables):
    set_cell(tables, "accounts", 110, "direct_index_etf", 4)  # IVV tracks TINY3, but model 2 holds VOO
    p = assert_error(check(tmp_path, tables), "accounts", "account_id=110", "direct_index_etf")
    assert "model 2" in p.message


def test_direct_index_etf_without_index(tmp_path, tables):
    set_cell(tables, "accounts", 110, "direct_index_etf", 6)  # AGG is in model 2 but tracks no index
    assert_error(check(tmp_path, tables), "accounts", "account_id=110", "direct_index_etf")


def test_deposit_exceeds_cash(tmp_path, tables):
    set_cell(tables, "accounts", 120, "deposit", 20000.0)
    assert_error(check(tmp_path, tables), "accounts", "account_id=120", "deposit")


def test_account_overrides_are_checked_when_set(tmp_path, tables):
    set_cell(tables, "accounts", 100, "min_position", 250.0)
    set_cell(tables, "accounts", 101, "cash_band", 0.0)
    assert check(tmp_path / "good", tables).problems == ()
    set_cell(tables, "accounts", 101, "min_position", -1.0)
    set_cell(tables, "accounts", 110, "cash_band", -10.0)
    set_cell(tables, "accounts", 120, "cash_band", float("inf"))
    report = check(tmp_path / "bad", tables)
    assert "got -1" in assert_error(report, "accounts", "account_id=101", "min_position").message
    assert "got -10" in assert_error(report, "accounts", "account_id=110", "cash_band").message
    assert "finite" in assert_error(report, "accounts", "account_id=120", "cash_band").message
    assert len(report.errors) == 3


def test_book_written_before_the_account_overrides_is_valid(tmp_path, tables):
    """accounts.min_position and cash_band may be absent (schema.ACCOUNTS.optional): null."""
    for b in list(tables["accounts"]):
        tables["accounts"][b] = tables["accounts"][b].drop_columns(["min_position", "cash_band"])
    report = check(tmp_path, tables)
    assert report.problems == (), report.format()


def test_transition_start_missing(tmp_path, tables):
    set_cell(tables, "accounts", 120, "transition_start", None)
    assert_error(check(tmp_path, tables), "accounts", "account_id=120", "transition_start")


def test_duplicate_account_id_across_buckets(tmp_path, tables):
    add_row(tables, "accounts", {**get_row(tables, "accounts", 110), "account_id": 100})
    p = assert_error(check(tmp_path, tables), "accounts", "account_id=100", "account_id")
    assert "buckets 0, 1" in p.message


# --- households and buckets --------------------------------------------------------------

def test_household_rate_out_of_range(tmp_path, tables):
    set_cell(tables, "households", 11, "short_term_rate", 1.5)
    assert_error(check(tmp_path, tables), "households", "household_id=11", "short_term_rate")


def test_row_in_the_wrong_bucket(tmp_path, tables):
    move_row(tables, "lots", 3, to_bucket=1)
    p = assert_error(check(tmp_path, tables), "lots", "lot_id=3", "bucket")
    assert "bucket 1" in p.message


def test_bucket_column_disagrees_with_household(tmp_path, tables):
    set_cell(tables, "households", 13, "household_id", 14)  # file and column say 1, 14 % 2 says 0
    assert_error(check(tmp_path, tables), "households", "household_id=14", "bucket")


# --- recent trades -----------------------------------------------------------------------

@pytest.mark.parametrize("days", [-32, 1])
def test_recent_trade_outside_window(tmp_path, tables, days):
    set_cell(tables, "recent_trades", 2, "trade_date", AS_OF + dt.timedelta(days=days))
    assert_error(check(tmp_path, tables), "recent_trades", "trade_id=2", "trade_date")


def test_sell_without_realized_gain(tmp_path, tables):
    set_cell(tables, "recent_trades", 1, "realized_gain", None)
    assert_error(check(tmp_path, tables), "recent_trades", "trade_id=1", "realized_gain")


# --- risk model --------------------------------------------------------------------------

def test_covariance_not_psd(tmp_path, tables):
    for key in ({"factor_row": 0, "factor_col": 1}, {"factor_row": 1, "factor_col": 0}):
        set_cell(tables, "risk_covariance", key, "covariance", 0.5)
    p = assert_error(check(tmp_path, tables), "risk_covariance", "file=risk_covariance/part-0.parquet", "covariance")
    assert "positive semidefinite" in p.message


def test_covariance_not_symmetric(tmp_path, tables):
    set_cell(tables, "risk_covariance", {"factor_row": 0, "factor_col": 1}, "covariance", 0.003)
    assert_error(check(tmp_path, tables), "risk_covariance", "factor_row=0, factor_col=1", "covariance")


def test_security_without_specific_variance(tmp_path, tables):
    drop_row(tables, "risk_specific", 3)
    assert_error(check(tmp_path, tables), "risk_specific", "security_id=3", "*")


# --- files, schemas and book.json --------------------------------------------------------

def test_missing_household_table_file(tmp_path, tables):
    del tables["lots"][1]
    report = check(tmp_path, tables)
    assert_error(report, "lots", "file=lots/bucket-00001.parquet", "*")
    assert report.rows_checked["lots"] == len(tables["lots"][0])


def test_missing_reference_table(tmp_path, tables):
    del tables["securities"]
    assert_error(check(tmp_path, tables), "securities", "file=securities/part-0.parquet", "*")


def test_unreadable_file(tmp_path, tables):
    uri = str(tmp_path / "book")
    write_book(uri, tables)
    (tmp_path / "book" / "accounts" / "bucket-00000.parquet").write_bytes(b"not parquet")
    p = assert_error(validate_book(uri), "accounts", "file=accounts/bucket-00000.parquet", "*")
    assert p.message.startswith("unreadable")


def test_wrong_column_type(tmp_path, tables):
    lots = tables["lots"][0]
    i = lots.schema.get_field_index("shares")
    tables["lots"][0] = lots.set_column(i, "shares", lots["shares"].cast(pa.string()))
    report = check(tmp_path, tables)
    p = assert_error(report, "lots", "file=lots/bucket-00000.parquet", "shares")
    assert p.message == "type string, expected double"
    assert len(report.errors) == 1  # the rules on that column are skipped, not failed


def test_missing_column(tmp_path, tables):
    tables["lots"][1] = tables["lots"][1].drop_columns(["cost_basis"])
    report = check(tmp_path, tables)
    assert_error(report, "lots", "file=lots/bucket-00001.parquet", "cost_basis")
    assert len(report.errors) == 1


def test_book_json_count_mismatch(tmp_path, tables):
    info = book_info(tables)
    b0 = dataclasses.replace(info.buckets[0], lots=info.buckets[0].lots + 1)
    report = check(tmp_path, tables, info_override=dataclasses.replace(info, buckets=(b0,) + info.buckets[1:]))
    p = assert_error(report, "book.json", "bucket=0", "lots")
    assert "says 8" in p.message and "hold 7" in p.message


def test_missing_book_json(tmp_path, tables):
    set_cell(tables, "lots", 3, "shares", -5.0)
    uri = str(tmp_path / "book")
    write_book(uri, tables)
    os.remove(tmp_path / "book" / "book.json")
    report = validate_book(uri)
    assert_error(report, "book.json", "file=book.json", "*")
    find(report, "lots", "lot_id=3", "shares")  # the tables are still checked


def test_malformed_book_json(tmp_path, tables):
    uri = str(tmp_path / "book")
    write_book(uri, tables)
    (tmp_path / "book" / "book.json").write_text('{"format": "rebalancer-book", "version": 1}')
    assert_error(validate_book(uri), "book.json", "file=book.json", "*")


def test_no_book_at_all(tmp_path):
    assert_error(validate_book(str(tmp_path / "nothing")), "book.json", "file=book.json", "*")


# --- the report --------------------------------------------------------------------------

def test_max_per_rule_caps_and_counts(tmp_path, tables):
    template = get_row(tables, "lots", 1)
    for lot_id in range(1000, 1050):
        add_row(tables, "lots", {**template, "lot_id": lot_id, "shares": -1.0})
    uri = str(tmp_path / "book")
    write_book(uri, tables)
    report = validate_book(uri, max_per_rule=5)
    shares = [p for p in report.problems if p.field == "shares"]
    assert [p.key for p in shares] == [f"lot_id={i}" for i in range(1000, 1005)]
    assert report.omitted == {"lots.shares: must be > 0": 45}
    text = report.format()
    assert "... and 45 more lots.shares problems" in text
    assert text.splitlines()[-1] == "5 errors, 0 warnings (45 more not listed)"


def test_format_names_key_and_field(tmp_path, tables):
    set_cell(tables, "lots", 3, "shares", -5.0)
    set_cell(tables, "households", 12, "fee_rate", 0.5)
    text = check(tmp_path, tables).format()
    assert "error: lots[lot_id=3].shares: must be > 0 (got -5.0)" in text
    assert "households[household_id=12].fee_rate" in text
    assert text.splitlines()[-1] == "2 errors, 0 warnings"
