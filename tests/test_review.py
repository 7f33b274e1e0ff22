"""``rebalance review`` on a run built by hand over the tiny book (tests/bookfactory.py), every
figure worked out by hand below; the command's exit status and its strict ``review.json``.

The tiny book's accounts (cash; all min_trade $25) and the positions the planted trades touch:

    100 (hh 10) cash 2,000   security 4: lots 1 (50 sh) and 2 (10 sh)
    101 (hh 10) cash   500   security 6: lot 5 (40 sh)
    110 (hh 11) cash 1,500   security 5: lot 10 (5.5 sh)
    111 (hh 11) cash   300
    120 (hh 12) cash 10,000  security 1: lot 6 (30 sh)
    130 (hh 13) cash     0
"""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from bookfactory import tiny_book_tables, write_book

from jobs.cli import main
from rebalancer import jsonout
from rebalancer.book import Book, book_fingerprint
from rebalancer.outputs import REJECTED_SCHEMA, TRADES_SCHEMA
from rebalancer.review import REVIEW_FILE, load_review_inputs, review
from rebalancer.storage import open_uri


def _trade(hh, acct, sec, side, shares, value, reason, lot=None):
    return dict(household_id=hh, account_id=acct, security_id=sec, lot_id=lot, side=side, shares=shares,
                price=value / shares, value=value, realized_gain=None if side == "buy" else 0.0,
                term=None if side == "buy" else "LT", loss_disallowed=False, reason=reason)


# (row, what the review must make of it)
TRADES = [
    _trade(10, 100, 4, "sell", 50.0, 15.0, "rebalance", lot=1),  # with the next: $20 < $25, but closes 60 of 60
    _trade(10, 100, 4, "sell", 10.0, 5.0, "harvest", lot=2),
    _trade(10, 101, 6, "sell", 10.0, 20.0, "rebalance", lot=5),  # under minimum: 10 of 40 shares
    _trade(11, 110, 5, "sell", 2.0, 12.0, "screen", lot=10),     # $12 < $25 but forced (screen)
    _trade(11, 111, 1, "buy", 0.2, 30.0, "rebalance"),            # fine
    _trade(11, 111, 2, "buy", 0.02, 1.0, "rebalance"),            # $1.00: not dust, under minimum
    _trade(12, 120, 3, "buy", 0.01, 0.5, "rebalance"),            # dust and under minimum
    _trade(12, 120, 1, "sell", 10.0, 26.0, "rebalance", lot=6),  # fine
    _trade(13, 130, 4, "buy", 0.002, 0.99, "deposit"),            # dust and under minimum
]

# value, objective, objective_continuous, objective_hold, loss_deferred, loss_destroyed, disallowed_loss,
# objective_naive_whole
HOUSEHOLDS = {
    10: (10_000.0, 5.0, 0.0, 100.0, -10.0, 0.0, -10.0, 10.0),     # found 100, kept 0.95; naive 10: not worse
    11: (20_000.0, 60.0, 45.0, 50.0, 0.0, -7.0, -7.0, 70.0),      # worse than holding by 10 > 0.02; found 5 <= 10
    12: (30_000.0, 20.0, 10.0, None, None, 0.0, 0.0, 15.0),       # holding breaks a rule; worse than naive by 5 > 0.03
    13: (1_000.0, 40.0005, 20.0, 40.0, -5.0, None, -5.0, None),   # 0.0005 over holding <= 0.001; naive breaks a rule
}

# account: household, cash_target, cash_band, cash_note, the run's cash_after
ACCOUNTS = {
    100: (10, 1_000.0, 500.0, None, 2_020.0),       # 2,000 + 20 = 2,020 > 1,500.01: above, no note
    101: (10, 500.0, 20.0, None, 510.0),            # 500 + 20 = 520 <= 520.01; the run's 510 disagrees
    110: (11, 0.0, 100.0, "every eligible buy is blocked", 1_512.0),  # 1,512: above, with a note
    111: (11, 300.0, 0.0, None, 269.0),             # 300 - 30 - 1 = 269
    120: (12, 10_000.0, 25.0, None, 10_025.5),      # 10,000 - 0.50 + 26 = 10,025.50 > 10,025.01: above, no note
    130: (13, 0.0, 0.0, None, -0.99),               # 0 - 0.99
}


