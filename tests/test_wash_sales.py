"""Wash sales to the letter (rebalancer/washsale.py), hand-computed on the hand market.

IRC 1091 and Treas. Reg. 1.1091-1: the loss on as many loss shares as replacement shares were
bought in the window is disallowed, matched first in, first out. Each replacement share is used
once. IRC 1091(d) and 1223(3): the disallowed loss moves into the replacement's basis and the
holding period tacks on. Rev. Rul. 2008-5: a replacement in an IRA destroys the loss.

Most cases use a forced sale, so the shares sold are known without solving anything. Account
10 (taxable, model 1) screens out fossil fuels, so its XOM lot is sold in full today
(``Divestment.IMMEDIATE``). XOM trades at $50. Account 11 holds the replacement: XOM bought 10
days ago at $52. It is taxable or a traditional IRA, and may not sell XOM.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest

from handmarket import AS_OF, BOND, IBM, IDXA, IDXB, IDXW, JNJ, MSFT, XOM, account, days_ago, household, lot, market, trade
from rebalancer.optimize import rebalance_household
from rebalancer.problem import VarKind, build_problem
from rebalancer.settings import OptimizerSettings
from rebalancer.simulate import apply_result
from rebalancer.taxlots import is_long_term
from rebalancer.washsale import tacked_acquired, wash_match, wash_state
from test_household_rules import DEFAULTS, HALF_SPREAD, SUB, T_LT, check

TODAY = np.datetime64(AS_OF, "D")


@pytest.fixture(scope="module")
def m():
    return market()


def xom_household(m, loss_shares: float, replacement_shares: float, replacement_type: str = "taxable",
                  loss_acquired: dt.date = days_ago(800), recent=None):
    """Account 10 sells ``loss_shares`` XOM bought at $60 on ``loss_acquired`` (-$10 a share).
    Account 11 bought ``replacement_shares`` XOM 10 days ago at $52 and still holds them. Every
    other lot is at its price (no gain)."""
    lots = [
        lot(1, 10, XOM, loss_shares, 60, loss_acquired),
        lot(2, 10, JNJ, 600, 150, days_ago(800)),
        lot(3, 10, IBM, 30, 100, days_ago(800)),
        lot(4, 10, MSFT, 15, 200, days_ago(800)),
        lot(11, 11, XOM, replacement_shares, 52, days_ago(10)),
        lot(12, 11, JNJ, 60, 150, days_ago(800)),
    ]
    if recent is None:
        recent = [trade(1, 11, XOM, days_ago(10), "buy", replacement_shares, 52)]
    return household(m, [account(10, "taxable", 1, screens=["fossil_free"]),
                         account(11, replacement_type, 1, never_sell=[XOM])], lots, recent)


def run(m, hh, settings=None):
    r = rebalance_household(m, hh, settings)
    check(m, hh, r, "optimal", settings)
    return r


def xom_sell(r):
    t = r.trades
    k = np.flatnonzero(~t.is_buy & (t.security == XOM))
    assert len(k) == 1
    return int(k[0])


def lot_of(hh, account_index: int, security: int) -> np.ndarray:
    return np.flatnonzero((hh.lots.account == account_index) & (hh.lots.security == security))


# --- 1. pro rata --------------------------------------------------------------------------------

def test_pro_rata_disallowance_defers_300_of_a_1000_loss(m):
    """100 shares sold at a $10 loss a share, 30 replacement shares bought 10 days before in
    another taxable account: 30 x $10 = $300 disallowed (deferred), 70 x $10 = $700 allowed."""
    hh = xom_household(m, loss_shares=100, replacement_shares=30)
    r = run(m, hh)
    t = r.trades
    k = xom_sell(r)
    assert t.shares[k] == 100 and t.reason[k] == "screen"
    assert t.realized_gain[k] == pytest.approx(100 * (50 - 60))  # -1,000
    assert t.disallowed_loss[k] == pytest.approx(30 * (50 - 60))  # -300
    assert t.loss_destroyed[k] == 0.0 and t.loss_disallowed[k]
    assert r.disallowed_loss == pytest.approx(-300.0) and r.loss_deferred == pytest.approx(-300.0)
    assert r.loss_destroyed == 0.0
    # Every other trade realizes nothing: the year's long-term loss is the allowed -700, taxed
    # at 23.8% + 5% = 28.8%: -201.60.
    assert r.realized_lt_loss == pytest.approx(-700.0)
    assert r.tax == pytest.approx(T_LT * -700.0, abs=1e-6)
    # The match: lot 1's first 30 shares with the 30 of account 11's buy (recent trade 0).
    w = r.wash
    assert w.lot.tolist() == [0] and w.replacement.tolist() == [0]
    assert w.shares == pytest.approx([30.0]) and w.loss == pytest.approx([-300.0]) and not w.destroyed.any()


def test_more_replacement_shares_than_loss_shares_disallow_the_whole_loss(m):
    """20 loss shares against 30 replacement shares: all 20 are matched, -$200 disallowed."""
    r = run(m, xom_household(m, loss_shares=20, replacement_shares=30))
    k = xom_sell(r)
    assert r.trades.realized_gain[k] == pytest.approx(-200.0)
    assert r.trades.disallowed_loss[k] == pytest.approx(-200.0)
    assert r.realized_lt_loss == pytest.approx(0.0, abs=1e-9) and r.tax == pytest.approx(0.0, abs=1e-9)


def test_a_replacement_sold_since_defers_nothing(m):
    """Account 11 sold the 30 shares again (its lot is gone): a deferral into shares already sold
    comes back at once through that sale, so the whole -1,000 is allowed today."""
    recent = [trade(1, 11, XOM, days_ago(10), "buy", 30, 52), trade(2, 11, XOM, days_ago(3), "sell", 30, 51, -30.0)]
    hh = household(m, [account(10, "taxable", 1, screens=["fossil_free"]), account(11, "taxable", 1)], [
        lot(1, 10, XOM, 100, 60, days_ago(800)), lot(2, 10, JNJ, 600, 150, days_ago(800)),
        lot(12, 11, JNJ, 60, 150, days_ago(800))], recent)
    r = run(m, hh)
    assert r.trades.realized_gain[xom_sell(r)] == pytest.approx(-1000.0)
    assert r.disallowed_loss == 0.0 and r.realized_lt_loss == pytest.approx(-1000.0)


def test_loss_shares_are_matched_in_order_of_acquisition_and_each_replacement_once(m):
    """wash_match by hand. Loss lots sold today: A (50 XOM, bought 400 days ago) and B (50 XOM,
    bought 100 days ago), both at $60. Replacements: 30 shares in the IRA 20 days ago, then 40 in
    taxable account 11 five days ago (lot R, still held).

    The losses go in the order the shares were acquired (Treas. Reg. 1.1091-1(b)). The
    replacements go earliest first (1.1091-1(c)), each share once (1.1091-1(e)):
      A: 30 with the IRA buy (destroyed, -300), then 20 with the taxable buy (deferred, -200);
      B: the taxable buy's last 20 (deferred, -200); its other 30 shares are allowed.
    R itself, at a loss at $55, has the IRA buy as a replacement but not its own purchase."""
    hh = household(m, [account(10, "taxable", 1), account(11, "taxable", 1), account(20, "traditional", 4)], [
        lot(1, 10, XOM, 50, 60, days_ago(400)),  # A
        lot(2, 10, XOM, 50, 60, days_ago(100)),  # B
        lot(3, 11, XOM, 40, 55, days_ago(5)),  # R
        lot(4, 20, XOM, 30, 52, days_ago(20)),
        lot(5, 20, BOND, 100, 100, days_ago(800)),
    ], [trade(1, 20, XOM, days_ago(20), "buy", 30, 52), trade(2, 11, XOM, days_ago(5), "buy", 40, 55)])
    w = wash_match(m, hh, TODAY, np.array([50.0, 50.0, 0.0, 0.0, 0.0]))
    assert w.lot.tolist() == [0, 0, 1]
    assert w.replacement.tolist() == [0, 1, 1]  # recent trades 0 (IRA) and 1 (taxable)
    assert w.shares == pytest.approx([30.0, 20.0, 20.0])
    assert w.loss == pytest.approx([-300.0, -200.0, -200.0])
    assert w.destroyed.tolist() == [True, False, False]
    deferred, destroyed = w.per_lot(len(hh.lots))
    assert deferred == pytest.approx([-200.0, -200.0, 0, 0, 0]) and destroyed == pytest.approx([-300.0, 0, 0, 0, 0])
    # B sold alone finds the IRA's 30 first and then 20 of R's: the pool is not drawn down.
    w = wash_match(m, hh, TODAY, np.array([0.0, 50.0, 0.0, 0.0, 0.0]))
    assert w.shares == pytest.approx([30.0, 20.0]) and w.destroyed.tolist() == [True, False]
    # For pricing, each loss lot as if sold alone in full: A and B 30/50 destroyed and 20/50
    # deferred. R (40 shares, its own buy excluded): 30/40 destroyed by the IRA buy.
    s = wash_state(m, hh, TODAY)
    assert s.destroyed_share == pytest.approx([0.6, 0.6, 0.75, 0, 0])
    assert s.deferred_share == pytest.approx([0.4, 0.4, 0.0, 0, 0])
    # Selling R too takes its shares out of the pool: A and B then meet only the IRA's 30.
    w = wash_match(m, hh, TODAY, np.array([50.0, 50.0, 40.0, 0.0, 0.0]))
    assert w.lot.tolist() == [0] and w.shares == pytest.approx([30.0]) and w.destroyed.all()


# --- 2. basis adjustment and holding period ------------------------------------------------------

def test_the_deferred_loss_moves_into_the_replacement_basis_and_its_holding_period_tacks_on(m):
    """After the $300 deferral: the 30 replacement shares' basis is $52 + $10 = $62 (IRC
    1091(d)). Their holding period takes in the 800 days of the shares sold (IRC 1223(3)): they
    count as acquired 800 days ago, long-term at once. Year to date gets the allowed -$700 only.
    The buy is marked matched, so the next day it replaces nothing more."""
    hh = xom_household(m, loss_shares=100, replacement_shares=30)
    r = run(m, hh)
    nxt = apply_result(hh, r, TODAY)
    (j,) = lot_of(nxt, 1, XOM)
    assert nxt.lots.lot_id[j] == 11 and nxt.lots.shares[j] == 30  # the whole lot: adjusted in place
    assert nxt.lots.cost_basis[j] == pytest.approx(62.0)
    assert nxt.lots.acquired[j] == np.datetime64(days_ago(800), "D")
    assert is_long_term(nxt.lots.acquired[j:j + 1], TODAY)[0]
    assert nxt.ytd_realized_lt == pytest.approx(hh.ytd_realized_lt - 700.0)
    assert nxt.recent.matched[0] == pytest.approx(30.0)
    # The lot's loss is now 30 x (50 - 62) = -360, and nothing disallows it: the one buy in the
    # window is used up.
    s = wash_state(m, nxt, TODAY + 1)
    assert s.deferred_share[j] == 0.0 and s.destroyed_share[j] == 0.0


def test_a_replacement_lot_matched_in_part_is_split(m):
    """20 loss shares against the 30-share replacement lot: 20 shares split off at $62 with
    the tacked date (a new lot id); 10 keep lot 11's $52 and its date."""
    hh = xom_household(m, loss_shares=20, replacement_shares=30)
    nxt = apply_result(hh, run(m, hh), TODAY)
    rows = lot_of(nxt, 1, XOM)
    by_shares = {float(nxt.lots.shares[j]): j for j in rows}
    assert sorted(by_shares) == [10.0, 20.0]
    kept, moved = by_shares[10.0], by_shares[20.0]
    assert nxt.lots.lot_id[kept] == 11 and nxt.lots.cost_basis[kept] == 52.0
    assert nxt.lots.acquired[kept] == np.datetime64(days_ago(10), "D")
    assert nxt.lots.lot_id[moved] not in hh.lots.lot_id
    assert nxt.lots.cost_basis[moved] == pytest.approx(62.0)
    assert nxt.lots.acquired[moved] == np.datetime64(days_ago(800), "D")
    assert nxt.recent.matched[0] == pytest.approx(20.0)


