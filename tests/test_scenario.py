"""Crisis scenarios (rebalancer/scenario.py, cluster/scenario.py, jobs/scenario.py).

- a factor shock moves the benchmark by the shock (beta 1) and an uncorrelated security not
  at all; betas checked by hand on the tiny book's two-factor model;
- a historical window gives the real closes' return (hand-checked AAPL and TSLA closes, a
  split inside the window is not a fall), a delisted stock is told apart;
- the repriced book is a new, valid book with the same counts, prices exactly
  ``old * (1 + r)``, the input untouched byte for byte;
- bad inputs (a book not at the window's start, a malformed shock, no history) say what is wrong;
- end to end on a real local Ray: every account in the outputs, more losses harvested after
  a -30% shock than on the unshocked book, scenario.json equal to the run's summary, resume;
- a month of harvesting on a few households: losses >= 0, carried households consistent.
"""
from __future__ import annotations

import datetime as dt
import glob
import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import local_ray

from bookfactory import AS_OF as TINY_AS_OF, set_cell, tiny_book_tables, write_book
from rebalancer.book import Book
from rebalancer.errors import BookLayoutError, RunError
from rebalancer.generate import GeneratorSettings, generate_book
from rebalancer.household import split_households
from rebalancer.market import Market
from rebalancer.schema import HOUSEHOLD_TABLES, REFERENCE_TABLES
from rebalancer.scenario import (FactorShock, MonthRequest, ScenarioError, WindowShock, benchmark_weights,
                                 format_month, harvest_days, history_returns, market_betas, parse_shock,
                                 reprice_book, run_month, shock_path)
from rebalancer.simulate import apply_result
from rebalancer.validate import validate_book

START, END = dt.date(2020, 2, 19), dt.date(2020, 3, 23)
BOOK = GeneratorSettings(accounts=120, seed=3, as_of=START, accounts_per_bucket=60)  # 2 buckets, ~53 households


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("book"))
    generate_book(BOOK, uri, overwrite=True)
    return uri


def _market(uri: str) -> Market:
    b = Book.open(uri)
    return Market.from_tables({t.name: b.read(t.name) for t in REFERENCE_TABLES}, b.as_of)


def _hashes(root: str) -> dict[str, str]:
    out = {}
    for p in sorted(glob.glob(f"{root}/**/*", recursive=True)):
        if os.path.isfile(p):
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _all(uri: str, name: str) -> pa.Table:
    b = Book.open(uri)
    return pa.concat_tables([b.read(name, k) for k in range(b.info.n_buckets)])


# --- shocks and returns ----------------------------------------------------------------------

def test_parse_shock():
    assert parse_shock("equity=-30%") == FactorShock("equity", -0.30)
    assert parse_shock(" equity = -0.3 ") == FactorShock("equity", -0.3)
    assert parse_shock("2020-02-19..2020-03-23") == WindowShock(START, END)
    assert parse_shock("equity=-30%").label == "equity=-30%"
    for bad, says in [("equity", "expected FACTOR=MOVE"), ("-30%", "expected FACTOR=MOVE"),
                      ("2020-02-19..", "expected FACTOR=MOVE"), ("2020-02-30..2020-03-23", "day is out of range"),
                      ("2020-03-23..2020-02-19", "the end must be after the start"),
                      ("rates=-1%", "unknown shock factor 'rates'"), ("equity=-30", "out of range"),
                      ("equity=-100%", "out of range")]:
        with pytest.raises(ScenarioError, match=says):
            parse_shock(bad)


