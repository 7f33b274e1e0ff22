"""split_households on hand-made tables with bad rows, and the data errors of build_problem.

Each kind of bad input must come back as a Rejection naming the account, the table, the key
and the field of the offending record; a household with one bad account is rejected whole;
good households of the same tables are returned exactly as they would be on their own; every
account of the input ends in exactly one output.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pytest

from rebalancer.errors import BookDataError
from rebalancer.household import Household, Rejection, split_households
from rebalancer.problem import build_problem
from rebalancer.schema import TABLES, conform
from rebalancer.settings import OptimizerSettings

try:  # tests/ is on sys.path under pytest's default "prepend" import mode
    import handmarket as hm
except ImportError:  # tests/ made a package
    from tests import handmarket as hm

IBM, MSFT, XOM, JNJ, IDXA, BOND = hm.IBM, hm.MSFT, hm.XOM, hm.JNJ, hm.IDXA, hm.BOND
WHOLE = "household rejected whole: "


# --- table builders (rows like handmarket.household, but any household and any bad value) ----

def hh_row(hid: int, **kw) -> dict:
    row = dict(household_id=hid, bucket=0, advisor_id=1, short_term_rate=0.37, long_term_rate=0.238, state_rate=0.05,
               ytd_realized_st=0.0, ytd_realized_lt=0.0, loss_carryforward_st=0.0, loss_carryforward_lt=0.0,
               tax_budget=None, fee_rate=0.01, tax_sensitivity=1.0)
    row.update(kw)
    return row


def acc_row(aid: int, hid: int, account_type: str = "taxable", model_id: int = 1, cash: float = 1000.0, **kw) -> dict:
    return dict(hm.account(aid, account_type, model_id, cash, **kw), household_id=hid, bucket=0)


def lot_row(lot_id: int, aid: int, hid: int, sec: int, shares: float = 10.0, basis: float = 80.0, age: int = 400) -> dict:
    return dict(hm.lot(lot_id, aid, sec, shares, basis, hm.days_ago(age)), household_id=hid, bucket=0)


def trade_row(tid: int, aid: int, hid: int, sec: int, side: str = "buy", gain: float | None = None, age: int = 5,
              shares: float = 3.0) -> dict:
    return dict(hm.trade(tid, aid, sec, hm.days_ago(age), side, shares, 100.0, gain), household_id=hid, bucket=0)


def to_tables(rows: dict[str, list[dict]]) -> dict[str, pa.Table]:
    return {n: conform(pa.Table.from_pylist(rows[n], schema=TABLES[n].schema), TABLES[n])
            for n in ("households", "accounts", "lots", "recent_trades")}


def good_rows() -> dict[str, list[dict]]:
    """Two good households: 1 (taxable 11 + IRA 12, lots and recent trades), 2 (taxable 21)."""
    return {
        "households": [hh_row(1), hh_row(2, tax_budget=5000.0)],
        "accounts": [acc_row(11, 1), acc_row(12, 1, "traditional", 2, 500.0, never_sell=[BOND]),
                     acc_row(21, 2, "roth", 3, 200.0, screens=["fossil_free"])],
        "lots": [lot_row(101, 11, 1, IBM), lot_row(102, 11, 1, XOM, basis=60.0, age=20),
                 lot_row(103, 12, 1, IDXA), lot_row(201, 21, 2, JNJ, shares=4.0)],
        "recent_trades": [trade_row(1, 11, 1, XOM, "buy", age=20, shares=10.0),
                          trade_row(2, 12, 1, MSFT, "sell", gain=-40.0),
                          trade_row(3, 21, 2, IBM, "sell", gain=12.0)],
    }


def only_household(rows: dict[str, list[dict]], hid: int) -> dict[str, list[dict]]:
    return {n: [r for r in rs if r["household_id"] == hid] for n, rs in rows.items()}


def same(a, b) -> bool:
    """Deep equality of Household dataclasses (arrays, tuples of arrays, NaN == NaN)."""
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and bool(np.all((a == b) | (_isnan(a) & _isnan(b)))))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def _isnan(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "f":
        return np.isnan(x)
    if x.dtype.kind == "M":
        return np.isnat(x)
    return np.zeros(x.shape, bool)


MKT = hm.market()


def split(rows, mkt=MKT):
    hhs, rej = split_households(mkt, to_tables(rows))
    check_partition(rows, hhs, rej)
    return hhs, rej


def check_partition(rows, hhs: list[Household], rej: list[Rejection]) -> None:
    """Every account named anywhere in the input ends in exactly one output."""
    named = ({r["account_id"] for r in rows["accounts"]} | {r["account_id"] for r in rows["lots"]}
             | {r["account_id"] for r in rows["recent_trades"]})
    out = [int(a) for h in hhs for a in h.accounts.account_id] + [r.account_id for r in rej]
    assert sorted(out) == sorted(named), (sorted(out), sorted(named))


def check_good_household_2(rows, hhs) -> None:
    """Household 2 is returned exactly as it is when split on its own."""
    alone, rej = split_households(MKT, to_tables(only_household(rows, 2)))
    assert rej == [] and len(alone) == 1
    mine = [h for h in hhs if h.household_id == 2]
    assert len(mine) == 1 and same(mine[0], alone[0])


def test_good_tables_split_cleanly():
    rows = good_rows()
    hhs, rej = split(rows)
    assert rej == []
    assert [h.household_id for h in hhs] == [1, 2]
    h1 = hhs[0]
    assert list(h1.accounts.account_id) == [11, 12] and list(h1.lots.lot_id) == [101, 102, 103]
    assert list(h1.lots.account) == [0, 0, 1] and list(h1.recent.is_buy) == [True, False]
    assert math.isnan(h1.tax_budget) and hhs[1].tax_budget == 5000.0
    check_good_household_2(rows, hhs)


def test_account_overrides_parse_and_null_is_the_firm_default():
    rows = good_rows()
    _set("accounts", dict(account_id=11), min_position=0.0, cash_band=750.0)(rows)
    _set("accounts", dict(account_id=12), min_position=250.0)(rows)
    hhs, rej = split(rows)
    assert rej == []
    acc = hhs[0].accounts
    assert acc.min_position.tolist() == [0.0, 250.0]
    assert acc.cash_band[0] == 750.0 and math.isnan(acc.cash_band[1])
    assert np.isnan(hhs[1].accounts.min_position).all() and np.isnan(hhs[1].accounts.cash_band).all()


def test_accounts_of_a_book_written_before_the_overrides():
    """Tables read as stored (rebalance month, the capacity sample) lack the columns: the
    household is what it is with them null."""
    tables = to_tables(good_rows())
    old = dict(tables, accounts=tables["accounts"].drop_columns(["min_position", "cash_band"]))
    hhs, rej = split_households(MKT, old)
    ref, _ = split_households(MKT, tables)
    assert rej == [] and len(hhs) == 2 and all(same(a, b) for a, b in zip(hhs, ref))
    assert np.isnan(hhs[0].accounts.min_position).all() and np.isnan(hhs[0].accounts.cash_band).all()


# --- one bad record at a time in household 1 -------------------------------------------------

def _set(table, match, **kw):
    def f(rows):
        for r in rows[table]:
            if all(r[k] == v for k, v in match.items()):
                r.update(kw)
    return f


def _add(table, row):
    def f(rows):
        rows[table].append(row)
    return f


def _drop(table, **match):
    def f(rows):
        rows[table] = [r for r in rows[table] if not all(r[k] == v for k, v in match.items())]
    return f


# (id, mutation of good_rows(), expected (table, key, field), accounts rejected)
BAD = [
    ("negative shares", _set("lots", dict(lot_id=102), shares=-5.0), ("lots", "lot_id=102", "shares"), {11, 12}),
    ("zero shares", _set("lots", dict(lot_id=103), shares=0.0), ("lots", "lot_id=103", "shares"), {11, 12}),
    ("unknown security in a lot", _set("lots", dict(lot_id=101), security_id=77),
     ("lots", "lot_id=101", "security_id"), {11, 12}),
    ("duplicate lot id", _add("lots", lot_row(103, 11, 1, MSFT)), ("lots", "lot_id=103", "lot_id"), {11, 12}),
    ("lot of an account not in accounts", _add("lots", lot_row(104, 13, 1, JNJ)),
     ("lots", "lot_id=104", "account_id"), {11, 12, 13}),
    ("unknown model", _set("accounts", dict(account_id=12), model_id=42), ("accounts", "account_id=12", "model_id"),
     {11, 12}),
    ("unknown screen", _set("accounts", dict(account_id=11), screens=["halal"]),
     ("accounts", "account_id=11", "screens"), {11, 12}),
    ("NaN cash", _set("accounts", dict(account_id=12), cash=float("nan")), ("accounts", "account_id=12", "cash"),
     {11, 12}),
    ("negative cash reserve", _set("accounts", dict(account_id=11), cash_reserve=-1.0),
     ("accounts", "account_id=11", "cash_reserve"), {11, 12}),
    ("negative min_position", _set("accounts", dict(account_id=12), min_position=-1.0),
     ("accounts", "account_id=12", "min_position"), {11, 12}),
    ("infinite min_position", _set("accounts", dict(account_id=11), min_position=float("inf")),
     ("accounts", "account_id=11", "min_position"), {11, 12}),
    ("NaN cash_band", _set("accounts", dict(account_id=11), cash_band=float("nan")),
     ("accounts", "account_id=11", "cash_band"), {11, 12}),
    ("negative cash_band", _set("accounts", dict(account_id=12), cash_band=-5.0),
     ("accounts", "account_id=12", "cash_band"), {11, 12}),
    ("bad account_type", _set("accounts", dict(account_id=11), account_type="401k"),
     ("accounts", "account_id=11", "account_type"), {11, 12}),
    ("unknown never_buy security", _set("accounts", dict(account_id=11), never_buy=[IBM, 77]),
     ("accounts", "account_id=11", "never_buy"), {11, 12}),
    ("duplicate account id", _add("accounts", acc_row(12, 1, "roth", 1)), ("accounts", "account_id=12", "account_id"),
     {11, 12}),
    ("household row missing", _drop("households", household_id=1), ("accounts", "account_id=11", "household_id"),
     {11, 12}),
    ("bad tax rate", _set("households", dict(household_id=1), long_term_rate=1.5),
     ("households", "household_id=1", "long_term_rate"), {11, 12}),
    ("negative tax budget", _set("households", dict(household_id=1), tax_budget=-1.0),
     ("households", "household_id=1", "tax_budget"), {11, 12}),
    ("lot acquired after as-of", _set("lots", dict(lot_id=101), acquired=hm.days_ago(-3)),
     ("lots", "lot_id=101", "acquired"), {11, 12}),
    ("recent sell without realized_gain", _set("recent_trades", dict(trade_id=2), realized_gain=None),
     ("recent_trades", "trade_id=2", "realized_gain"), {11, 12}),
    ("recent sell with NaN realized_gain", _set("recent_trades", dict(trade_id=2), realized_gain=float("nan")),
     ("recent_trades", "trade_id=2", "realized_gain"), {11, 12}),
    ("recent trade of an account not in accounts", _add("recent_trades", trade_row(4, 14, 1, IBM)),
     ("recent_trades", "trade_id=4", "account_id"), {11, 12, 14}),
    ("recent trade bad side", _set("recent_trades", dict(trade_id=1), side="short"),
     ("recent_trades", "trade_id=1", "side"), {11, 12}),
]


@pytest.mark.parametrize("mutate, where, rejected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_record_rejects_the_household_whole(mutate, where, rejected):
    rows = good_rows()
    mutate(rows)
    hhs, rej = split(rows)
    assert [h.household_id for h in hhs] == [2], "the bad household must not be returned"
    assert sorted(r.account_id for r in rej) == sorted(rejected), rej
    for r in rej:
        assert r.household_id == 1
        assert (r.table, r.key, r.field) == where, r
        assert f"{where[0]}[{where[1]}].{where[2]}" in r.reason, r.reason
        # More than one account: the reason says the household went whole.
        assert r.reason.startswith(WHOLE), r.reason
    check_good_household_2(rows, hhs)


def test_single_account_rejection_names_the_account_without_the_whole_household_prefix():
    rows = good_rows()
    rows["lots"].append(lot_row(202, 21, 2, MSFT, shares=-1.0))
    hhs, rej = split(rows)
    assert [h.household_id for h in hhs] == [1]
    assert rej == [Rejection(21, 2, "lots[lot_id=202].shares: must be > 0 (got -1.0)", "lots", "lot_id=202", "shares")]


def test_held_security_without_a_price():
    """A NaN price in the securities table reaches the Market; a lot of it is a data error of
    the securities row, reported on the household's accounts."""
    ref = hm.reference_tables()
    sec = ref["securities"]
    price = sec["price"].to_numpy().copy()
    price[np.flatnonzero(sec["security_id"].to_numpy() == XOM)] = np.nan
    ref["securities"] = sec.set_column(sec.schema.get_field_index("price"), sec.schema.field("price"),
                                       pa.array(price, pa.float64()))
    mkt = hm.Market.from_tables(ref, hm.AS_OF)
    assert math.isnan(mkt.price[XOM])
    rows = good_rows()  # household 1 holds XOM in lot 102
    hhs, rej = split(rows, mkt)
    assert [h.household_id for h in hhs] == [2]
    assert sorted(r.account_id for r in rej) == [11, 12]
    for r in rej:
        assert (r.table, r.key, r.field) == ("securities", f"security_id={XOM}", "price"), r
        assert "lot 102" in r.reason and r.reason.startswith(WHOLE)


