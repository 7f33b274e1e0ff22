"""One household's data, checked, as arrays: the input of the household problem.

:func:`split_households` turns one shard's Arrow tables (households, accounts, lots, recent
trades) into :class:`Household` objects, and every account it cannot use into a
:class:`Rejection` that names the account, the table, the row and the field. A household with
one bad account is rejected whole: optimizing the rest of it would move money on a wrong
picture of the household.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .errors import BookDataError
from .market import Market
from .schema import AccountType, TradeSide

__all__ = ["Accounts", "Lots", "RecentTrades", "Household", "Rejection", "split_households", "select_households", "TAXABLE", "TRADITIONAL", "ROTH"]

TAXABLE, TRADITIONAL, ROTH = 0, 1, 2
_ACCOUNT_TYPE = {AccountType.TAXABLE.value: TAXABLE, AccountType.TRADITIONAL.value: TRADITIONAL, AccountType.ROTH.value: ROTH}


@dataclass(frozen=True, eq=False)
class Accounts:
    """A household's accounts (A of them), arrays of shape (A,).

    account_type : 0 taxable, 1 traditional, 2 roth. cash, deposit, reserve : USD.
    screens : tuple of A tuples of screen ids. never_buy, never_sell : tuple of A arrays of
    security positions. di_etf : position of the ETF to direct-index, -1 for none.
    transition_start : datetime64[D], NaT without a transition.
    min_trade : USD, 0 for the firm default. min_position, cash_band : USD, NaN for the firm
    default (the book's null; see :func:`rebalancer.discrete.account_minimums`).
    """
    account_id: np.ndarray
    account_type: np.ndarray
    model_id: np.ndarray
    cash: np.ndarray
    deposit: np.ndarray
    reserve: np.ndarray
    screens: tuple
    never_buy: tuple
    never_sell: tuple
    di_etf: np.ndarray
    min_trade: np.ndarray
    fractional: np.ndarray
    transition_years: np.ndarray
    transition_start: np.ndarray
    min_position: np.ndarray
    cash_band: np.ndarray

    def __len__(self) -> int:
        return len(self.account_id)


@dataclass(frozen=True, eq=False)
class Lots:
    """Tax lots (L of them), arrays of shape (L,). ``account`` indexes the household's
    accounts, ``security`` is a market position. Positions in IRAs are lots too."""
    lot_id: np.ndarray
    account: np.ndarray
    security: np.ndarray
    shares: np.ndarray
    cost_basis: np.ndarray
    acquired: np.ndarray  # datetime64[D]

    def __len__(self) -> int:
        return len(self.lot_id)


@dataclass(frozen=True, eq=False)
class RecentTrades:
    """Trades of the last 31 days (wash-sale windows), arrays of shape (R,).

    realized_gain : USD, NaN for buys; a sale in a traditional IRA or Roth records its gain
    against the position's basis, which is no tax loss (:mod:`rebalancer.washsale`).
    matched : shares of a buy already matched as replacement shares of a loss sale (a share
    disallows one loss only, Treas. Reg. 1.1091-1(e)); None: none. A book does not say which
    buys its earlier loss sales were matched with, so a household read from one starts at None
    (the conservative side: a buy may disallow again); :func:`rebalancer.simulate.apply_result`
    carries the engine's own matches from day to day.
    """
    account: np.ndarray
    security: np.ndarray
    date: np.ndarray  # datetime64[D]
    is_buy: np.ndarray
    shares: np.ndarray
    price: np.ndarray
    realized_gain: np.ndarray  # NaN for buys
    matched: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.account)


@dataclass(frozen=True, eq=False)
class Household:
    """Everything the household problem needs about one household.

    Rates are fractions; ``tax_budget`` is NaN when the household has no cap.
    """
    household_id: int
    short_term_rate: float
    long_term_rate: float
    state_rate: float
    ytd_realized_st: float
    ytd_realized_lt: float
    loss_carryforward_st: float
    loss_carryforward_lt: float
    tax_budget: float
    fee_rate: float
    tax_sensitivity: float
    accounts: Accounts
    lots: Lots
    recent: RecentTrades
    advisor_id: int = 0

    @property
    def n_accounts(self) -> int:
        return len(self.accounts)

    def value(self, market: Market) -> float:
        """Holdings at the market's prices plus cash, USD."""
        return float(np.sum(self.lots.shares * market.price[self.lots.security]) + np.sum(self.accounts.cash))


@dataclass(frozen=True)
class Rejection:
    """An account that could not be processed, and why. ``table``, ``key`` and ``field``
    point at the offending record (it may be another account of the same household)."""
    account_id: int
    household_id: int
    reason: str
    table: str
    key: str
    field: str
    stage: str = "data"  # data | optimization | shard

    @classmethod
    def of(cls, account_id: int, household_id: int, err: BookDataError, prefix: str = "") -> "Rejection":
        return cls(int(account_id), int(household_id), prefix + str(err), err.table, err.key, err.field)


# The never-buy or never-sell list of an account without one (shared, read-only).
_NO_SECURITIES = np.zeros(0, np.int64)
_NO_SECURITIES.flags.writeable = False


def _col(t: pa.Table, name: str) -> np.ndarray:
    return t[name].to_numpy(zero_copy_only=False)


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def _group(keys: np.ndarray) -> dict[int, np.ndarray]:
    """Row indices of each key, rows in their original order within a key (slices of one
    stable argsort: grouping the 10k book's lots took 48 us a household with np.split, 24)."""
    if len(keys) == 0:
        return {}
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    ends = np.append(starts[1:], len(k))
    return {g: order[a:b] for g, a, b in zip(k[starts].tolist(), starts.tolist(), ends.tolist())}


def _household_checks(h: dict) -> None:
    hid = h["household_id"]
    key = f"household_id={hid}"
    for f in ("short_term_rate", "long_term_rate", "state_rate"):
        v = h[f]
        if not _finite(v) or not 0.0 <= v < 1.0:
            raise BookDataError("households", key, f, f"must be a rate in [0, 1) (got {v})")
    for f in ("ytd_realized_st", "ytd_realized_lt"):
        if not _finite(h[f]):
            raise BookDataError("households", key, f, f"must be finite (got {h[f]})")
    for f in ("loss_carryforward_st", "loss_carryforward_lt", "fee_rate", "tax_sensitivity"):
        v = h[f]
        if not _finite(v) or v < 0:
            raise BookDataError("households", key, f, f"must be finite and >= 0 (got {v})")
    b = h["tax_budget"]
    if b is not None and (not math.isfinite(b) or b < 0):
        raise BookDataError("households", key, "tax_budget", f"must be >= 0 or null (got {b})")


def split_households(market: Market, tables: dict[str, pa.Table]) -> tuple[list[Household], list[Rejection]]:
    """Households of one shard, and the accounts that cannot be processed.

    ``tables`` holds the shard's ``households``, ``accounts``, ``lots`` and ``recent_trades``
    (any number of buckets concatenated). Every account in ``accounts`` ends in exactly one of
    the two outputs; accounts named by lots or trades but missing from ``accounts`` are
    rejected too, so nothing in the shard is silently dropped.
    """
    H, A, Lt, R = (tables[n] for n in ("households", "accounts", "lots", "recent_trades"))
    as_of = np.datetime64(market.as_of, "D")

    hh_rows = H.to_pylist()
    hh_by_id: dict[int, list[dict]] = {}
    for r in hh_rows:
        hh_by_id.setdefault(int(r["household_id"]), []).append(r)

    acc_id = _col(A, "account_id").astype(np.int64)
    acc_hh = _col(A, "household_id").astype(np.int64)
    acc_rows = A.to_pylist()
    acc_groups = _group(acc_hh)
    # A lot or trade belongs to its account's household; its own household_id is checked
    # against that (a row filed under another household is an error of the account's
    # household, and must not make the account appear in two households).
    lot_groups = _group(_owner(acc_id, acc_hh, _col(Lt, "account_id"), _col(Lt, "household_id"))) if Lt.num_rows else {}
    trade_groups = _group(_owner(acc_id, acc_hh, _col(R, "account_id"), _col(R, "household_id"))) if R.num_rows else {}

    lot_cols = {c: _col(Lt, c) for c in ("lot_id", "account_id", "household_id", "security_id", "shares", "cost_basis")}
    lot_acq = _col(Lt, "acquired").astype("datetime64[D]")
    tr_cols = {c: _col(R, c) for c in ("trade_id", "account_id", "household_id", "security_id", "shares", "price")}
    tr_side = np.asarray(R["side"].to_pylist(), object)
    tr_gain = R["realized_gain"].to_numpy(zero_copy_only=False).astype(float)
    tr_date = _col(R, "trade_date").astype("datetime64[D]")

    # Duplicate keys across the shard are errors of every household involved.
    dup_lots = _duplicates(lot_cols["lot_id"])
    dup_accounts = _duplicates(acc_id)

    households: list[Household] = []
    rejections: list[Rejection] = []
    for hid in sorted(set(acc_groups) | set(lot_groups) | set(trade_groups) | set(hh_by_id)):
        rows = acc_groups.get(hid, np.empty(0, np.int64))
        ids = [int(acc_id[i]) for i in rows]
        try:
            hh = _build(market, as_of, hid, hh_by_id.get(hid), [acc_rows[i] for i in rows],
                        lot_groups.get(hid), trade_groups.get(hid), lot_cols, lot_acq, tr_cols, tr_side, tr_gain,
                        tr_date, dup_lots, dup_accounts)
            households.append(hh)
        except BookDataError as e:
            named = set(ids)
            # accounts named by lots/trades of this household but missing from accounts
            for g, cols in ((lot_groups.get(hid), lot_cols), (trade_groups.get(hid), tr_cols)):
                if g is not None:
                    named |= {int(a) for a in cols["account_id"][g]}
            if not named:
                continue  # a household row with no account at all: nothing to reject
            prefix = "" if len(named) == 1 else "household rejected whole: "
            for a in sorted(named):
                rejections.append(Rejection.of(a, hid, e, prefix))
    return households, rejections


def _owner(acc_id: np.ndarray, acc_hh: np.ndarray, row_acc, row_hh) -> np.ndarray:
    """Household of each row's account (the row's own household_id when the account is unknown)."""
    row_acc = np.asarray(row_acc, np.int64)
    out = np.asarray(row_hh, np.int64).copy()
    if len(acc_id):
        order = np.argsort(acc_id, kind="stable")
        i = np.clip(np.searchsorted(acc_id[order], row_acc), 0, len(acc_id) - 1)
        known = acc_id[order][i] == row_acc
        out[known] = acc_hh[order][i][known]
    return out


def _duplicates(ids: np.ndarray) -> set[int]:
    if len(ids) == 0:
        return set()
    u, c = np.unique(ids, return_counts=True)
    return set(int(x) for x in u[c > 1])


def _build(market, as_of, hid, hh_rows, acc_rows, lot_idx, tr_idx, lot_cols, lot_acq, tr_cols, tr_side, tr_gain,
           tr_date, dup_lots, dup_accounts) -> Household:
    if not acc_rows and lot_idx is None and tr_idx is None:
        raise BookDataError("households", f"household_id={hid}", "household_id", "household has no accounts")
    if not acc_rows:
        if lot_idx is not None:
            r = lot_idx[0]
            raise BookDataError("lots", f"lot_id={int(lot_cols['lot_id'][r])}", "account_id",
                                f"account {int(lot_cols['account_id'][r])} of household {hid} is not in accounts")
        r = tr_idx[0]
        raise BookDataError("recent_trades", f"trade_id={int(tr_cols['trade_id'][r])}", "account_id",
                            f"account {int(tr_cols['account_id'][r])} of household {hid} is not in accounts")
    if not hh_rows:
        raise BookDataError("accounts", f"account_id={acc_rows[0]['account_id']}", "household_id",
                            f"household {hid} is not in households")
    if len(hh_rows) > 1:
        raise BookDataError("households", f"household_id={hid}", "household_id", "duplicate household row")
    h = hh_rows[0]
    _household_checks(h)

    n = len(acc_rows)
    account_id = np.array([a["account_id"] for a in acc_rows], np.int64)
    types = np.empty(n, np.int64)
    model = np.empty(n, np.int64)
    cash, deposit, reserve, min_trade = (np.empty(n) for _ in range(4))
    min_pos, band = np.full(n, np.nan), np.full(n, np.nan)
    di = np.full(n, -1, np.int64)
    frac = np.empty(n, bool)
    ty = np.zeros(n, np.int64)
    ts = np.full(n, np.datetime64("NaT"), "datetime64[D]")
    screens, never_buy, never_sell = [], [], []
    for j, a in enumerate(acc_rows):
        aid = int(a["account_id"])
        key = f"account_id={aid}"
        if aid in dup_accounts:
            raise BookDataError("accounts", key, "account_id", "duplicate account id")
        t = _ACCOUNT_TYPE.get(a["account_type"])
        if t is None:
            raise BookDataError("accounts", key, "account_type", f"unknown account type {a['account_type']!r}")
        types[j] = t
        if a["model_id"] not in market.models:
            raise BookDataError("accounts", key, "model_id", f"unknown model {a['model_id']}")
        model[j] = a["model_id"]
        for f, arr in (("cash", cash), ("deposit", deposit), ("cash_reserve", reserve), ("min_trade", min_trade)):
            v = a[f]
            if not _finite(v) or v < 0:
                raise BookDataError("accounts", key, f, f"must be finite and >= 0 (got {v})")
            arr[j] = v
        # Optional overrides (null: the firm default); a book written before them lacks the
        # columns, which reads as null too.
        for f, arr in (("min_position", min_pos), ("cash_band", band)):
            v = a.get(f)
            if v is None:
                continue
            if not _finite(v) or v < 0:
                raise BookDataError("accounts", key, f, f"must be finite and >= 0 or null (got {v})")
            arr[j] = v
        for s in a["screens"] or ():
            if s not in market.screens:
                raise BookDataError("accounts", key, "screens", f"unknown screen {s!r}")
        screens.append(tuple(a["screens"] or ()))
        for f, out in (("never_buy", never_buy), ("never_sell", never_sell)):
            if not a[f]:  # nearly every account: no lookup (9 us each)
                out.append(_NO_SECURITIES)
                continue
            p = market.pos(a[f])
            if (p < 0).any():
                raise BookDataError("accounts", key, f, f"unknown security id {int(np.asarray(a[f])[p < 0][0])}")
            out.append(p)
        if a["direct_index_etf"] is not None:
            p = int(market.pos([a["direct_index_etf"]])[0])
            if p < 0 or market.index_of[p] < 0:
                raise BookDataError("accounts", key, "direct_index_etf",
                                    f"security {a['direct_index_etf']} is not an index ETF of the book")
            di[j] = p
        frac[j] = bool(a["fractional_shares"])
        ty[j] = int(a["transition_years"] or 0)
        if ty[j] < 0:
            raise BookDataError("accounts", key, "transition_years", f"must be >= 0 (got {ty[j]})")
        if ty[j] > 0:
            if a["transition_start"] is None:
                raise BookDataError("accounts", key, "transition_start", "required when transition_years > 0")
            ts[j] = np.datetime64(a["transition_start"], "D")
    accounts = Accounts(
        account_id=account_id, account_type=types, model_id=model,
        cash=cash, deposit=deposit, reserve=reserve, screens=tuple(screens), never_buy=tuple(never_buy),
        never_sell=tuple(never_sell), di_etf=di, min_trade=min_trade, fractional=frac, transition_years=ty,
        transition_start=ts, min_position=min_pos, cash_band=band)

    idx = lot_idx if lot_idx is not None else np.empty(0, np.int64)
    l_acc_id = lot_cols["account_id"][idx].astype(np.int64)
    l_sec = market.pos(lot_cols["security_id"][idx])
    l_sh = lot_cols["shares"][idx].astype(float)
    l_cb = lot_cols["cost_basis"][idx].astype(float)
    l_acq = lot_acq[idx]
    l_id = lot_cols["lot_id"][idx].astype(np.int64)
    # Each lot's and trade's account as an index into the household's (-1: not one of them),
    # by a search of the sorted ids, not a dict lookup per lot. With the trade checks below
    # and no lookup for empty never-buy/never-sell lists: split_households 0.31 -> 0.19 ms a
    # household (the 10k book's 4,301, median of 3 interleaved runs).
    by_id = np.argsort(account_id)
    sorted_ids = account_id[by_id]

    def account_index(ids: np.ndarray) -> np.ndarray:
        k = np.minimum(np.searchsorted(sorted_ids, ids), n - 1)
        return np.where(sorted_ids[k] == ids, by_id[k], -1)
    l_acc = account_index(l_acc_id)
    # Checks are vectorised (a direct-indexed household has thousands of lots); the first
    # offending lot, in lot order, is the one reported.
    with np.errstate(invalid="ignore"):
        px = np.where(l_sec >= 0, market.price[np.maximum(l_sec, 0)], np.nan)
        checks = (
            (np.array([int(x) in dup_lots for x in l_id], bool) if dup_lots else np.zeros(len(idx), bool),
             "lot_id", lambda i: "duplicate lot id"),
            (l_acc < 0, "account_id",
             lambda i: f"account {int(l_acc_id[i])} is not an account of household {hid}"),
            (lot_cols["household_id"][idx].astype(np.int64) != hid, "household_id",
             lambda i: f"lot of account {int(l_acc_id[i])} (household {hid}) filed under household "
                       f"{int(lot_cols['household_id'][idx][i])}"),
            (l_sec < 0, "security_id", lambda i: f"unknown security {int(lot_cols['security_id'][idx][i])}"),
            (~(np.isfinite(px) & (px > 0)), "price", None),
            (~(np.isfinite(l_sh) & (l_sh > 0)), "shares", lambda i: f"must be > 0 (got {l_sh[i]})"),
            (~(np.isfinite(l_cb) & (l_cb >= 0)), "cost_basis", lambda i: f"must be finite and >= 0 (got {l_cb[i]})"),
            (np.isnat(l_acq) | (l_acq > as_of), "acquired",
             lambda i: f"must not be after the as-of date {as_of} (got {l_acq[i]})"),
        )
    for bad, fld, msg in checks:
        if bad.any():
            i = int(np.flatnonzero(bad)[np.argmin(l_id[bad])])
            if fld == "price":
                raise BookDataError("securities", f"security_id={int(market.security_id[l_sec[i]])}", "price",
                                    f"held in lot {int(l_id[i])} but has no price > 0 (got {px[i]})")
            raise BookDataError("lots", f"lot_id={int(l_id[i])}", fld, msg(i))
    order = np.argsort(l_id, kind="stable")
    lots = Lots(lot_id=l_id[order], account=l_acc[order], security=l_sec[order], shares=l_sh[order],
                cost_basis=l_cb[order], acquired=l_acq[order])

    tidx = tr_idx if tr_idx is not None else np.empty(0, np.int64)
    t_acc_id = tr_cols["account_id"][tidx].astype(np.int64)
    t_acc = account_index(t_acc_id)
    t_sec = market.pos(tr_cols["security_id"][tidx])
    t_side = tr_side[tidx]
    t_buy = t_side == TradeSide.BUY.value
    t_sh = tr_cols["shares"][tidx]
    t_date = tr_date[tidx]
    # Each trade's checks in the order they are reported; the first trade failing one is the
    # one reported, with its first failing check (as a loop per trade reported it).
    t_hh = tr_cols["household_id"][tidx]
    checks = (
        (t_acc < 0, "account_id", lambda i, r: f"account {int(t_acc_id[i])} is not an account of household {hid}"),
        (t_hh.astype(np.int64) != hid, "household_id",
         lambda i, r: f"trade of account {int(t_acc_id[i])} (household {hid}) filed under household {int(t_hh[i])}"),
        (t_sec < 0, "security_id", lambda i, r: f"unknown security {int(tr_cols['security_id'][r])}"),
        (~t_buy & (t_side != TradeSide.SELL.value), "side", lambda i, r: f"must be buy or sell (got {t_side[i]!r})"),
        (~(np.isfinite(t_sh) & (t_sh > 0)), "shares", lambda i, r: f"must be > 0 (got {t_sh[i]})"),
        (~t_buy & ~np.isfinite(tr_gain[tidx]), "realized_gain", lambda i, r: "a sell needs its realized gain"),
        (np.isnat(t_date) | (t_date > as_of), "trade_date", lambda i, r: f"must not be after the as-of date {as_of}"),
    )
    bad = np.zeros(len(tidx), bool)
    for b, _, _ in checks:
        bad |= b
    if bad.any():
        i = int(np.argmax(bad))
        r = tidx[i]
        fld, msg = next((fld, msg) for b, fld, msg in checks if b[i])
        raise BookDataError("recent_trades", f"trade_id={int(tr_cols['trade_id'][r])}", fld, msg(i, r))
    recent = RecentTrades(
        account=t_acc, security=t_sec, date=t_date, is_buy=t_buy, shares=t_sh.astype(float),
        price=tr_cols["price"][tidx].astype(float), realized_gain=np.where(t_buy, np.nan, tr_gain[tidx]))

    budget = h["tax_budget"]
    return Household(
        household_id=int(hid), short_term_rate=float(h["short_term_rate"]), long_term_rate=float(h["long_term_rate"]),
        state_rate=float(h["state_rate"]), ytd_realized_st=float(h["ytd_realized_st"]),
        ytd_realized_lt=float(h["ytd_realized_lt"]), loss_carryforward_st=float(h["loss_carryforward_st"]),
        loss_carryforward_lt=float(h["loss_carryforward_lt"]),
        tax_budget=float(budget) if budget is not None else math.nan, fee_rate=float(h["fee_rate"]),
        tax_sensitivity=float(h["tax_sensitivity"]), accounts=accounts, lots=lots, recent=recent,
        advisor_id=int(h.get("advisor_id") or 0))


def select_households(tables: dict[str, pa.Table], keep) -> dict[str, pa.Table]:
    """The rows of a shard's household tables that belong to the households ``keep`` selects.

    ``keep`` maps an int64 array of household ids to a boolean mask. A lot or trade goes with
    its *account's* household (its own ``household_id`` when the account is unknown), exactly
    as :func:`split_households` files it, so a row whose ``household_id`` disagrees with its
    account's cannot land in a different selection from its account.
    """
    H, A, Lt, R = (tables[n] for n in ("households", "accounts", "lots", "recent_trades"))
    acc_id = _col(A, "account_id").astype(np.int64)
    acc_hh = _col(A, "household_id").astype(np.int64)

    def take(t: pa.Table, owners: np.ndarray) -> pa.Table:
        mask = np.asarray(keep(owners), bool)
        return t if mask.all() else t.filter(pa.array(mask))

    out = dict(tables)
    out["households"] = take(H, _col(H, "household_id").astype(np.int64))
    out["accounts"] = take(A, acc_hh)
    out["lots"] = take(Lt, _owner(acc_id, acc_hh, _col(Lt, "account_id"), _col(Lt, "household_id")))
    out["recent_trades"] = take(R, _owner(acc_id, acc_hh, _col(R, "account_id"), _col(R, "household_id")))
    return out