def test_betas_by_hand_on_a_two_factor_model():
    tables = tiny_book_tables()
    for key in ({"factor_row": 0, "factor_col": 1}, {"factor_row": 1, "factor_col": 0}):
        set_cell(tables, "risk_covariance", key, "covariance", 0.0)  # bonds uncorrelated with equities
    m = Market.from_tables({t.name: tables[t.name] for t in REFERENCE_TABLES}, TINY_AS_OF)
    pos = {s: i for i, s in enumerate(m.symbol)}
    b = benchmark_weights(m, "TINY3")  # AAA 0.5, BBB 0.3, CCC 0.2
    beta, var = market_betas(m, b)
    # X'b = 1.1*.5 + .9*.3 + .7*.2 = 0.96 on the equity factor (variance 0.04); d = .04, .05, .03
    assert var == pytest.approx(0.96 ** 2 * 0.04 + 0.25 * 0.04 + 0.09 * 0.05 + 0.04 * 0.03, rel=1e-12)
    assert beta[pos["AAA"]] == pytest.approx((1.1 * 0.04 * 0.96 + 0.5 * 0.04) / var, rel=1e-12)
    assert beta[pos["CCC"]] == pytest.approx((0.7 * 0.04 * 0.96 + 0.2 * 0.03) / var, rel=1e-12)
    # an index ETF: its own factor exposure (1.0 here) plus its constituents' specific risk
    assert beta[pos["IVV"]] == pytest.approx((1.0 * 0.04 * 0.96 + 0.25 * 0.04 + 0.09 * 0.05 + 0.04 * 0.03) / var,
                                             rel=1e-12)
    assert beta[pos["AGG"]] == 0.0
    assert b @ beta == pytest.approx(1.0, abs=1e-12)

    sp = shock_path(m, "equity=-30%", benchmark="TINY3")
    r = sp.returns
    assert b @ r == pytest.approx(-0.30, abs=1e-12)  # the benchmark falls by the shock
    assert r[pos["AGG"]] == 0.0 and r[pos["AAA"]] == pytest.approx(-0.30 * beta[pos["AAA"]], rel=1e-15)
    assert sp.implied.all() and not sp.clipped.any()
    deep = shock_path(m, "equity=-90%", benchmark="TINY3")  # AAA: beta 1.18 x -90% is below -95%
    assert deep.returns[pos["AAA"]] == -0.95 and deep.clipped[pos["AAA"]] and not deep.clipped[pos["CCC"]]
    with pytest.raises(ScenarioError, match="benchmark index 'SP500' is not in the book's index_constituents"):
        shock_path(m, "equity=-30%")


def test_the_benchmark_and_its_etfs_fall_by_the_shock(book):
    m = _market(book)
    sp = shock_path(m, parse_shock("equity=-30%"))
    b = benchmark_weights(m)
    pos = {s: i for i, s in enumerate(m.symbol)}
    assert b @ sp.returns == pytest.approx(-0.30, abs=1e-12)
    for etf in ("USLC-A", "USLC-B", "USLC-C"):  # ETFs on the benchmark index: beta 1
        assert sp.beta[pos[etf]] == pytest.approx(1.0, abs=1e-9)
        assert sp.returns[pos[etf]] == pytest.approx(-0.30, abs=1e-9)
    assert abs(sp.beta[pos["TSY-S"]]) < 0.05  # short treasuries barely move with equities
    assert sp.benchmark_path[-1] == pytest.approx(-0.30, abs=1e-12)


def test_historical_returns_hand_checked():
    # Closes as published: AAPL 323.62 (2020-02-19), 224.37 (2020-03-23); TSLA 917.42, 434.29.
    h = history_returns(["AAPL", "TSLA", "USLC-A", "NOPE"], START, END)
    assert str(h.dates[0]) == "2020-02-19" and str(h.dates[-1]) == "2020-03-23" and len(h.dates) == 24
    assert h.status == ("ok", "ok", "ok", "unknown")
    assert h.returns[0] == pytest.approx(224.37 / 323.62 - 1, rel=1e-9)
    assert h.returns[1] == pytest.approx(434.29 / 917.42 - 1, rel=1e-7)
    assert (h.path[0, :3] == 0).all() and -0.6 < h.returns[2] < -0.2 and np.isnan(h.returns[3])
    # A 4:1 (AAPL) and a 5:1 (TSLA) split on 2020-08-31: closes 499.23 -> 129.04, 2213.40 -> 498.32.
    s = history_returns(["AAPL", "TSLA"], dt.date(2020, 8, 28), dt.date(2020, 8, 31))
    assert s.returns[0] == pytest.approx(129.04 / (499.23 / 4) - 1, rel=1e-9)
    assert s.returns[1] == pytest.approx(498.32 / (2213.40 / 5) - 1, rel=1e-6)
    # VAR's last close in the shipped data is 2021-04-16: delisted for a window ending later
    v = history_returns(["VAR", "AAPL"], dt.date(2021, 4, 15), dt.date(2021, 4, 21))
    assert v.status == ("delisted", "ok") and v.last_quote[0] == "2021-04-16"


