"""The run report: tax value against fees (hand-computed), dispersion figures (hand-computed and
on a small book), and the rendered report (HTML parses, images decode, numbers equal the JSON's)."""
from __future__ import annotations

import base64
import datetime as dt
import glob
import json
import math
import os
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import local_ray
from handmarket import IBM, JNJ, MSFT, XOM, account, days_ago, hand_covariance, household, lot, market

from cluster.driver import RunRequest, run_book
from cluster.history import load_report_inputs, split_run_uri, write_report
from jobs.cli import main as cli_main
from rebalancer.dispersion import account_figures, model_dispersion
from rebalancer.errors import RunError
from rebalancer.generate import GeneratorSettings, generate_book
from rebalancer.optimize import rebalance_household
from rebalancer.problem import build_problem
from rebalancer.report import FORMATS
from rebalancer.settings import OptimizerSettings
from rebalancer.taxvalue import RunHouseholds, period_days, tax_value

# --- tax value against fees, by hand ----------------------------------------------------------


def _run(date, ids, saved, fee, value=None, split=None):
    n = len(ids)
    split = split or (saved, [0.0] * n, [0.0] * n)
    return RunHouseholds(date=date, household_id=np.array(ids), value=np.array(value or [1e6] * n, float),
                         taxes_saved=np.array(saved, float), harvest_value=np.array(split[0], float),
                         deferral_value=np.array(split[1], float), wait_value=np.array(split[2], float),
                         fee=np.array(fee, float))


def test_period_days_cover_each_day_once():
    since = dt.date(2021, 1, 1)
    assert period_days([dt.date(2021, 1, 1), dt.date(2021, 1, 5), dt.date(2021, 1, 6)], since) == [1, 4, 1]
    assert period_days([dt.date(2021, 3, 1)], since) == [59 + 1]  # Jan 1 .. Mar 1 inclusive
    with pytest.raises(ValueError):
        period_days([dt.date(2021, 1, 5), dt.date(2021, 1, 5)], since)


def test_tax_value_against_fees_by_hand():
    since = dt.date(2021, 1, 1)
    # Household 1: annual fee $3,650 = $10 a day. Run 1 (Jan 1, 1 day): saved $15 (harvest 5,
    # deferral 10) vs fee $10. Run 2 (Jan 5, 4 days): saved $50 (harvest 30, deferral 15,
    # wait 5) vs fee $40. Period: harvest 5 + 30 (losses add up), deferral max(10, 15) = 15
    # (the deferred gain is a stock), wait 5: saved $55 vs fee $50.
    # Household 2: only in run 2, no fee, saved $1: exceeds (ratio inf).
    # Household 3: in run 1 only (closed since): not in the figures.
    # Household 4: fee $7,300 a year ($20 a day), saved $60 in run 2 ($80 fee): does not exceed.
    r1 = _run(dt.date(2021, 1, 1), [1, 3], [15.0, 1000.0], [3650.0, 3650.0],
              split=([5.0, 1000.0], [10.0, 0.0], [0.0, 0.0]))
    r2 = _run(dt.date(2021, 1, 5), [4, 2, 1], [60.0, 1.0, 50.0], [7300.0, 0.0, 3650.0],
              value=[2e6, 0.5e6, 1e6], split=([0.0, 1.0, 30.0], [60.0, 0.0, 15.0], [0.0, 0.0, 5.0]))
    tv = tax_value([r1, r2], since)
    assert tv.household_id.tolist() == [1, 2, 4]
    assert tv.run["taxes_saved"].tolist() == [50.0, 1.0, 60.0]
    assert tv.run["fee"] == pytest.approx([40.0, 0.0, 80.0])
    assert tv.period["taxes_saved"].tolist() == [55.0, 1.0, 60.0]
    assert tv.period["fee"] == pytest.approx([50.0, 0.0, 80.0])
    assert tv.period["harvest_value"].tolist() == [30.0 + 5.0, 1.0, 0.0]
    assert tv.period["deferral_value"].tolist() == [15.0, 0.0, 60.0]
    assert tv.period["wait_value"].tolist() == [5.0, 0.0, 0.0]
    assert tv.period["ratio"][0] == pytest.approx(1.1) and math.isinf(tv.period["ratio"][1])
    assert tv.period["ratio"][2] == pytest.approx(0.75)
    share = tv.share_exceeding("period")
    assert share["households"] == 2 and share["by_count"] == pytest.approx(2 / 3)
    assert share["by_value"] == pytest.approx(1.5e6 / 3.5e6)
    run_share = tv.share_exceeding("run")  # run 2 alone: 50 > 40, 1 > 0, 60 < 80
    assert run_share["households"] == 2
    assert tv.runs == ((dt.date(2021, 1, 1), 1), (dt.date(2021, 1, 5), 4))


