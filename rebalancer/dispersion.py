"""Dispersion: how far each account is from its own model, and how accounts on one model spread.

A household is optimized as a whole (DESIGN section 1), so an account may sit away from its
model on purpose (bonds held in the IRA, gains deferred in the taxable account). The desk
and the investment committee still ask, per model, how much the accounts that follow it
differ. Per account, against the account's own target (its model after direct indexing,
screens and never-buy, see :mod:`rebalancer.targets`, with the cash reserve kept in cash):

- **tracking error**: the annual volatility of the account's active weights under the risk
  model, ``sqrt(a' (X F X' + L D L') a)`` (the same model the optimizer uses);
- **active share**: half the sum of the absolute active weights, cash included: the share of
  the account that would have to trade to reach its target exactly.

Each is measured before the run's trades, after them (the rounded trades the run outputs)
and after the naive rebalance (what a tax-blind rebalance would have left). A run writes
them per account (``accounts/``); :func:`model_dispersion` summarises them by model:
quantiles across the accounts on each model and their spread.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .household import Household
from .problem import HouseholdProblem

__all__ = ["AccountFigures", "account_figures", "model_dispersion", "STAGES", "QUANTILES"]

STAGES = ("before", "after", "naive")
QUANTILES = (0.1, 0.5, 0.9)


@dataclass(frozen=True, eq=False)
class AccountFigures:
    """Per account of one household, arrays (A,). value : USD before trades (holdings at the
    run's prices plus cash; trades move value between holdings and cash, not out).
    te_* : annual tracking error against the account's target; active_* : active share (a
    fraction of the account); before trades, after the run's trades, after the naive ones."""
    value: np.ndarray
    te_before: np.ndarray
    te_after: np.ndarray
    te_naive: np.ndarray
    active_before: np.ndarray
    active_after: np.ndarray
    active_naive: np.ndarray


def account_figures(p: HouseholdProblem, hh: Household, x_after: np.ndarray, x_naive: np.ndarray) -> AccountFigures:
    """Figures of every account of ``hh`` with ``p`` its problem (built for this run) and
    ``x_after`` / ``x_naive`` trades as points of ``p`` (units of household value)."""
    A, n, V = p.n_accounts, len(p.securities), p.value
    lots = hh.lots
    sec = np.searchsorted(p.securities, lots.security)
    held = np.bincount(lots.account * n + sec, weights=p.lots.value, minlength=A * n).reshape(A, n)
    cash = hh.accounts.cash
    value = held.sum(axis=1) + cash
    safe = np.where(value > 0, value, 1.0)
    investable = np.maximum(value - hh.accounts.reserve, 0.0)
    target = np.zeros((A, n))
    for a, (pos, w) in enumerate(p.account_targets):
        target[a, np.searchsorted(p.securities, pos)] = np.asarray(w) * investable[a] / safe[a]

    # The three stages stacked (3, A, n): the elementwise work and the row sums once, not once
    # per stage. The products with the risk model stay one (A, n) matrix per stage: BLAS may
    # round a product of (3A, n) rows differently. (The look-through's come from L's entries
    # where it is sparse: a direct-indexed household's L is (512, 523) with 2,900 entries.)
    ix, sign = p.account * n + p.security, p.sign
    h = np.stack([held] + [held + np.bincount(ix, weights=sign * x * V, minlength=A * n).reshape(A, n)
                           for x in (x_after, x_naive)])
    active = h / safe[:, None] - target
    active[:, value <= 0] = 0.0
    f = np.stack([(a @ p.exposures) @ p.factor_chol for a in active])
    s = np.stack([p.look.rows_dot(a) for a in active])
    var = np.sum(f * f, axis=2) + np.sum(s * s * p.specific_var, axis=2)
    cash_active = -active.sum(axis=2)  # cash after minus cash targeted (the reserve)
    var = var - p.cash_vol ** 2 * cash_active ** 2  # the risk model's tracking error, not the objective's cash term
    (tb, ta, tn) = np.sqrt(np.maximum(var, 0.0))
    (ab, aa, an) = 0.5 * (np.abs(active).sum(axis=2) + np.abs(cash_active))
    return AccountFigures(value=value, te_before=tb, te_after=ta, te_naive=tn,
                          active_before=ab, active_after=aa, active_naive=an)


def _quantiles(v: np.ndarray) -> list[float]:
    return [float(q) for q in np.quantile(v, QUANTILES)] if len(v) else [float("nan")] * len(QUANTILES)


def model_dispersion(model_id: np.ndarray, columns: dict[str, np.ndarray]) -> list[dict]:
    """Per model (ascending id), over its accounts: count, and for tracking error and active
    share at each stage the 10th/50th/90th percentiles, the spread (90th - 10th) and the
    standard deviation. ``columns`` holds ``te_<stage>`` and ``active_<stage>`` arrays aligned
    with ``model_id`` (one entry per account; NaN entries are left out)."""
    model_id = np.asarray(model_id)
    out = []
    for m in np.unique(model_id):
        sel = model_id == m
        row: dict = {"model_id": int(m), "accounts": int(sel.sum())}
        for measure in ("te", "active"):
            for stage in STAGES:
                v = np.asarray(columns[f"{measure}_{stage}"], float)[sel]
                v = v[np.isfinite(v)]
                q = _quantiles(v)
                row[f"{measure}_{stage}"] = {"p10": q[0], "p50": q[1], "p90": q[2], "spread": q[2] - q[0],
                                             "std": float(np.std(v)) if len(v) else float("nan")}
        out.append(row)
    return out