def test_the_holding_period_of_a_short_term_sale_tacks_on(m):
    """Shares sold after 200 days: the replacement bought 10 days ago counts as held since then,
    so it turns long-term 166 days from now (not 356)."""
    hh = xom_household(m, loss_shares=100, replacement_shares=30, loss_acquired=days_ago(200))
    nxt = apply_result(hh, run(m, hh), TODAY)
    (j,) = lot_of(nxt, 1, XOM)
    acq = nxt.lots.acquired[j:j + 1]
    assert acq[0] == np.datetime64(days_ago(200), "D")
    assert not is_long_term(acq, TODAY + 165)[0] and is_long_term(acq, TODAY + 166)[0]


def test_tacked_acquired_by_hand():
    d = np.datetime64("2021-04-21")
    # Bought 10 days before a sale of shares held 800 days: the older date.
    assert tacked_acquired(d - 10, d - 800, d) == d - 800
    # Bought before the shares sold were (a replacement older than the loss lot): its own date.
    assert tacked_acquired(d - 20, d - 5, d) == d - 20
    # Bought 5 days after a sale of shares held 100 days: 100 days earlier than its own date.
    assert tacked_acquired(d + 5, d - 100, d) == d + 5 - 100


# --- 3. a replacement in an IRA destroys the loss ------------------------------------------------