def test_duplicate_lot_id_across_households_rejects_both():
    rows = good_rows()
    rows["lots"].append(lot_row(101, 21, 2, MSFT))  # household 1 has lot 101 too
    hhs, rej = split(rows)
    assert hhs == []
    assert sorted(r.account_id for r in rej) == [11, 12, 21]
    assert {(r.table, r.key, r.field) for r in rej} == {("lots", "lot_id=101", "lot_id")}


def test_lot_of_an_account_in_no_household_row_or_accounts_table():
    """A lot whose account and household are both unknown is still rejected, not dropped."""
    rows = good_rows()
    rows["lots"].append(lot_row(901, 91, 9, IBM))
    hhs, rej = split(rows)
    assert [h.household_id for h in hhs] == [1, 2]
    assert [(r.account_id, r.household_id, r.table, r.field) for r in rej] == [(91, 9, "lots", "account_id")]
    # The key names the lots row (today it is "account_id=91", not the lot's key "lot_id=901").
    assert rej[0].key in ("lot_id=901", "account_id=91") and "not in accounts" in rej[0].reason


def test_household_row_without_accounts_is_ignored():
    """Crashed with a TypeError in _build (tr_idx is None) before 544e37c."""
    rows = good_rows()
    rows["households"].append(hh_row(5))
    hhs, rej = split(rows)
    assert [h.household_id for h in hhs] == [1, 2] and rej == []