def test_tax_value_rejects_bad_series():
    with pytest.raises(ValueError, match="twice"):
        _run(dt.date(2021, 1, 1), [1, 1], [0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="increasing"):
        tax_value([_run(dt.date(2021, 1, 5), [1], [0.0], [1.0]), _run(dt.date(2021, 1, 2), [1], [0.0], [1.0])],
                  dt.date(2021, 1, 1))


# --- dispersion, by hand -----------------------------------------------------------------------

def test_account_figures_by_hand():
    """One taxable account on 'Stocks equal' (25% each) holding only IBM: active weights
    (0.75, -0.25, -0.25, -0.25), active share 0.75, tracking error sqrt(a' S a) with S worked out
    from the hand market's constants. A single-account household's account figures are its
    household figures, after the run's trades and the naive ones too."""
    mkt = market()
    hh = household(mkt, [account(1, model_id=5)], [lot(1, 1, IBM, 100, 100.0, days_ago(800))])
    settings = OptimizerSettings()
    p = build_problem(mkt, hh, settings)
    ids = [IBM, MSFT, XOM, JNJ]
    a = np.array([0.75, -0.25, -0.25, -0.25])
    S = hand_covariance(ids)
    f = account_figures(p, hh, np.zeros(p.n_vars), np.zeros(p.n_vars))
    assert f.value.tolist() == [10_000.0]
    assert f.te_before[0] == pytest.approx(math.sqrt(a @ S @ a), rel=1e-9)
    assert f.active_before[0] == pytest.approx(0.75)
    assert f.te_after[0] == pytest.approx(f.te_before[0]) and f.active_after[0] == pytest.approx(0.75)

    r = rebalance_household(mkt, hh, settings)
    assert r.accounts is not None
    assert r.accounts.te_before[0] == pytest.approx(r.te_before, rel=1e-9)
    assert r.accounts.te_after[0] == pytest.approx(r.te_after, rel=1e-9)
    assert r.accounts.te_naive[0] == pytest.approx(r.te_naive, rel=1e-9, abs=1e-12)
    # After the trades, from the trades themselves: holdings per security / account value.
    held = {IBM: 10_000.0}
    for sec, buy, val in zip(r.trades.security, r.trades.is_buy, r.trades.value):
        held[int(sec)] = held.get(int(sec), 0.0) + (val if buy else -val)
    w = np.array([held.get(s, 0.0) for s in ids]) / 10_000.0
    cash_w = 1.0 - w.sum()
    assert r.accounts.active_after[0] == pytest.approx(0.5 * (np.abs(w - 0.25).sum() + abs(cash_w)), abs=1e-9)


def test_account_figures_two_accounts_with_reserve():
    """Taxable on 'Stocks equal' holding IBM and MSFT, $2,000 cash of which $1,000 reserved;
    an IRA on 'Bonds' holding only JNJ: each account against its own target."""
    mkt = market()
    hh = household(mkt, [account(1, model_id=5, cash=2000.0, cash_reserve=1000.0), account(2, "traditional", model_id=4)],
                   [lot(1, 1, IBM, 40, 100.0, days_ago(800)), lot(2, 1, MSFT, 20, 150.0, days_ago(800)),
                    lot(3, 2, JNJ, 20, 100.0, days_ago(800))])
    p = build_problem(mkt, hh, OptimizerSettings())
    f = account_figures(p, hh, np.zeros(p.n_vars), np.zeros(p.n_vars))
    assert f.value.tolist() == [10_000.0, 3_000.0]
    # Taxable: target 25% of the $9,000 investable = 22.5% of $10,000 each; IBM 40%, MSFT 40%.
    a = np.array([0.4 - 0.225, 0.4 - 0.225, -0.225, -0.225])
    cash = 0.2 - 0.1  # 20% cash against a 10% reserve
    assert f.active_before[0] == pytest.approx(0.5 * (np.abs(a).sum() + cash))
    assert f.te_before[0] == pytest.approx(math.sqrt(a @ hand_covariance([IBM, MSFT, XOM, JNJ]) @ a))
    # IRA: all JNJ against all BOND: active share 1.
    assert f.active_before[1] == pytest.approx(1.0)


def test_model_dispersion_quantiles():
    cols = {f"{m}_{s}": np.array([0.01, 0.02, 0.03, 0.5, np.nan]) for m in ("te", "active") for s in ("before", "after", "naive")}
    rows = model_dispersion(np.array([7, 7, 7, 9, 9]), cols)
    assert [r["model_id"] for r in rows] == [7, 9] and [r["accounts"] for r in rows] == [3, 2]
    te = rows[0]["te_before"]
    assert te["p10"] == pytest.approx(0.012) and te["p50"] == pytest.approx(0.02) and te["p90"] == pytest.approx(0.028)
    assert te["spread"] == pytest.approx(0.016) and te["std"] == pytest.approx(np.std([0.01, 0.02, 0.03]))
    assert rows[1]["te_after"]["p50"] == 0.5  # the NaN is left out


# --- the report of real runs --------------------------------------------------------------------

BOOK = GeneratorSettings(accounts=160, seed=11, accounts_per_bucket=80)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two complete daily runs of one small book (trade dates 3 days apart) under one prefix,
    plus an incomplete run and a second run on the first date."""
    book = str(tmp_path_factory.mktemp("book"))
    info = generate_book(BOOK, book, overwrite=True)
    out = str(tmp_path_factory.mktemp("runs"))
    d2 = info.as_of
    d1 = d2 - dt.timedelta(days=3)
    with local_ray():
        for run_id, d in (("a-first", d1), ("b-first-again", d1), ("c-second", d2)):
            o = run_book(RunRequest(book=book, out=out, run_id=run_id, date=d), stream=None)
            assert o.complete
    # A run that never finished: its manifest is gone.
    os.makedirs(f"{out}/d-broken", exist_ok=True)
    with open(f"{out}/d-broken/run.json", "w") as fh:
        json.dump({"run_id": "d-broken", "date": d1.isoformat()}, fh)
    return out, book, d1, d2


def _table(run_uri, name):
    return pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(f"{run_uri}/{name}/*.parquet"))])


def test_accounts_output_has_every_rebalanced_account(runs):
    out, _, _, _ = runs
    run = f"{out}/c-second"
    acc = _table(run, "accounts")
    summary = json.load(open(f"{run}/summary.json"))
    assert acc.num_rows == summary["totals"]["accounts"]["rebalanced"]
    rej = set(_table(run, "rejected")["account_id"].to_pylist())
    assert not rej & set(acc["account_id"].to_pylist())
    assert len(set(acc["account_id"].to_pylist())) == acc.num_rows
    for col in ("te_before", "te_after", "te_naive", "active_before", "active_after", "active_naive"):
        v = acc[col].to_numpy()
        assert np.all(np.isfinite(v)) and np.all(v >= 0)
    assert np.all(acc["active_before"].to_numpy() <= 1.0 + 1e-9)


def test_history_picks_one_complete_run_per_date(runs):
    out, _, d1, d2 = runs
    inp = load_report_inputs(f"{out}/c-second")
    assert [(x["run_id"], x["date"]) for x in inp.read] == [("b-first-again", d1), ("c-second", d2)]
    assert inp.since == dt.date(d2.year, 1, 1)
    assert inp.read[0]["days"] == (d1 - inp.since).days + 1 and inp.read[1]["days"] == 3
    why = {x["run_id"]: x["why"] for x in inp.skipped}
    assert "superseded" in why["a-first"] and "incomplete" in why["d-broken"]
    # A period that starts after the first date reads the reported run alone.
    inp2 = load_report_inputs(f"{out}/c-second", since=d2)
    assert [x["run_id"] for x in inp2.read] == ["c-second"] and inp2.read[0]["days"] == 1
    with pytest.raises(RunError, match="incomplete"):
        load_report_inputs(f"{out}/d-broken")
    with pytest.raises(RunError, match="no run"):
        load_report_inputs(f"{out}/nothing-here")
    with pytest.raises(RunError, match="after"):
        load_report_inputs(f"{out}/c-second", since=d2 + dt.timedelta(days=1))
    assert split_run_uri("s3://bucket/runs/r1/") == ("s3://bucket/runs", "r1")


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.nums, self.imgs, self.stack, self.text = [], [], [], {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        if tag == "span" and "data-key" in a:
            self.nums.append([a, ""])
            self.stack.append(len(self.nums) - 1)

    def handle_endtag(self, tag):
        if tag == "span" and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack:
            self.nums[self.stack[-1]][1] += data


def _at(obj, key):
    for part in key.split("."):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


def test_report_renders_and_matches_its_json(runs, tmp_path):
    out, _, d1, d2 = runs
    run = f"{out}/c-second"
    html_path, json_path = str(tmp_path / "r.html"), str(tmp_path / "r.json")
    assert cli_main(["report", "--run", run, "--html", html_path, "--json-out", json_path]) == 0
    figures = json.load(open(json_path))
    page = open(html_path).read()

    p = _Page()
    p.feed(page)
    p.close()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    # Every image is an embedded SVG that decodes and parses.
    assert len(p.imgs) >= 5
    for img in p.imgs:
        prefix = "data:image/svg+xml;base64,"
        assert img["src"].startswith(prefix) and img.get("alt")
        root = ET.fromstring(base64.b64decode(img["src"][len(prefix):]))
        assert root.tag.endswith("svg")
    # Every number shown is the JSON's, formatted as it says.
    assert len(p.nums) > 40
    for attrs, text in p.nums:
        value = _at(figures, attrs["data-key"])
        shown = None if attrs["data-value"] == "null" else float(attrs["data-value"])
        assert (value is None and shown is None) or shown == pytest.approx(value, rel=1e-12, abs=0), attrs["data-key"]
        assert text == FORMATS[attrs["data-fmt"]](value), attrs["data-key"]

    # The figures against the outputs themselves.
    hh1, hh2 = _table(f"{out}/b-first-again", "households"), _table(run, "households")
    ok2 = {r["household_id"]: r for r in hh2.to_pylist() if r["status"] != "rejected"}
    ok1 = {r["household_id"]: r for r in hh1.to_pylist() if r["status"] != "rejected"}
    days1, days2 = (d1 - dt.date(d2.year, 1, 1)).days + 1, 3
    h = figures["headline"]
    assert h["households_rebalanced"] == len(ok2)
    assert h["taxes_saved_run"] == pytest.approx(sum(r["taxes_saved"] for r in ok2.values()))
    harvest = sum(r["harvest_value"] for r in ok2.values()) + sum(ok1[k]["harvest_value"] for k in ok2 if k in ok1)
    stock = sum(max(r[c], ok1[k][c] if k in ok1 else -math.inf) for k, r in ok2.items()
                for c in ("deferral_value", "wait_value"))
    assert h["harvest_value_period"] == pytest.approx(harvest)
    assert h["taxes_saved_period"] == pytest.approx(harvest + stock)
    assert h["fees_period"] == pytest.approx(sum(r["fee"] * days2 / 365 for r in ok2.values())
                                             + sum(ok1[k]["fee"] * days1 / 365 for k in ok2 if k in ok1))
    def saved(k):
        r, e = ok2[k], ok1.get(k, {})
        return (r["harvest_value"] + e.get("harvest_value", 0.0)
                + sum(max(r[c], e.get(c, -math.inf)) for c in ("deferral_value", "wait_value")))
    exceed = [k for k, r in ok2.items()
              if saved(k) > r["fee"] * days2 / 365 + (ok1[k]["fee"] * days1 / 365 if k in ok1 else 0.0)]
    assert h["exceeding_period_households"] == len(exceed)
    assert h["exceeding_period_by_value"] == pytest.approx(sum(ok2[k]["value"] for k in exceed)
                                                           / sum(r["value"] for r in ok2.values()))
    assert sum(h[f"{k}_period"] for k in ("harvest_value", "deferral_value", "wait_value")) == pytest.approx(
        h["taxes_saved_period"])
    assert sum(figures["tax_value"]["ratio_histogram_period"]) + figures["tax_value"]["ratio_undefined_period"] == len(ok2)
    assert sum(figures["tracking_error"]["before"]) == len(ok2)
    trades = _table(run, "trades")
    assert sum(x["trades"] for x in figures["trades_by_reason"]) == trades.num_rows
    assert sum(x["value"] for x in figures["trades_by_reason"]) == pytest.approx(sum(trades["value"].to_pylist()))
    acc = _table(run, "accounts")
    assert sum(d["accounts"] for d in figures["dispersion"]) == acc.num_rows
    assert figures["rejected"]["accounts"] == _table(run, "rejected").num_rows
    top = figures["top_households"]
    assert [x["taxes_saved_period"] for x in top] == sorted((x["taxes_saved_period"] for x in top), reverse=True)


def test_report_defaults_write_into_the_run(runs):
    out, _, _, _ = runs
    run = f"{out}/c-second"
    report, html_uri, json_uri = write_report(run)
    assert html_uri.endswith("c-second/report.html") and os.path.exists(f"{run}/report.html")
    # Per household, run and period: the table adds up to the headline.
    per = pq.read_table(f"{run}/report-households.parquet")
    h = report["headline"]
    assert per.num_rows == h["households_rebalanced"]
    for k in ("taxes_saved", "harvest_value", "deferral_value", "wait_value"):
        for p in ("run", "period"):
            assert sum(per[f"{k}_{p}"].to_pylist()) == pytest.approx(h[f"{k}_{p}"])
    assert sum(per["fee_period"].to_pylist()) == pytest.approx(h["fees_period"])
    assert sum(per["exceeds_period"].to_pylist()) == h["exceeding_period_households"]
    assert json.load(open(f"{run}/report.json"))["headline"] == json.loads(json.dumps(report["headline"]))
