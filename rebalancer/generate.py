"""Synthetic book generator (DESIGN section 5), one household bucket at a time.

Every bucket is generated from its own random stream ``SeedSequence(seed, spawn_key=(bucket,))``
and the shared universe, so buckets can be made in any order, in parallel, on any machine, and
the same seed gives the same bytes.

What a bucket holds, by construction:

- households of 1-4 accounts (mean ~2.33), types 60% taxable / 25% traditional / 15% Roth;
- account values log-normal (median $80k) with a Pareto tail to $50M (~$50B per 350k accounts);
- ~20% of taxable accounts direct-indexed: the model's S&P 500 ETF replaced by 200-500 of its
  constituents, several lots each; other accounts hold their model's 3-16 funds;
- lots bought between the account's opening (up to 10 years ago) and today at the real (or
  synthetic) close of that day; later purchases are smaller the more the security has risen
  since (partial rebalancing), so weights drift from target but not without bound;
- ~2% of taxable accounts in a multi-year transition from a legacy stock portfolio with old,
  low-basis lots; ~10% with screens, ~5% with never-buy / never-sell restrictions, ~10% with a
  withdrawal reserve, ~5% with a new deposit; ~5% with their own minimum new position ($100
  or $250) and ~5% with their own cash band ($250 or $1,000), the rest on the firm's defaults;
- recent trades: every lot bought in the last 31 days has its buy, and ~3% of taxable accounts
  sold a security at a loss in the last 30 days, so wash-sale windows are live;
- tax rates, year-to-date gains, carry-forwards, tax budgets, fees and tax sensitivity vary
  by household and grow with wealth the way brackets do.
"""
from __future__ import annotations

import datetime as dt
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
import multiprocessing as mp

import numpy as np
import pyarrow as pa

from .book import BookInfo, BookWriter, BucketStats, table_path
from .marketdata import LAST_DATE
from .riskmodel import estimate_risk_model
from .schema import TABLES, AccountType, TradeSide, conform
from .storage import S3Options, open_uri
from .universe import SCREEN_ATTRIBUTES, Universe, build_universe

__all__ = ["GeneratorSettings", "generate_bucket", "generate_book", "reference_tables"]

ACCOUNT_TYPES = (AccountType.TAXABLE.value, AccountType.TRADITIONAL.value, AccountType.ROTH.value)
_EPOCH = np.datetime64("1970-01-01", "D")


@dataclass(frozen=True)
class GeneratorSettings:
    """accounts : total accounts in the book. seed : random seed. as_of : the book's date
    (a trading day of the shipped history; default its last day). accounts_per_bucket : sets
    the number of buckets, ``ceil(accounts / accounts_per_bucket)``."""
    accounts: int
    seed: int = 0
    as_of: dt.date | None = None
    accounts_per_bucket: int = 2500

    def __post_init__(self):
        if self.accounts < 1:
            raise ValueError(f"accounts must be >= 1, got {self.accounts}")
        if self.accounts_per_bucket < 1:
            raise ValueError(f"accounts_per_bucket must be >= 1, got {self.accounts_per_bucket}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def n_buckets(self) -> int:
        return max(1, math.ceil(self.accounts / self.accounts_per_bucket))

    def bucket_accounts(self, b: int) -> int:
        q, r = divmod(self.accounts, self.n_buckets)
        return q + (1 if b < r else 0)


def reference_tables(u: Universe) -> dict[str, pa.Table]:
    """The book's reference tables: securities, models, indexes, screens and the risk model."""
    return {
        "securities": u.securities, "models": u.models, "index_constituents": u.index_constituents,
        "screens": u.screens, **estimate_risk_model(u).to_tables(),
    }


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For CSR-style counts, the parent index of each child and the child's rank in its parent."""
    parent = np.repeat(np.arange(len(counts)), counts)
    start = np.cumsum(counts) - counts
    return parent, np.arange(counts.sum()) - start[parent]


def _list_array(offsets_counts: np.ndarray, values: np.ndarray, type_) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(offsets_counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, type_))