def test_shard_without_lots_or_trades():
    rows = good_rows()
    rows["lots"], rows["recent_trades"] = [], []
    hhs, rej = split(rows)
    assert [h.household_id for h in hhs] == [1, 2] and rej == []
    assert all(len(h.lots) == 0 and len(h.recent) == 0 for h in hhs)


@pytest.mark.parametrize("table", ["lots", "recent_trades"])
def test_record_filed_under_another_household_rejects_the_account_once(table):
    """Before 544e37c the record was ignored by the account's household, which was returned (and
    traded) while the same account was also rejected with the other household."""
    rows = good_rows()
    # A record of account 11 (household 1) whose household_id says 2.
    rows[table].append(lot_row(205, 11, 2, MSFT) if table == "lots" else trade_row(9, 11, 2, MSFT))
    hhs, rej = split_households(MKT, to_tables(rows))
    check_partition(rows, hhs, rej)  # account 11 in exactly one output
    # Household 1 would be optimized without the record: it must not be returned.
    assert 1 not in [h.household_id for h in hhs]
    key = "lot_id=205" if table == "lots" else "trade_id=9"
    assert {r.account_id for r in rej} == {11, 12}
    assert all((r.household_id, r.table, r.key) == (1, table, key) and r.reason.startswith(WHOLE) for r in rej), rej
    assert [h.household_id for h in hhs] == [2]


