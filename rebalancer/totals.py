"""Aggregate figures of a set of households: what a shard reports and a run sums.

:func:`shard_totals` turns a shard's results and rejections into a nested dict of counts,
dollar sums, tracking-error sums and histograms; :func:`merge_totals` adds such dicts (sums
add, ``max_*`` entries take the maximum of the known values, histograms add bin by bin), so
a run's totals are the merge of its shards' in shard order, the same whatever order the
shards finished in.
:func:`headline` derives the figures a desk reads (value-weighted tracking error, losses
harvested, shares of the book).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from .household import Household, Rejection
from .optimize import HouseholdResult

__all__ = ["TE_EDGES", "USD_FIELDS", "shard_totals", "merge_totals", "headline", "te_quantile"]

# Tracking-error histogram edges (annual volatility): fixed, so shard histograms add exactly.
TE_EDGES = (0.0, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, math.inf)

USD_FIELDS = ("value", "bought", "sold", "realized_st_gain", "realized_st_loss", "realized_lt_gain",
              "realized_lt_loss", "disallowed_loss", "loss_deferred", "loss_destroyed", "tax", "naive_tax", "taxes_saved", "harvest_value",
              "deferral_value", "wait_value", "fee", "budget_overrun", "rounding_cost")
STATUSES = ("optimal", "optimal_inaccurate", "budget_exceeded")
STAGES = ("data", "optimization", "error")


def _hist(x: np.ndarray) -> list[int]:
    return np.histogram(np.clip(x, 0.0, 1e9), bins=np.array(TE_EDGES[:-1] + (1e10,)))[0].astype(int).tolist()


def shard_totals(pairs: list[tuple[Household, HouseholdResult]], rejections: Iterable[Rejection]) -> dict:
    """Totals of one shard's rebalanced households (``pairs``) and rejected accounts."""
    rejections = list(rejections)
    rs = [r for _, r in pairs]
    value = np.array([r.value for r in rs], float)
    te = {k: np.array([getattr(r, k) for r in rs], float) for k in ("te_before", "te_after", "te_naive")}
    n_trades = np.array([len(r.trades) for r in rs], int)
    buys = sum(int(np.sum(r.trades.is_buy)) for r in rs)
    accounts_traded = sum(len(np.unique(r.trades.account)) for r in rs)
    status = {s: sum(1 for r in rs if str(r.status) == s) for s in STATUSES}
    return {
        "households": {
            "rebalanced": len(rs),
            "rejected": len({j.household_id for j in rejections}),
            "with_trades": int(np.sum(n_trades > 0)),
            "status": status,
        },
        "accounts": {
            "rebalanced": sum(hh.n_accounts for hh, _ in pairs),
            "rejected": len({j.account_id for j in rejections}),
            "rejected_by_stage": {s: len({j.account_id for j in rejections if j.stage == s}) for s in STAGES},
            "traded": accounts_traded,
        },
        "trades": {"rows": int(n_trades.sum()), "buys": buys, "sells": int(n_trades.sum()) - buys},
        "usd": {k: float(sum(getattr(r, k) for r in rs)) for k in USD_FIELDS},
        "tracking_error": {
            **{f"{k}_value_weighted_sum": float(np.dot(value, v)) for k, v in te.items()},
            **{f"{k}_sum": float(v.sum()) for k, v in te.items()},
            **{f"{k}_histogram": _hist(v) for k, v in te.items()},
            "improved": int(np.sum(te["te_after"] < te["te_before"] - 1e-12)),
        },
        "solver": {
            "solves": sum(r.solves for r in rs),
            "fallback_solves": sum(r.fallbacks for r in rs),
            "fallback_households": sum(1 for r in rs if r.fallbacks),
            "iterations": sum(r.iterations for r in rs),
            "naive_infeasible": sum(1 for r in rs if not r.naive_feasible),
            # The largest known residuals: a result with none (NaN: the fast+naive trades have
            # no dual) is left out, not let through max(), where a NaN wins or loses by position.
            "max_primal_residual": _max_known(r.primal_residual for r in rs),
            "max_dual_residual": _max_known(r.dual_residual for r in rs),
        },
    }


def _max_known(values) -> float:
    """The largest finite value (0 with none): NaN, infinity and null are unknown, not large."""
    return max((float(v) for v in values if v is not None and math.isfinite(v)), default=0.0)


def merge_totals(parts: Iterable[dict]) -> dict:
    """Add totals dicts of the same shape (``max_*`` keys take the maximum)."""
    out: dict | None = None
    for p in parts:
        out = p if out is None else _merge(out, p)
    return out if out is not None else shard_totals([], [])


def _merge(a, b, key: str = ""):
    if isinstance(a, dict):
        if set(a) != set(b):
            raise ValueError(f"totals of different shapes: {sorted(set(a) ^ set(b))}")
        return {k: _merge(a[k], b[k], k) for k in a}
    if isinstance(a, list):
        return [x + y for x, y in zip(a, b, strict=True)]
    if key.startswith("max_"):
        return _max_known((a, b))  # a record written before outputs were strict may hold NaN
    return a + b


def te_quantile(hist: list[int], q: float) -> float:
    """Upper edge of the histogram bin holding quantile ``q`` (a conservative quantile)."""
    n = sum(hist)
    if n == 0:
        return float("nan")
    c = np.cumsum(hist)
    i = int(np.searchsorted(c, q * n))
    return TE_EDGES[min(i + 1, len(TE_EDGES) - 1)]


def headline(t: dict) -> dict:
    """The figures a desk reads first, derived from run totals."""
    usd, te = t["usd"], t["tracking_error"]
    v = usd["value"]
    n = t["households"]["rebalanced"]

    def vw(k):
        return te[f"{k}_value_weighted_sum"] / v if v else float("nan")

    # Realized ST/LT losses are the allowed ones (disallowed wash-sale losses are apart).
    harvested = -(usd["realized_st_loss"] + usd["realized_lt_loss"])
    return {
        "value_rebalanced": v,
        "turnover": (usd["bought"] + usd["sold"]) / v if v else 0.0,
        "net_realized_gain": usd["realized_st_gain"] + usd["realized_lt_gain"] - harvested,
        "losses_harvested": harvested,
        "losses_harvested_share_of_value": harvested / v if v else 0.0,
        "taxes_saved_share_of_value": usd["taxes_saved"] / v if v else 0.0,
        "te_before_value_weighted": vw("te_before"),
        "te_after_value_weighted": vw("te_after"),
        "te_naive_value_weighted": vw("te_naive"),
        "te_before_mean": te["te_before_sum"] / n if n else float("nan"),
        "te_after_mean": te["te_after_sum"] / n if n else float("nan"),
        "te_before_median_bin": te_quantile(te["te_before_histogram"], 0.5),
        "te_after_median_bin": te_quantile(te["te_after_histogram"], 0.5),
        "te_after_p90_bin": te_quantile(te["te_after_histogram"], 0.9),
    }