# --- the repriced book -----------------------------------------------------------------------

def test_factor_repricing_writes_a_new_valid_book(book, tmp_path):
    before = _hashes(book)
    out = str(tmp_path / "shocked")
    rep = reprice_book(book, "equity=-30%", out)
    assert _hashes(book) == before  # the input is only read

    report = validate_book(out)
    assert report.ok and not report.warnings, report.format()
    old, new = Book.open(book), Book.open(out)
    assert new.as_of == old.as_of == START
    for k in ("households", "accounts", "lots", "recent_trades", "positions"):
        assert new.info.total(k) == old.info.total(k)
    s0, s1 = old.read("securities"), new.read("securities")
    assert s0.drop(["price"]).equals(s1.drop(["price"]))
    assert s0["security_id"].to_pylist() == list(rep.security_id)
    expected = s0["price"].to_numpy() * (1.0 + rep.path.returns)
    assert np.array_equal(s1["price"].to_numpy(), expected)  # exactly old * (1 + r)
    assert (s1["price"].to_numpy() > 0).all() and (s1["price"].to_numpy() < s0["price"].to_numpy() * 1.01).all()
    # everything else is the same bytes
    after = _hashes(out)
    same = [p for p in before if p != "book.json" and not p.startswith("securities/")]
    assert all(after[p] == before[p] for p in same) and len(same) == len(before) - 2
    assert new.info.total("value") == pytest.approx(rep.value_after, rel=1e-9)
    assert rep.value_after < rep.value_before and rep.unrealized["losses_after"] < rep.unrealized["losses_before"]
    assert new.info.source["scenario"]["shock"] == "equity=-30%"
    with pytest.raises(BookLayoutError, match="already holds a book"):
        reprice_book(book, "equity=-30%", out)


def test_window_repricing_moves_the_date(book, tmp_path):
    out = str(tmp_path / "march")
    rep = reprice_book(book, f"{START}..{END}", out)
    report = validate_book(out)
    assert report.ok and not report.warnings, report.format()
    old, new = Book.open(book), Book.open(out)
    assert new.as_of == END
    for k in ("households", "accounts", "lots", "positions"):
        assert new.info.total(k) == old.info.total(k)
    # recent trades older than the wash-sale look-back at the new date are gone, the rest kept
    rt0 = _all(book, "recent_trades")
    keep = pc.greater_equal(rt0["trade_date"], pa.scalar(END - dt.timedelta(days=31), pa.date32()))
    assert new.info.total("recent_trades") == pc.sum(keep.cast(pa.int64())).as_py()
    assert rep.recent_trades_dropped == rt0.num_rows - new.info.total("recent_trades") > 0
    for b in range(old.info.n_buckets):
        for t in ("households", "accounts", "lots"):
            assert old.read(t, b).equals(new.read(t, b))
    s0, s1 = old.read("securities"), new.read("securities")
    i = s0["symbol"].to_pylist().index("AAPL")
    assert s0["price"][i].as_py() == pytest.approx(323.62, rel=1e-9)
    assert s1["price"][i].as_py() == pytest.approx(224.37, rel=1e-9)
    assert np.array_equal(s1["price"].to_numpy(), s0["price"].to_numpy() * (1.0 + rep.path.returns))
    assert not rep.path.implied.any()


def test_a_window_across_a_year_end_files_the_year(tmp_path):
    from rebalancer.taxlots import year_tax

    old_uri, new_uri = str(tmp_path / "dec"), str(tmp_path / "jan")
    generate_book(GeneratorSettings(accounts=40, seed=2, as_of=dt.date(2008, 12, 19), accounts_per_bucket=40), old_uri)
    rep = reprice_book(old_uri, "2008-12-19..2009-01-09", new_uri)
    assert rep.years_filed == 1 and Book.open(new_uri).as_of == dt.date(2009, 1, 9)
    report = validate_book(new_uri)
    assert report.ok and not report.warnings, report.format()
    h0, h1 = Book.open(old_uri).read("households", 0).to_pylist(), Book.open(new_uri).read("households", 0).to_pylist()
    assert len(h0) == len(h1) > 5
    carried = 0
    for a, b in zip(h0, h1):
        y = year_tax(a["ytd_realized_st"], a["ytd_realized_lt"], a["loss_carryforward_st"], a["loss_carryforward_lt"],
                     a["short_term_rate"], a["long_term_rate"], a["state_rate"])
        assert b["ytd_realized_st"] == b["ytd_realized_lt"] == 0.0
        assert b["loss_carryforward_st"] == pytest.approx(y.carryforward_st, abs=0.005)
        assert b["loss_carryforward_lt"] == pytest.approx(y.carryforward_lt, abs=0.005)
        carried += b["loss_carryforward_st"] + b["loss_carryforward_lt"] > 0
    assert carried > 0