def test_an_ira_replacement_destroys_the_loss_and_each_share_replaces_once(m):
    """The 30 replacement shares are in a traditional IRA: the $200 loss on the 20 shares sold
    is destroyed (Rev. Rul. 2008-5). The household reports it apart from deferrals, and nothing
    is added to the IRA's basis. The next day 10 IRA shares are left to replace: a new 100-share
    loss lot would lose 10/100 of its loss, not 30/100."""
    hh = xom_household(m, loss_shares=20, replacement_shares=30, replacement_type="traditional")
    r = run(m, hh)
    k = xom_sell(r)
    assert r.trades.disallowed_loss[k] == pytest.approx(-200.0) and r.trades.loss_destroyed[k] == pytest.approx(-200.0)
    assert r.loss_destroyed == pytest.approx(-200.0) and r.loss_deferred == 0.0
    assert r.disallowed_loss == pytest.approx(-200.0)
    nxt = apply_result(hh, r, TODAY)
    (j,) = lot_of(nxt, 1, XOM)
    assert nxt.lots.lot_id[j] == 11 and nxt.lots.cost_basis[j] == 52.0 and nxt.lots.shares[j] == 30
    assert nxt.lots.acquired[j] == np.datetime64(days_ago(10), "D")
    assert nxt.recent.matched[0] == pytest.approx(20.0)
    # A new loss lot in account 10 the next day: 10 of the IRA's 30 shares are left.
    later = dataclasses.replace(nxt.lots, **{f: np.append(getattr(nxt.lots, f), v) for f, v in (
        ("lot_id", 99), ("account", 0), ("security", XOM), ("shares", 100.0), ("cost_basis", 60.0),
        ("acquired", np.datetime64(days_ago(900), "D")))})
    nxt2 = dataclasses.replace(nxt, lots=later)
    s = wash_state(m, nxt2, TODAY + 1)
    assert s.destroyed_share[-1] == pytest.approx(0.1) and s.deferred_share[-1] == 0.0