def test_account_without_household_row_alone():
    rows = good_rows()
    rows["accounts"].append(acc_row(31, 3))
    hhs, rej = split(rows)
    assert [h.household_id for h in hhs] == [1, 2]
    assert rej == [Rejection(31, 3, "accounts[account_id=31].household_id: household 3 is not in households",
                             "accounts", "account_id=31", "household_id")]


def test_many_bad_households_at_once_partition_every_account():
    rows = good_rows()
    for mutate in (BAD[0][1], BAD[6][1]):  # household 1: negative shares and an unknown screen
        mutate(rows)
    rows["households"].append(hh_row(4))
    rows["accounts"] += [acc_row(41, 4), acc_row(42, 4, "roth", model_id=99), acc_row(43, 4, "traditional")]
    rows["lots"] += [lot_row(401, 41, 4, IBM), lot_row(402, 43, 4, JNJ)]
    rows["accounts"].append(acc_row(51, 5))  # no household row
    hhs, rej = split(rows)
    assert [h.household_id for h in hhs] == [2]
    by = {r.account_id: r for r in rej}
    assert sorted(by) == [11, 12, 41, 42, 43, 51]
    assert {(by[a].table, by[a].key, by[a].field) for a in (41, 42, 43)} == {("accounts", "account_id=42", "model_id")}
    assert by[51].field == "household_id" and not by[51].reason.startswith(WHOLE)
    check_good_household_2(rows, hhs)