def test_bad_inputs_say_what_is_wrong(book, tmp_path):
    with pytest.raises(ScenarioError, match=r"is as of 2020-02-19, but the window 2020-02-20\.\.2020-03-23 starts on "
                                            r"2020-02-20"):
        reprice_book(book, "2020-02-20..2020-03-23", str(tmp_path / "a"))
    with pytest.raises(ScenarioError, match=r"window end 2020-03-22 is not a trading day .* nearest: 2020-03-20 or "
                                            r"2020-03-23"):
        reprice_book(book, "2020-02-19..2020-03-22", str(tmp_path / "b"))
    with pytest.raises(ScenarioError, match="benchmark index 'NOPE'"):
        reprice_book(book, "equity=-30%", str(tmp_path / "c"), benchmark="NOPE")
    assert not any(os.path.exists(tmp_path / x / "book.json") for x in "abc")
    # a book whose securities are not in the shipped history: each one named
    tiny = str(tmp_path / "tiny")
    write_book(tiny, tiny_book_tables(), as_of=START)
    with pytest.raises(ScenarioError, match=r"no price history over the window 2020-02-19\.\.2020-03-23 for 6 "
                                            r"securities: security 1 \(AAA\): not in the shipped history"):
        reprice_book(tiny, f"{START}..{END}", str(tmp_path / "d"), benchmark="TINY3")


def test_cli_errors(book, tmp_path, capsys):
    from jobs.scenario import main

    for shock, says in [("bogus", "malformed shock 'bogus': expected FACTOR=MOVE"),
                        ("2020-02-20..2020-03-23", "is as of 2020-02-19, but the window")]:
        rc = main(["crisis", "--book", book, "--out", str(tmp_path), "--shock", shock, "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and "rebalance scenario crisis: error: " in err and says in err
    rc = main(["crisis", "--book", str(tmp_path / "nowhere"), "--out", str(tmp_path), "--shock", "equity=-30%"])
    assert rc == 2 and "no book.json" in capsys.readouterr().err
    rc = main(["month", "--book", book, "--window", "equity=-30%"])
    assert rc == 2 and "--window needs START..END" in capsys.readouterr().err


# --- end to end on Ray -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    with local_ray():
        yield


@pytest.mark.slow
def test_crisis_end_to_end(ray_local, book, tmp_path):
    from cluster.scenario import CrisisRequest, run_crisis

    out = str(tmp_path / "scenarios")
    req = CrisisRequest(book=book, out=out, shock="equity=-30%", scenario_id="crash", baseline=True)
    outcome = run_crisis(req, stream=None)
    r = outcome.report
    assert outcome.complete and r["complete"] and outcome.uri == f"{out}/crash"
    assert r["validation"]["ok"] and r["repricing"]["as_of"] == str(START)

    # every account of the book is in the shocked run's outputs: rebalanced or rejected
    run_dir = f"{out}/crash/shocked"
    hh = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(f"{run_dir}/households/*.parquet"))])
    rej = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(f"{run_dir}/rejected/*.parquet"))])
    acc = _all(book, "accounts")
    ok = set(pc.filter(hh, pc.not_equal(hh["status"], "rejected"))["household_id"].to_pylist())
    covered = {a for a, h in zip(acc["account_id"].to_pylist(), acc["household_id"].to_pylist()) if h in ok}
    assert covered | set(rej["account_id"].to_pylist()) == set(acc["account_id"].to_pylist())
    assert len(hh) == Book.open(book).info.total("households")

    # a -30% shock harvests losses, more than the same day unshocked
    s, base = r["run"], r["baseline"]
    assert s["losses_harvested"] > 0 and s["losses_harvested"] > base["losses_harvested"]
    assert s["losses_harvested_share_of_book"] > base["losses_harvested_share_of_book"]
    assert r["book_value_after"] < r["book_value_before"]

    # scenario.json holds the run's own figures
    import json
    on_disk = json.load(open(f"{out}/crash/scenario.json"))
    assert on_disk == r
    summary = json.load(open(f"{run_dir}/summary.json"))
    t, h = summary["totals"], summary["headline"]
    assert s["losses_harvested"] == h["losses_harvested"] == -(t["usd"]["realized_st_loss"] + t["usd"]["realized_lt_loss"])
    assert s["losses_harvested"] == pytest.approx(-pc.sum(pc.add(hh["realized_st_loss"], hh["realized_lt_loss"])).as_py(),
                                                  rel=1e-9)
    assert s["losses_harvested_share_of_book"] == pytest.approx(h["losses_harvested"] / Book.open(f"{out}/crash/book").info.total("value"), rel=1e-9)
    assert s["taxes_saved"] == t["usd"]["taxes_saved"] and s["tax"] == t["usd"]["tax"]
    assert s["gains_realized"] == t["usd"]["realized_st_gain"] + t["usd"]["realized_lt_gain"]
    assert s["trades"] == {k: t["trades"][k] for k in ("rows", "buys", "sells")}
    assert s["accounts"]["traded"] == t["accounts"]["traded"]
    assert s["households"]["rebalanced"] == t["households"]["rebalanced"] == len(ok)
    assert s["tracking_error"] == {"before": h["te_before_value_weighted"], "after": h["te_after_value_weighted"],
                                   "naive": h["te_naive_value_weighted"]}
    assert "Harvested" in outcome.text and "crash" in outcome.text

    # the same id resumes: the repriced book is reused, nothing runs again
    again = run_crisis(req, stream=None)
    assert again.complete and again.report["repricing"]["reused"]
    assert again.report["run"]["losses_harvested"] == s["losses_harvested"]
    other = CrisisRequest(book=book, out=out, shock="equity=-20%", scenario_id="crash")
    with pytest.raises(RunError, match="already holds a repriced book made from other inputs"):
        run_crisis(other, stream=None)