def _write_run(book: str, run: str, trades=TRADES, households=HOUSEHOLDS, accounts=ACCOUNTS, manifest=True):
    loc = open_uri(run)
    loc.write_parquet("trades/shard-00000.parquet", pa.Table.from_pylist(trades, schema=TRADES_SCHEMA))
    loc.write_parquet("households/shard-00000.parquet", pa.Table.from_pylist([
        dict(household_id=h, status="optimal", value=v, objective=o, objective_continuous=c, objective_hold=hold,
             loss_deferred=ld, loss_destroyed=lx, disallowed_loss=dl, objective_naive_whole=nv)
        for h, (v, o, c, hold, ld, lx, dl, nv) in households.items()]))
    loc.write_parquet("accounts/shard-00000.parquet", pa.Table.from_pylist([
        dict(account_id=a, household_id=h, cash_target=t, cash_band=b, cash_note=n, cash_after=ca)
        for a, (h, t, b, n, ca) in accounts.items()]))
    loc.write_parquet("rejected/shard-00000.parquet", REJECTED_SCHEMA.empty_table())
    loc.write_json("run.json", {"run_id": run.rsplit("/", 1)[1], "book": book, "date": "2021-04-21",
                                "solver": "fast", "settings": {}, "book_fingerprint": book_fingerprint(Book.open(book))})
    if manifest:
        loc.write_json("manifest.json", {"complete": True})


@pytest.fixture
def book(tmp_path):
    uri = str(tmp_path / "book")
    write_book(uri, tiny_book_tables())
    return uri


def test_every_figure_of_a_planted_run(book, tmp_path):
    run = str(tmp_path / "runs" / "planted")
    _write_run(book, run)
    r = review(load_review_inputs(run, book))
    rules = r["rules"]
    assert r["ok"] is False and r["broken"] == ["worse_than_holding", "worse_than_naive", "dust", "under_minimum",
                                                 "cash_above_band"]
    assert r["counts"] == {"households": 4, "households_rebalanced": 4, "households_rejected": 0, "accounts": 6,
                           "trades": 9, "buys": 4, "rejected_accounts": 0}
    assert rules["complete"]["status"] == "pass"

    w = rules["worse_than_holding"]
    assert (w["count"], w["compared"], w["holding_breaks_a_rule"]) == (1, 3, 1)
    assert w["excess"] == pytest.approx(10.0) and w["examples"][0]["household_id"] == 11
    n = rules["worse_than_naive"]
    assert (n["count"], n["compared"], n["excess"]) == (1, 3, pytest.approx(5.0))
    assert n["examples"][0]["household_id"] == 12

    d = rules["dust"]
    assert (d["count"], d["value"], d["in_larger_orders"]) == (2, pytest.approx(1.49), 0)
    assert sorted(e["account_id"] for e in d["examples"]) == [120, 130]

    u = rules["under_minimum"]
    # orders: (100,4,sell) (101,6,sell) (110,5,sell) (111,1,buy) (111,2,buy) (120,3,buy) (120,1,sell) (130,4,buy)
    assert (u["orders"], u["under_minimum"], u["closing_a_position"], u["forced"], u["count"]) == (8, 6, 1, 1, 4)
    assert sorted((e["account_id"], e["security_id"]) for e in u["examples"]) == [(101, 6), (111, 2), (120, 3),
                                                                                   (130, 4)]
    assert {e["account_id"]: e["value"] for e in u["examples"]}[101] == pytest.approx(20.0)

    b = rules["cash_above_band"]
    assert (b["above_band"], b["above_band_with_note"], b["above_band_without_note"], b["count"]) == (3, 1, 2, 2)
    assert b["excess_without_note"] == pytest.approx((2020 - 1500.01) + (10025.5 - 10025.01))
    assert b["cash_after_disagrees"] == 1  # account 101: the run says 510, the trades 520
    assert sorted(e["account_id"] for e in b["examples"]) == [100, 120]

    v = r["value_kept"]
    kept = sorted([(100 - 5) / 100, (40 - 40.0005) / 20])
    assert v["households"] == 2
    assert v["median"] == pytest.approx((kept[0] + kept[1]) / 2)
    assert v["p1"] == pytest.approx(kept[0] + 0.01 * (kept[1] - kept[0]))  # linear between order statistics
    assert v["min"] == pytest.approx(kept[0])

    ws = r["wash_sales"]
    assert (ws["loss_deferred"], ws["loss_destroyed"], ws["disallowed_loss"]) == (-15.0, -7.0, -22.0)
    assert "why" not in ws


def test_a_lot_under_a_dollar_of_a_larger_sale_is_dust_counted_apart(book, tmp_path):
    run = str(tmp_path / "runs" / "lots")
    _write_run(book, run, [_trade(10, 100, 4, "sell", 50.0, 30.0, "rebalance", lot=1),
                           _trade(10, 100, 4, "sell", 0.02, 0.6, "rebalance", lot=2),
                           _trade(10, 101, 6, "sell", 0.2, 0.5, "rebalance", lot=5)])
    d = review(load_review_inputs(run, book))["rules"]["dust"]
    assert (d["count"], d["in_larger_orders"], d["value"]) == (2, 1, pytest.approx(1.1))