class _Ctx:
    """Per-process view of the universe, in the array shapes the generator needs."""

    def __init__(self, u: Universe):
        self.u = u
        sec = u.securities
        self.n_sec = sec.num_rows
        self.t0 = len(u.dates) - 1
        self.price_now = u.price[-1]
        self.first_valid = np.argmax(np.isfinite(u.price), axis=0)
        m = u.models
        order = np.lexsort((m["security_id"].to_numpy(), m["model_id"].to_numpy()))
        self.m_sec = m["security_id"].to_numpy()[order]
        self.m_w = m["weight"].to_numpy()[order]
        self.m_count = np.bincount(m["model_id"].to_numpy(), minlength=len(u.model_family))
        self.m_start = np.cumsum(self.m_count) - self.m_count
        self.n_models = len(self.m_count)
        self.sp_ids, self.sp_w = u.sp500
        self.stock_ids = np.flatnonzero(np.asarray(sec["kind"].to_pylist()) == "stock")
        attrs = sec["attributes"].to_pylist()
        self.excluded = {s: np.array([any(a in attrs[i] for a in A) for i in range(self.n_sec)])
                         for s, A in SCREEN_ATTRIBUTES.items()}
        self.screen_names = np.array(sorted(SCREEN_ATTRIBUTES))
        self.dates = u.dates
        self.as_of = u.dates[-1]


_CTX: _Ctx | None = None


def _ctx(as_of: dt.date | None) -> _Ctx:
    global _CTX
    if _CTX is None or _CTX.u.as_of != (as_of or LAST_DATE):
        _CTX = _Ctx(build_universe(as_of))
    return _CTX