# --- a month of harvesting -------------------------------------------------------------------

def test_month_carries_households_consistently(book):
    m = _market(book)
    b = Book.open(book)
    tables = {t.name: b.read(t.name, 0) for t in HOUSEHOLD_TABLES}
    hhs, _ = split_households(m, tables)
    taxable = [h for h in hhs if (h.accounts.account_type == 0).any()]
    direct = [h for h in taxable if (h.accounts.di_etf >= 0).any()]
    sample = (direct[:1] + [h for h in taxable if h not in direct[:1]])[:4]
    sp = shock_path(m, parse_shock(f"{START}..2020-02-25"))  # 4 trading days after the start
    days = sp.dates[1:]
    res = harvest_days(m, sample, days, sp.path[1:], keep_results=True)
    assert len(res.results) == len(days) == 4
    assert sum(x["harvested"] for x in res.records) > 0
    for i, rec in enumerate(res.records):
        assert rec["harvested"] >= 0 and rec["failures"] == [] and rec["violations"] == []
        hh = sample[i]
        for k, day in enumerate(days):
            r = res.results[k][i]
            t = r.trades
            nxt = apply_result(hh, r, day)
            held = dict(zip(hh.lots.lot_id.tolist(), hh.lots.shares.tolist()))
            left = dict(zip(nxt.lots.lot_id.tolist(), nxt.lots.shares.tolist()))
            sold: dict = {}
            for lot, sh in zip(t.lot[~t.is_buy], t.shares[~t.is_buy]):
                sold[int(hh.lots.lot_id[lot])] = sold.get(int(hh.lots.lot_id[lot]), 0.0) + sh
            # Lots sold reduce shares, never below zero; a lot that is a wash-sale replacement
            # may also split its matched shares off into a new lot (rebalancer.simulate), and
            # any other keeps its shares.
            w = r.wash
            deferred = ~w.destroyed
            replacement = set()
            for j in np.flatnonzero(deferred & (w.replacement >= 0)):
                replacement |= set(hh.lots.lot_id[(hh.lots.account == w.account[j]) & (hh.lots.security == w.security[j])
                                                  & (hh.lots.acquired == w.date[j])].tolist())
            for lot_id in held:
                sh = sold.get(lot_id, 0.0)
                assert sh <= held[lot_id] + 1e-9
                if lot_id in replacement:
                    assert left.get(lot_id, 0.0) <= held[lot_id] - sh + 1e-9
                else:
                    assert left.get(lot_id, 0.0) == pytest.approx(held[lot_id] - sh, abs=1e-9)
            split = nxt.lots.lot_id > max(int(hh.lots.lot_id.max(initial=0)), 0) + int(t.is_buy.sum())
            assert len(nxt.lots) == len([x for x in held if held[x] - sold.get(x, 0.0) > 1e-9]) + int(t.is_buy.sum()) \
                + int(split.sum())
            assert split.sum() <= deferred.sum()
            assert (nxt.lots.shares > 0).all() and (nxt.accounts.cash >= 0).all()  # no shorts, no margin
            new = nxt.lots.acquired == np.datetime64(day, "D")
            assert new.sum() == t.is_buy.sum()
            # Per (account, security): shares move by the trades alone, and cost basis by the
            # trades plus the losses deferred into the replacements (IRC 1091(d)).
            n = m.n

            def per_slot(lots, what):
                return np.bincount(lots.account * n + lots.security, weights=what, minlength=hh.n_accounts * n)
            flow = np.bincount(t.account * n + t.security, weights=np.where(t.is_buy, t.shares, -t.shares),
                               minlength=hh.n_accounts * n)
            np.testing.assert_allclose(per_slot(nxt.lots, nxt.lots.shares), per_slot(hh.lots, hh.lots.shares) + flow,
                                       atol=1e-6)
            sold_basis = np.zeros(hh.n_accounts * n)
            s_ = ~t.is_buy
            np.add.at(sold_basis, t.account[s_] * n + t.security[s_], t.shares[s_] * hh.lots.cost_basis[t.lot[s_]])
            bought_cost = np.bincount(t.account * n + t.security, weights=np.where(t.is_buy, t.value, 0.0),
                                      minlength=hh.n_accounts * n)
            moved = np.bincount(w.account[deferred] * n + w.security[deferred], weights=-w.loss[deferred],
                                minlength=hh.n_accounts * n)
            np.testing.assert_allclose(per_slot(nxt.lots, nxt.lots.shares * nxt.lots.cost_basis),
                                       per_slot(hh.lots, hh.lots.shares * hh.lots.cost_basis) - sold_basis
                                       + bought_cost + moved, rtol=1e-9, atol=1e-6)
            # The year's allowed gains, the rest of the loss deferred or destroyed.
            assert nxt.ytd_realized_st + nxt.ytd_realized_lt == pytest.approx(
                hh.ytd_realized_st + hh.ytd_realized_lt + r.realized_st_gain + r.realized_st_loss + r.realized_lt_gain
                + r.realized_lt_loss, abs=1e-6)
            hh = nxt
        assert np.array_equal(hh.lots.lot_id, res.households[i].lots.lot_id)
        assert np.array_equal(hh.lots.shares, res.households[i].lots.shares)


def test_month_report(book):
    rep = run_month(MonthRequest(book=book, window=f"{START}..2020-02-24", households=3, seed=1, sample_buckets=1,
                                 only="taxable"))
    assert rep["window"]["trading_days"] == 3 and rep["sample"]["households"] == 3
    assert rep["failures"] == {"daily": 0, "one_shot": 0} and rep["violations"] == 0
    for row in rep["households"]:
        assert row["daily"]["harvested"] >= 0 and row["one_shot"]["harvested"] >= 0
        assert row["daily"]["days_run"] == 3 and row["one_shot"]["days_run"] == 1
        assert row["taxable_accounts"] >= 1 and row["start_value"] > 0
    a = rep["average"]["all"]["daily"]
    assert a["households"] == 3
    assert a["harvested_usd"] == pytest.approx(sum(r["daily"]["harvested"] for r in rep["households"]))
    assert a["harvested_share_mean"] == pytest.approx(np.mean([r["daily"]["harvested"] / r["start_value"]
                                                               for r in rep["households"]]))
    assert "Firm" in format_month(rep)
    with pytest.raises(ScenarioError, match="starts on 2020-02-20"):
        run_month(MonthRequest(book=book, window="2020-02-20..2020-02-24", households=3))