def test_the_command_fails_a_broken_run_and_writes_strict_json(book, tmp_path, capsys):
    run = str(tmp_path / "runs" / "planted")
    _write_run(book, run)
    assert main(["review", "--book", book, "--run", run]) == 1
    text = capsys.readouterr().out
    for line in ("FAIL  worse than holding: 1 of 3 households", "FAIL  dust: 2 trades under $1.00 ($1.49)",
                 "FAIL  under minimum: 4 orders", "FAIL  cash above band: 2 accounts without a note",
                 "FAIL  worse than the whole-share naive: 1 of 3 households",
                 "PASS  run complete", "FAIL: worse_than_holding, worse_than_naive, dust, under_minimum, cash_above_band"):
        assert line in text, line
    on_disk = jsonout.loads_strict(open(f"{run}/{REVIEW_FILE}").read())
    assert on_disk["broken"] == ["worse_than_holding", "worse_than_naive", "dust", "under_minimum", "cash_above_band"]
    assert main(["review", "--book", book, "--run", run, "--json"]) == 1
    printed = jsonout.loads_strict(capsys.readouterr().out)
    assert printed["rules"] == on_disk["rules"] and printed["value_kept"] == on_disk["value_kept"]


def test_a_clean_run_passes(book, tmp_path, capsys):
    run = str(tmp_path / "runs" / "clean")
    trades = [TRADES[i] for i in (0, 1, 3, 4, 7)]  # closing, forced and large enough orders only
    households = {h: (v, min(o, hold) if hold is not None else o, c, hold, ld, lx, dl, None)
                  for h, (v, o, c, hold, ld, lx, dl, nv) in HOUSEHOLDS.items()}
    accounts = {a: (h, 20_000.0, 0.0, n, ca) for a, (h, t, b, n, ca) in ACCOUNTS.items()}
    _write_run(book, run, trades, households, accounts)
    assert main(["review", "--book", book, "--run", run]) == 0
    assert "PASS: no hard rule broken" in capsys.readouterr().out
    assert jsonout.loads_strict(open(f"{run}/{REVIEW_FILE}").read())["ok"] is True


def test_an_incomplete_run_fails_and_missing_columns_are_not_checked(book, tmp_path, capsys):
    run = str(tmp_path / "runs" / "old")
    _write_run(book, run, [TRADES[i] for i in (0, 1, 3, 4, 7)], manifest=False)
    # A run made before the new columns: households/ without objective_hold, accounts/ without the band.
    loc = open_uri(run)
    h = loc.read_parquet("households/shard-00000.parquet")
    loc.write_parquet("households/shard-00000.parquet", h.drop_columns(["objective_hold", "objective_naive_whole", "loss_deferred",
                                                                        "loss_destroyed"]))
    a = loc.read_parquet("accounts/shard-00000.parquet")
    loc.write_parquet("accounts/shard-00000.parquet", a.drop_columns(["cash_target", "cash_band", "cash_note"]))
    assert main(["review", "--book", book, "--run", run]) == 1
    text = capsys.readouterr().out
    assert "FAIL  run complete: no manifest.json" in text
    assert "N/A   worse than holding: not checked: households/ has no objective_hold" in text
    assert "N/A   cash above band: not checked: accounts/ has no cash_target, cash_band, cash_note" in text
    r = jsonout.loads_strict(open(f"{run}/{REVIEW_FILE}").read())
    assert r["broken"] == ["complete"] and r["not_checked"] == ["worse_than_holding", "worse_than_naive", "cash_above_band"]
    assert r["value_kept"]["status"] == "n/a" and r["wash_sales"]["loss_deferred"] is None


def test_a_run_of_another_book_is_refused(book, tmp_path, capsys):
    run = str(tmp_path / "runs" / "planted")
    _write_run(book, run)
    other = str(tmp_path / "other")
    write_book(other, tiny_book_tables(), as_of=dt.date(2021, 4, 20))  # another book.json
    assert main(["review", "--book", other, "--run", run]) == 2
    assert "made from another book" in capsys.readouterr().err


def test_a_run_on_s3_is_reviewed_the_same(book, tmp_path, s3_bucket, capsys):
    local = str(tmp_path / "runs" / "planted")
    _write_run(book, local)
    s3_book, s3_run = s3_bucket.uri("book"), s3_bucket.uri("runs/planted")
    write_book(s3_book, tiny_book_tables())
    _write_run(s3_book, s3_run)
    assert main(["review", "--book", s3_book, "--run", s3_run]) == 1
    capsys.readouterr()
    on_s3 = jsonout.loads_strict(open_uri(s3_run).read_bytes(REVIEW_FILE))
    here = review(load_review_inputs(local, book))
    assert on_s3["rules"] == here["rules"] and on_s3["value_kept"] == here["value_kept"]