# --- 4. what a sale and a buy cost the optimizer -------------------------------------------------

def test_a_deferred_loss_is_priced_at_its_documented_value(m):
    """The 100-share lot with 30 taxable replacement shares: sold in full, 30% of its loss would
    be deferred. Per dollar sold it is priced at 0.288 x -0.2 x (1 - 0.3 x (1 - 0.5)) = -0.04896
    (g = 1 - 60/50 = -0.2; deferred_loss_value 0.5), plus 0.0005 half spread. For the tax
    budget it counts no loss: its first 30 shares sold realize none."""
    hh = xom_household(m, loss_shares=100, replacement_shares=30)
    p = build_problem(m, hh, OptimizerSettings())
    j = int(np.flatnonzero((p.kind == VarKind.LOT_SELL) & (p.lot == 0))[0])
    v = DEFAULTS.deferred_loss_value
    assert p.cost[j] == pytest.approx(T_LT * -0.2 * (1 - 0.3 * (1 - v)) + HALF_SPREAD, rel=1e-12)
    assert p.gain[j] == 0.0


def test_a_buy_of_a_group_with_taxable_losses_is_charged_the_loss_it_puts_at_risk(m):
    """Taxable: IDXA 9,000 shares at basis $125 (price $100: g = -0.25, long-term), $100,000 cash.
    IRA: $1,000,000 of BOND. V = $2,000,000, household target IDXA 50% (account 10 on model 3),
    held 45%: the group IDX is $100,000 short.

    A buy of IDX puts the loss of as many shares in a window. Per dollar bought it is charged
    B / max(Q, need) x wash_buy_risk x the value lost, where
      Q = $900,000 (the loss lots' value), B = 900,000 x 0.25 x 0.288 = $64,800 (their loss's tax
      value), need = $100,000: 64,800 / 900,000 = 0.072 per dollar;
      value lost: 1 - deferred_loss_value = 0.5 for a taxable buy (deferred), 1 for an IRA's.
    IDXA in account 10: 0.0005 + 0.1 x 0.5 x 0.072 = 0.0041; IDXB (a substitute): + 0.001;
    IDXA in the IRA: 0.0005 + 0.1 x 1 x 0.072 = 0.0077. IDXW (group IDXEW, no loss): 0.0015."""
    hh = household(m, [account(10, "taxable", 3, cash=100_000), account(20, "traditional", 4, never_sell=[BOND])],
                   [lot(1, 10, IDXA, 9_000, 125, days_ago(800)), lot(11, 20, BOND, 10_000, 100, days_ago(800))])
    p = build_problem(m, hh, OptimizerSettings())
    risk, v = DEFAULTS.wash_buy_risk, DEFAULTS.deferred_loss_value

    def buy_cost(acc, sec):
        j = np.flatnonzero((p.kind == VarKind.BUY) & (p.account == acc) & (p.securities[p.security] == sec))
        return float(p.cost[j[0]])
    per_dollar = 900_000 * 0.25 * T_LT / max(900_000, 100_000)
    assert per_dollar == pytest.approx(0.072)
    assert buy_cost(0, IDXA) == pytest.approx(HALF_SPREAD + risk * (1 - v) * per_dollar, rel=1e-12)  # 0.0041
    assert buy_cost(0, IDXB) == pytest.approx(HALF_SPREAD + SUB + risk * (1 - v) * per_dollar, rel=1e-12)
    assert buy_cost(1, IDXA) == pytest.approx(HALF_SPREAD + risk * per_dollar, rel=1e-12)  # 0.0077
    assert buy_cost(0, IDXW) == pytest.approx(HALF_SPREAD + SUB, rel=1e-12)
    # Without losses in the group, nothing is charged.
    even = household(m, [account(10, "taxable", 3, cash=100_000), account(20, "traditional", 4, never_sell=[BOND])],
                     [lot(1, 10, IDXA, 9_000, 100, days_ago(800)), lot(11, 20, BOND, 10_000, 100, days_ago(800))])
    q = build_problem(m, even, OptimizerSettings())
    j = np.flatnonzero((q.kind == VarKind.BUY) & (q.account == 0) & (q.securities[q.security] == IDXA))
    assert q.cost[j[0]] == pytest.approx(HALF_SPREAD, rel=1e-12)


