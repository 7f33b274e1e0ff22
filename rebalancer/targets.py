"""Targets: an account's model after its customizations, and the household's blend.

An account's target is its model with, in this order:

1. **direct indexing**: the weight of ``direct_index_etf`` is replaced by that ETF's index
   constituents, each at the ETF's weight times its index weight;
2. **screens**: every security having an attribute a screen excludes gets weight 0;
3. **never-buy**: every security on the list gets weight 0;
4. the rest is rescaled to sum to 1.

The household target (DESIGN section 4) is the blend of its accounts' targets weighted by
what each account can invest, value less cash reserve; the reserves stay in cash. Weights are
fractions of household value, so they sum to ``1 - reserves / V``.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import BookDataError
from .household import Household
from .market import Market

__all__ = ["account_target", "account_values", "household_target", "excluded_mask"]


def excluded_mask(market: Market, hh: Household, a: int) -> np.ndarray:
    """(S,) securities account ``a`` may not hold by its screens."""
    return market.screened(hh.accounts.screens[a])


def account_target(market: Market, hh: Household, a: int) -> tuple[np.ndarray, np.ndarray]:
    """Target of account ``a`` as (positions, weights summing to 1), positions ascending.

    The arrays are read-only: an account without a never-buy list shares them with every
    account of the market having its model, direct-indexed ETF and screens.
    """
    acc = hh.accounts
    model, etf, screens, never_buy = int(acc.model_id[a]), int(acc.di_etf[a]), tuple(acc.screens[a]), acc.never_buy[a]
    account_id = int(acc.account_id[a])
    if len(never_buy):
        return _account_target(market, model, etf, screens, never_buy, account_id)
    # Nearly every account (97% on the 10k book) has none: its target is the same for all
    # accounts of the same model, ETF and screens, so it is worked out once per market
    # (35 us an account). A rejection is not kept, so each account is named in its own.
    return market.derived(("account_target", model, etf, screens),
                          lambda m: _account_target(m, model, etf, screens, never_buy, account_id))


def _account_target(market: Market, model: int, e: int, screens: tuple, never_buy: np.ndarray,
                    account_id: int) -> tuple[np.ndarray, np.ndarray]:
    pos, w = market.models[model]
    pos, w = np.asarray(pos, np.int64), np.asarray(w, float)
    if e >= 0 and e in pos:
        is_e = pos == e
        we = float(w[is_e].sum())
        members, mw = market.indexes[int(market.index_of[e])]
        pos = np.concatenate([pos[~is_e], members])
        w = np.concatenate([w[~is_e], we * np.asarray(mw, float)])
    excluded = market.screened(screens)
    pos0, w0 = pos, w
    keep = ~excluded[pos] & ~np.isin(pos, never_buy) & (w > 0)
    pos, w = pos[keep], w[keep]
    # Merge duplicates (a model stock that is also an index constituent).
    u, inv = np.unique(pos, return_inverse=True)
    w = np.bincount(inv, weights=w, minlength=len(u))
    total = w.sum()
    key = f"account_id={account_id}"
    if not total > 0:
        by_screens = bool(np.all(excluded[pos0][w0 > 0]))
        raise BookDataError("accounts", key, "screens" if by_screens else "never_buy",
                            f"screens and never-buy list exclude every security of model {model}")
    px = market.price[u]
    bad = ~(np.isfinite(px) & (px > 0))
    if bad.any():
        s = int(market.security_id[u[bad][0]])
        raise BookDataError("securities", f"security_id={s}", "price",
                            f"in the target of account {account_id} but has no price > 0 (got {px[bad][0]})")
    w = w / total
    u.flags.writeable = False
    w.flags.writeable = False
    return u, w


def account_values(market: Market, hh: Household) -> np.ndarray:
    """(A,) value of each account: holdings at market prices plus cash, USD."""
    lots = hh.lots
    held = np.bincount(lots.account, weights=lots.shares * market.price[lots.security], minlength=hh.n_accounts)
    return held + hh.accounts.cash


def household_target(market: Market, hh: Household) -> tuple[np.ndarray, np.ndarray, list]:
    """Household target as (positions, weights of household value), and the per-account targets.

    Weights of an account count with ``max(value - reserve, 0) / household value``.
    """
    values = account_values(market, hh)
    V = float(values.sum())
    if not (math.isfinite(V) and V > 0):
        raise BookDataError("households", f"household_id={hh.household_id}", "*",
                            f"household has no value to rebalance (holdings plus cash = {V})")
    investable = np.maximum(values - hh.accounts.reserve, 0.0)
    per_account = [account_target(market, hh, a) for a in range(hh.n_accounts)]
    in_any = np.zeros(market.n, bool)  # np.unique of the concatenation took 17 us, this 3
    in_any[np.concatenate([p for p, _ in per_account])] = True
    pos = np.flatnonzero(in_any)
    w = np.zeros(len(pos))
    for a, (p, wa) in enumerate(per_account):
        w[np.searchsorted(pos, p)] += investable[a] / V * wa
    return pos, w, per_account