# --- data errors build_problem raises --------------------------------------------------------

def _one(rows, hid=1) -> Household:
    hhs, rej = split(only_household(rows, hid))
    assert rej == [] and len(hhs) == 1
    return hhs[0]


def test_unreachable_cash_reserve_is_a_book_data_error():
    rows = good_rows()
    # Account 12 (IRA) holds 10 IDXA ($1,000) and $500 cash: a $1,600 reserve cannot be met.
    _set("accounts", dict(account_id=12), cash_reserve=1600.0)(rows)
    with pytest.raises(BookDataError) as e:
        build_problem(MKT, _one(rows), OptimizerSettings())
    assert (e.value.table, e.value.key, e.value.field) == ("accounts", "account_id=12", "cash_reserve")


def test_reserve_reachable_only_by_selling_a_never_sell_position_is_a_book_data_error():
    rows = good_rows()
    # Account 11 holds IBM ($1,000) and XOM ($500) with $1,000 cash; IBM may not be sold.
    _set("accounts", dict(account_id=11), cash_reserve=2000.0, never_sell=[IBM])(rows)
    with pytest.raises(BookDataError) as e:
        build_problem(MKT, _one(rows), OptimizerSettings())
    assert (e.value.table, e.value.key, e.value.field) == ("accounts", "account_id=11", "cash_reserve")
    # Exactly reachable: no error.
    _set("accounts", dict(account_id=11), cash_reserve=1500.0)(rows)
    build_problem(MKT, _one(rows), OptimizerSettings())


def test_screen_excluding_a_whole_model_is_a_book_data_error():
    mkt = hm.market(models={**hm.MODELS, 6: ("Energy", {XOM: 1.0})})
    rows = good_rows()
    _set("accounts", dict(account_id=12), model_id=6, screens=["fossil_free"])(rows)
    hhs, rej = split_households(mkt, to_tables(only_household(rows, 1)))
    assert rej == []
    with pytest.raises(BookDataError) as e:
        build_problem(mkt, hhs[0], OptimizerSettings())
    assert (e.value.table, e.value.key, e.value.field) == ("accounts", "account_id=12", "screens")


def test_never_buy_excluding_a_whole_model_is_a_book_data_error():
    rows = good_rows()
    _set("accounts", dict(account_id=11), model_id=3, never_buy=[IDXA])(rows)
    with pytest.raises(BookDataError) as e:
        build_problem(MKT, _one(rows), OptimizerSettings())
    assert (e.value.table, e.value.key, e.value.field) == ("accounts", "account_id=11", "never_buy")


def test_household_without_value_is_a_book_data_error():
    rows = good_rows()
    hh = only_household(rows, 2)
    hh["lots"] = []
    _set("accounts", dict(account_id=21), cash=0.0)(hh)
    hhs, rej = split_households(MKT, to_tables(hh))
    assert rej == []
    with pytest.raises(BookDataError) as e:
        build_problem(MKT, hhs[0], OptimizerSettings())
    assert (e.value.table, e.value.key) == ("households", "household_id=2")