# --- 5. an IRA sale below basis, carried to the next day -----------------------------------------

def test_an_ira_sale_below_basis_is_recorded_against_basis_and_blocks_only_when_asked(m):
    """apply_result records an IRA sale's gain against the position's basis, so that the next
    day's run can tell a sale below basis. The account type says it is no tax loss: it blocks
    buys of its group only under ira_loss_blocks."""
    hh = household(m, [account(10, "taxable", 3), account(20, "traditional", 2)], [
        lot(1, 10, IDXA, 1_000, 100, days_ago(800)),
        lot(11, 20, IDXB, 2_000, 130, days_ago(800)),  # $200,000 of IDXB vs 60% of $300,000: overweight
        lot(12, 20, BOND, 1_000, 100, days_ago(800))])
    r = run(m, hh)
    t = r.trades
    k = np.flatnonzero(~t.is_buy & (t.security == IDXB))
    assert len(k) == 1 and t.realized_gain[k[0]] == 0.0  # no tax in the IRA
    nxt = apply_result(hh, r, TODAY)
    row = len(nxt.recent) - len(t) + int(k[0])
    assert nxt.recent.realized_gain[row] == pytest.approx(t.shares[k[0]] * (100 - 130))
    idx = int(m.wash_group[IDXA])
    assert idx not in wash_state(m, nxt, TODAY + 1).blocked_groups
    assert idx in wash_state(m, nxt, TODAY + 1, ira_loss_blocks=True).blocked_groups