def generate_bucket(settings: GeneratorSettings, b: int) -> tuple[dict[str, pa.Table], BucketStats]:
    """Households, accounts, lots and recent trades of bucket ``b``, and its counts."""
    c = _ctx(settings.as_of)
    rng = np.random.default_rng(np.random.SeedSequence(settings.seed, spawn_key=(b,)))
    nb = settings.n_buckets
    n_acc = settings.bucket_accounts(b)

    # Households and their accounts.
    sizes = rng.choice([1, 2, 3, 4], p=[0.25, 0.35, 0.22, 0.18], size=n_acc // 2 + 8)
    cum = np.cumsum(sizes)
    H = int(np.searchsorted(cum, n_acc) + 1)
    sizes = sizes[:H].copy()
    sizes[-1] -= cum[H - 1] - n_acc
    hh_id = b + nb * np.arange(H, dtype=np.int64)
    a_hh, a_rank = _expand(sizes)
    A = n_acc
    acc_id = hh_id[a_hh] * 10 + a_rank
    a_type = rng.choice(3, p=[0.60, 0.25, 0.15], size=A)
    taxable = a_type == 0

    value = np.exp(rng.normal(math.log(80_000), 1.0, size=A))
    tail = rng.random(A) < 0.002
    value[tail] = np.minimum(2e6 * (1.0 + rng.pareto(1.2, tail.sum())), 5e7)
    value = np.maximum(value, 2_000.0)
    direct = taxable & (value >= 100_000) & (rng.random(A) < 0.5)
    legacy = taxable & ~direct & (rng.random(A) < 0.02)

    # Models: 4 families x 5 risk levels; munis only for taxable accounts, DI needs an SP500 ETF.
    fam_p = np.where(taxable[:, None], [0.30, 0.35, 0.15, 0.20], [0.40, 0.0, 0.30, 0.30])
    fam_p = np.where(direct[:, None], [0.40, 0.40, 0.0, 0.20], fam_p)
    fam = (rng.random(A)[:, None] > np.cumsum(fam_p, axis=1)).sum(axis=1)
    model = fam * 5 + rng.integers(0, 5, A)
    di_etf = np.where(direct, c.u.model_di_etf[model], -1)
    direct &= di_etf >= 0
    di_etf = np.where(direct, di_etf, -1)

    # Account restrictions and cash.
    has_screen = rng.random(A) < np.where(direct, 0.30, 0.055)
    n_screens = np.where(has_screen, rng.integers(1, 3, A), 0)
    sc_parent, _ = _expand(n_screens)
    screens = c.screen_names[rng.integers(0, len(c.screen_names), len(sc_parent))]
    # Dedupe within an account: sort by (account, name) and drop repeats.
    o = np.lexsort((screens, sc_parent))
    sc_parent, screens = sc_parent[o], screens[o]
    keep = np.ones(len(screens), bool)
    keep[1:] = (sc_parent[1:] != sc_parent[:-1]) | (screens[1:] != screens[:-1])
    sc_parent, screens = sc_parent[keep], screens[keep]
    n_screens = np.bincount(sc_parent, minlength=A)
    excluded = np.zeros((A, c.n_sec), bool)
    for s in c.screen_names:
        rows = sc_parent[screens == s]
        excluded[rows] |= c.excluded[s][None, :]
    new_screen = rng.random(A) < 0.2  # a screen added recently: holdings not yet divested

    start_days = rng.integers(0, 10 * 252, A)
    start_t = np.maximum(c.t0 - start_days, 0)
    frac = direct | (rng.random(A) < 0.3)

    # Positions: model funds (minus the DI ETF) + DI stocks + legacy stocks.
    mc = c.m_count[model]
    p_acc, p_rank = _expand(mc)
    p_sec = c.m_sec[c.m_start[model][p_acc] + p_rank]
    p_w = c.m_w[c.m_start[model][p_acc] + p_rank]
    is_di_etf = p_sec == di_etf[p_acc]
    di_weight = np.bincount(p_acc, weights=np.where(is_di_etf, p_w, 0.0), minlength=A)
    keep = ~is_di_etf & ~(legacy[p_acc] & (rng.random(len(p_acc)) < 0.7))
    p_acc, p_sec, p_w = p_acc[keep], p_sec[keep], p_w[keep]

    di_rows = np.flatnonzero(direct)
    k_di = np.minimum(rng.integers(200, 501, len(di_rows)), len(c.sp_ids))
    # Gumbel top-k: a weighted sample without replacement, heavier names more likely held.
    scores = np.log(c.sp_w)[None, :] + rng.gumbel(size=(len(di_rows), len(c.sp_ids)))
    scores[excluded[di_rows][:, c.sp_ids] & ~new_screen[di_rows][:, None]] = -np.inf
    ranks = np.argsort(-scores, axis=1)
    di_parent, di_rank = _expand(k_di)
    di_sec_idx = ranks[di_parent, di_rank]
    di_sec = c.sp_ids[di_sec_idx]
    di_w = c.sp_w[di_sec_idx]
    di_w = di_w / np.bincount(di_parent, weights=di_w)[di_parent] * di_weight[di_rows][di_parent]

    lg_rows = np.flatnonzero(legacy)
    k_lg = rng.integers(15, 41, len(lg_rows))
    lg_parent, _ = _expand(k_lg)
    lg_sec = c.stock_ids[rng.integers(0, len(c.stock_ids), len(lg_parent))]
    lg_w = rng.dirichlet(np.ones(3), len(lg_parent))[:, 0]

    p_acc = np.concatenate([p_acc, di_rows[di_parent], lg_rows[lg_parent]])
    p_sec = np.concatenate([p_sec, di_sec, lg_sec])
    p_w = np.concatenate([p_w, di_w, lg_w])
    p_legacy = np.concatenate([np.zeros(len(p_w) - len(lg_w), bool), np.ones(len(lg_w), bool)])
    o = np.lexsort((p_sec, p_acc))
    p_acc, p_sec, p_w, p_legacy = p_acc[o], p_sec[o], p_w[o], p_legacy[o]
    dup = np.zeros(len(p_acc), bool)
    dup[1:] = (p_acc[1:] == p_acc[:-1]) & (p_sec[1:] == p_sec[:-1])
    p_acc, p_sec, p_w, p_legacy = p_acc[~dup], p_sec[~dup], p_w[~dup], p_legacy[~dup]

    # Lots: smaller accounts have fewer lots; legacy lots are old.
    lam = np.where(direct[p_acc], 1.2, 1.6) * np.minimum(1.0, value[p_acc] / 100_000.0)
    n_lots = 1 + rng.poisson(lam)
    l_pos, l_rank = _expand(n_lots)
    l_acc, l_sec = p_acc[l_pos], p_sec[l_pos]
    lo = np.maximum(np.where(p_legacy[l_pos], 0, start_t[l_acc]), c.first_valid[l_sec])
    lo = np.minimum(lo, c.t0 - 1)
    u_t = np.where(l_rank == 0, 0.0, rng.random(len(l_pos)))
    if legacy.any():
        u_t = np.where(p_legacy[l_pos], rng.random(len(l_pos)) * 0.6, u_t)
    l_t = lo + np.floor(u_t * (c.t0 - lo)).astype(np.int64)
    l_t = np.minimum(l_t, c.t0 - 1)  # nothing was bought on the as-of day itself: the run is today
    px_then = c.u.price[l_t, l_sec]
    growth = c.price_now[l_sec] / px_then
    amount = p_w[l_pos] / n_lots[l_pos] * np.exp(rng.normal(0, 0.3, len(l_pos))) * growth ** -0.8
    shares = amount / px_then
    invested = np.bincount(l_acc, weights=shares * c.price_now[l_sec], minlength=A)
    cash_frac = rng.uniform(0.003, 0.03, A)
    scale = value * (1.0 - cash_frac) / np.where(invested > 0, invested, 1.0)
    shares = shares * scale[l_acc]
    whole = ~frac[l_acc]
    shares = np.where(whole, np.floor(shares + 0.5), np.round(shares, 6))
    keep = shares > 0
    l_acc, l_sec, l_t, shares, px_then = l_acc[keep], l_sec[keep], l_t[keep], shares[keep], px_then[keep]
    basis = np.round(px_then, 4)
    l_rank = _expand(np.bincount(l_acc, minlength=A))[1]
    lot_id = acc_id[l_acc] * 100_000 + l_rank
    acquired = c.dates[l_t]
    holdings = np.bincount(l_acc, weights=shares * c.price_now[l_sec], minlength=A)

    # Cash, deposits, withdrawals.
    deposit = np.where(rng.random(A) < 0.05, value * rng.uniform(0.02, 0.30, A), 0.0)
    cash = np.round(value * cash_frac + deposit, 2)
    deposit = np.round(deposit, 2)
    reserve = np.round(np.where(rng.random(A) < 0.10, value * rng.uniform(0.01, 0.08, A), 0.0), 2)

    # Restrictions: never-sell one held security, never-buy one stock.
    restricted = rng.random(A) < 0.05
    which = rng.integers(0, 3, A)  # 0: never-sell, 1: never-buy, 2: both
    first_pos = np.searchsorted(p_acc, np.arange(A))
    pos_count = np.bincount(p_acc, minlength=A)
    ns_ok = restricted & (which != 1) & (pos_count > 0)
    ns_sec = p_sec[np.minimum(first_pos + (rng.random(A) * np.maximum(pos_count, 1)).astype(np.int64), len(p_sec) - 1)]
    nb_ok = restricted & (which != 0)
    nb_sec = c.stock_ids[rng.integers(0, len(c.stock_ids), A)]
    transition_years = np.where(legacy, rng.integers(2, 6, A), 0).astype(np.int16)
    t_start = c.as_of - rng.integers(0, 365, A).astype("timedelta64[D]")

    accounts = pa.table({
        "account_id": acc_id, "household_id": hh_id[a_hh], "bucket": np.full(A, b, np.int32),
        "account_type": np.asarray(ACCOUNT_TYPES)[a_type], "model_id": model.astype(np.int32),
        "cash": cash, "deposit": deposit, "cash_reserve": reserve,
        "screens": _list_array(n_screens, screens, pa.string()),
        "never_buy": _list_array(nb_ok.astype(np.int64), nb_sec[nb_ok], pa.int32()),
        "never_sell": _list_array(ns_ok.astype(np.int64), ns_sec[ns_ok], pa.int32()),
        "direct_index_etf": pa.array(di_etf, pa.int32(), mask=di_etf < 0),
        "min_trade": rng.choice([0.0, 25.0, 50.0, 100.0], size=A),
        "fractional_shares": frac,
        "transition_years": transition_years,
        "transition_start": pa.array(t_start, pa.date32(), mask=~legacy),
    })
    lots = pa.table({
        "lot_id": lot_id, "account_id": acc_id[l_acc], "household_id": hh_id[a_hh][l_acc],
        "bucket": np.full(len(lot_id), b, np.int32), "security_id": l_sec.astype(np.int32),
        "shares": shares, "cost_basis": basis, "acquired": pa.array(acquired, pa.date32()),
    })

    # Recent trades: the buys behind lots of the last 31 days, and recent loss sales.
    window = c.as_of - np.timedelta64(31, "D")
    rb = np.flatnonzero(acquired >= window)
    ls_acc = np.flatnonzero(taxable & (pos_count > 0) & (rng.random(A) < 0.03))
    ls_sec = p_sec[first_pos[ls_acc] + (rng.random(len(ls_acc)) * pos_count[ls_acc]).astype(np.int64)]
    recent_t = np.flatnonzero(c.dates >= c.as_of - np.timedelta64(30, "D"))
    ls_t = recent_t[rng.integers(0, len(recent_t), len(ls_acc))]
    ls_px = np.round(c.u.price[ls_t, ls_sec], 4)
    ls_shares = np.maximum(1.0, np.floor(value[ls_acc] * rng.uniform(0.005, 0.03, len(ls_acc)) / ls_px))
    ls_gain = np.round(-ls_shares * ls_px * rng.uniform(0.03, 0.25, len(ls_acc)), 2)
    t_acc = np.concatenate([l_acc[rb], ls_acc])
    t_n = np.concatenate([np.zeros(len(rb), np.int64), np.ones(len(ls_acc), np.int64)])
    o = np.lexsort((np.concatenate([lot_id[rb], np.zeros(len(ls_acc), np.int64)]), t_n, t_acc))
    t_rank = _expand(np.bincount(t_acc[o], minlength=A))[1]
    recent = pa.table({
        "trade_id": (acc_id[t_acc] * 100_000)[o] + t_rank,  # a new DI account buys >1,000 lots
        "account_id": acc_id[t_acc][o], "household_id": hh_id[a_hh][t_acc][o],
        "bucket": np.full(len(t_acc), b, np.int32),
        "security_id": np.concatenate([l_sec[rb], ls_sec]).astype(np.int32)[o],
        "trade_date": pa.array(np.concatenate([acquired[rb], c.dates[ls_t]])[o], pa.date32()),
        "side": np.where(t_n == 1, TradeSide.SELL.value, TradeSide.BUY.value)[o],
        "shares": np.concatenate([shares[rb], ls_shares])[o],
        "price": np.concatenate([basis[rb], ls_px])[o],
        "realized_gain": pa.array(np.concatenate([np.zeros(len(rb)), ls_gain])[o], pa.float64(),
                                  mask=(t_n == 0)[o]),
    })

    # Households: brackets grow with wealth.
    hh_value = np.bincount(a_hh, weights=holdings + cash, minlength=H)
    bracket = np.clip(np.searchsorted([150e3, 400e3, 1e6, 3e6, 10e6], hh_value) + rng.integers(-1, 2, H), 0, 5)
    st_rate = np.array([0.12, 0.22, 0.24, 0.32, 0.35, 0.37])[bracket]
    lt_rate = np.array([0.0, 0.15, 0.15, 0.188, 0.238, 0.238])[bracket]
    state = rng.choice([0.0, 0.0307, 0.0495, 0.0575, 0.0685, 0.093, 0.109, 0.133], p=[0.25, 0.1, 0.15, 0.15, 0.1, 0.1, 0.05, 0.1], size=H)
    hh_ls = np.bincount(a_hh[ls_acc], weights=ls_gain, minlength=H)
    ytd_st = np.round(hh_value * rng.normal(0.0, 0.004, H) + hh_ls, 2)
    ytd_lt = np.round(hh_value * rng.normal(0.004, 0.01, H), 2)
    has_cf = rng.random(H) < 0.15
    cf_st = np.round(np.where(has_cf, hh_value * rng.uniform(0, 0.02, H), 0.0), 2)
    cf_lt = np.round(np.where(has_cf, hh_value * rng.uniform(0, 0.04, H), 0.0), 2)
    has_budget = rng.random(H) < 0.6
    budget = np.round(hh_value * rng.uniform(0.002, 0.03, H), 2)
    fee = np.array([0.010, 0.0085, 0.0070, 0.0055, 0.0040])[np.searchsorted([250e3, 1e6, 3e6, 10e6], hh_value)]
    sens = rng.choice([0.0, 0.5, 1.0, 1.5, 2.0], p=[0.05, 0.15, 0.55, 0.15, 0.10], size=H)
    households = pa.table({
        "household_id": hh_id, "bucket": np.full(H, b, np.int32),
        "advisor_id": rng.integers(1, 1201, H).astype(np.int32),
        "short_term_rate": st_rate, "long_term_rate": lt_rate, "state_rate": state,
        "ytd_realized_st": ytd_st, "ytd_realized_lt": ytd_lt,
        "loss_carryforward_st": cf_st, "loss_carryforward_lt": cf_lt,
        "tax_budget": pa.array(budget, pa.float64(), mask=~has_budget),
        "fee_rate": fee, "tax_sensitivity": sens,
    })
    # Per-account overrides of the firm's minimum new position and cash band, ~5% of accounts
    # each (the rest null: the firm default). Drawn last, so every other column of the bucket
    # is what the same seed gave before they existed.
    has_min_pos = rng.random(A) < 0.05
    min_pos = rng.choice([100.0, 250.0], size=A)
    has_band = rng.random(A) < 0.05
    band = rng.choice([250.0, 1000.0], size=A)
    accounts = (accounts.append_column("min_position", pa.array(min_pos, pa.float64(), mask=~has_min_pos))
                .append_column("cash_band", pa.array(band, pa.float64(), mask=~has_band)))
    pos_key = l_acc.astype(np.int64) * c.n_sec + l_sec  # lots are sorted by (account, security)
    positions = int(np.count_nonzero(np.diff(pos_key))) + 1 if len(pos_key) else 0
    stats = BucketStats(bucket=b, households=H, accounts=A, lots=lots.num_rows, recent_trades=recent.num_rows,
                        positions=int(positions), value=round(float(holdings.sum() + cash.sum()), 2))
    return {"households": households, "accounts": accounts, "lots": lots, "recent_trades": recent}, stats


def _write_bucket(args) -> BucketStats:
    settings, b, uri, s3 = args
    tables, stats = generate_bucket(settings, b)
    loc = open_uri(uri, s3)
    for name, t in tables.items():
        loc.write_parquet(table_path(TABLES[name], b), conform(t, TABLES[name]))
    return stats


def generate_book(settings: GeneratorSettings, uri: str, *, s3: S3Options | None = None,
                  overwrite: bool = False, workers: int = 1, progress=None) -> BookInfo:
    """Generate a whole book into ``uri`` with ``workers`` processes; returns its ``book.json``.

    The result does not depend on ``workers``. ``progress(done, total)`` is called per bucket.
    """
    writer = BookWriter(uri, s3, overwrite=overwrite)
    u = build_universe(settings.as_of)
    for name, t in reference_tables(u).items():
        writer.write(name, t)
    jobs = [(settings, b, uri, s3) for b in range(settings.n_buckets)]
    stats: list[BucketStats] = []
    if workers <= 1:
        for j in jobs:
            stats.append(_write_bucket(j))
            if progress:
                progress(len(stats), len(jobs))
    else:
        # spawn, not fork: the AWS SDK and Arrow's thread pools are not fork-safe.
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            for s in ex.map(_write_bucket, jobs, chunksize=1):
                stats.append(s)
                if progress:
                    progress(len(stats), len(jobs))
    source = {"generator": "rebalancer.generate", **{k: (v.isoformat() if isinstance(v, dt.date) else v)
                                                      for k, v in asdict(settings).items()}}
    source["as_of"] = u.as_of.isoformat()
    info = BookInfo(as_of=u.as_of, n_buckets=settings.n_buckets, buckets=tuple(stats), source=source)
    writer.finish(info)
    return info
