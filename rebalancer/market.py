"""The book's reference data as arrays: securities, models, indexes, screens and risk model.

A :class:`Market` is built once per task from a book's reference tables and shared by every
household the task solves. Securities are addressed by *position* (0..S-1, the row of the
arrays), not by ``security_id``; :meth:`Market.pos` maps ids to positions.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa

from .errors import BookDataError
from .riskmodel import RiskModel
from .schema import IncomeTaxClass

__all__ = ["Market"]

ETF_RESIDUAL_FLOOR = 0.001 ** 2  # 0.1% a year: tracking difference of an index ETF to its index
_TAX_CLASS = {IncomeTaxClass.QUALIFIED.value: 0, IncomeTaxClass.ORDINARY.value: 1, IncomeTaxClass.TAX_EXEMPT.value: 2}


@dataclass(frozen=True, eq=False)
class Market:
    """Reference data of one as-of date.

    security_id : ndarray (S,) int64, the book's ids, in row order.
    symbol, kind, asset_class : ndarray (S,) of str.
    price : ndarray (S,) USD/share at the as-of date (NaN where the book has none).
    wash_group : ndarray (S,) int, a code per substantially-identical group.
    index_of : ndarray (S,) int, code of the index an ETF tracks (into ``index_names``), -1 if none.
    attributes : tuple of S frozensets of screen attributes.
    yield_ : ndarray (S,) distribution yield; income_class : ndarray (S,) 0 qualified, 1 ordinary, 2 exempt.
    spread : ndarray (S,) bid-ask spread as a fraction of price.
    models : dict model_id -> (positions, weights).
    indexes : tuple over index codes of (positions, weights); index_names : their ids.
    screens : dict screen_id -> frozenset of attributes.
    risk : RiskModel with rows in position order.
    """
    as_of: dt.date
    security_id: np.ndarray
    symbol: np.ndarray
    kind: np.ndarray
    asset_class: np.ndarray
    price: np.ndarray
    wash_group: np.ndarray
    wash_group_names: tuple[str, ...]
    index_of: np.ndarray
    index_names: tuple[str, ...]
    indexes: tuple[tuple[np.ndarray, np.ndarray], ...]
    attributes: tuple[frozenset, ...]
    yield_: np.ndarray
    income_class: np.ndarray
    spread: np.ndarray
    models: dict
    model_names: dict
    screens: dict
    risk: RiskModel
    _pos: np.ndarray  # security_id -> position, -1 where unknown

    @property
    def n(self) -> int:
        return len(self.security_id)

    def pos(self, security_ids) -> np.ndarray:
        """Positions of ``security_ids``; -1 for ids the book does not have."""
        ids = np.asarray(security_ids, dtype=np.int64)
        out = np.full(ids.shape, -1, np.int64)
        ok = (ids >= 0) & (ids < len(self._pos))
        out[ok] = self._pos[ids[ok]]
        return out

    def derived(self, key, make):
        """``make(self)``, computed once per market for the hashable ``key``: for values that
        depend on the reference data alone and that every household of a task would otherwise
        recompute (a screen combination's mask, an account target, the factor Cholesky). The
        value is shared by all callers: never modify it. A market made by
        ``dataclasses.replace`` starts with none."""
        cache = self._derived
        if key not in cache:
            cache[key] = make(self)
        return cache[key]

    @cached_property
    def _derived(self) -> dict:
        return {}

    def screened(self, screen_ids) -> np.ndarray:
        """Mask (S,) of securities excluded by any of ``screen_ids``.

        An unknown screen raises KeyError (the caller names the account)."""
        # Every account of every household asks, twice per build (its target and its buys),
        # for one of a few screen combinations: the S attribute sets are scanned once per
        # combination (400 households of the 10k book: 14 -> 2 us a household).
        screen_ids = tuple(screen_ids)
        return self.derived(("screened", screen_ids), lambda m: _screen_mask(m, screen_ids)).copy()

    @cached_property
    def _lookthrough_csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each security's look-through entries, built once per market: ``(ptr, keys,
        weights, explained)``, row p being ``keys[ptr[p]:ptr[p+1]]``. An index ETF's row is its
        index's constituents then its residual (keyed -p-1), any other security's row is
        itself. A key repeated within a row (an index listing a security twice) is merged into
        its first appearance, summed in row order, as ``np.add.at`` into zeros would.
        ``explained`` (one per index code) is the specific variance of each index's
        constituents, ``sum(w**2 * d)``, that an ETF's residual does not carry."""
        keys, weights = [], []
        for p in range(self.n):
            ix = int(self.index_of[p])
            if ix >= 0:
                members, w = self.indexes[ix]
                k = np.concatenate([np.asarray(members, np.int64), [-p - 1]])
                v = np.concatenate([np.asarray(w).astype(float, copy=False), [1.0]])
                u, first, inv = np.unique(k, return_index=True, return_inverse=True)
                if len(u) < len(k):
                    by_first = np.argsort(first, kind="stable")
                    rank = np.empty_like(by_first)
                    rank[by_first] = np.arange(len(u))
                    k = u[by_first]
                    v = np.bincount(rank[inv], weights=v, minlength=len(u))
                keys.append(k)
                weights.append(v)
            else:
                keys.append(np.array([p], np.int64))
                weights.append(np.ones(1))
        ptr = np.zeros(self.n + 1, np.int64)
        ptr[1:] = np.cumsum([len(k) for k in keys])
        explained = np.array([float(np.sum(np.asarray(w) ** 2 * self.risk.specific_var[members]))
                              for members, w in self.indexes])
        return (ptr, np.concatenate(keys) if keys else np.zeros(0, np.int64),
                np.concatenate(weights) if weights else np.zeros(0), explained)

    def lookthrough(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Risk look-through of securities at ``positions`` (a household's securities).

        An index ETF is its index's constituents plus a residual of its own (tracking
        difference); any other security is itself. Returns ``(assets, L, d)``: the positions
        of the m risk assets (a residual uses its ETF's position, negated minus one),
        L ndarray (n, m) with ``risk weight of assets = L' w``, and d (m,) their specific
        variances, so the specific variance of holdings w is ``sum(d * (L' w)**2)``.
        ``positions`` are in 0..S-1.
        """
        assets, (rows, cols, vals), d = self.lookthrough_entries(positions)
        L = np.zeros((len(positions), len(assets)))
        L[rows, cols] = vals  # keys are unique within a row: nothing to sum
        return assets, L, d

    def lookthrough_entries(self, positions: np.ndarray) -> tuple[np.ndarray, tuple, np.ndarray]:
        """:meth:`lookthrough` with L as its entries ``(rows, cols, values)``, row by row (a
        direct-indexed household's L is about 512 x 523 with 2,900 entries: products with the
        entries cost a fraction of products with the dense matrix)."""
        positions = np.asarray(positions, np.int64)
        n = len(positions)
        if not n:
            empty = np.zeros(0, np.int64)
            return empty, (empty, empty, np.zeros(0)), np.zeros(0)
        # The rows of ``positions`` gathered from the per-market CSR, columns in order of
        # first appearance (400 households of the 10k book: 0.6 ms a household with a Python
        # loop over positions, 0.1-0.2 ms this way, most of it filling the dense L).
        ptr, all_keys, all_w, explained = self._lookthrough_csr
        start, count = ptr[positions], ptr[positions + 1] - ptr[positions]
        rows = np.repeat(np.arange(n), count)
        entry = np.arange(len(rows)) + np.repeat(start - (np.cumsum(count) - count), count)
        # Keys lie in [-S, S): a table over them finds each one's first entry (np.unique with
        # return_index took 38 of the 88 us this function took on a household holding two
        # ETFs of a 500-stock index; np.minimum.at over the table takes 7).
        slot = all_keys[entry] + self.n
        first = np.full(2 * self.n, len(slot), np.int64)
        np.minimum.at(first, slot, np.arange(len(slot)))
        present = np.flatnonzero(first < len(slot))
        slots = present[np.argsort(first[present], kind="stable")]
        col = np.empty(2 * self.n, np.int64)
        col[slots] = np.arange(len(slots))
        assets = slots - self.n
        cols, vals = col[slot], all_w[entry]
        own = np.where(assets >= 0, assets, -assets - 1)
        d = self.risk.specific_var[own].copy()
        # An ETF's residual is the part of its specific variance its constituents' specific
        # risk does not explain (the risk model estimated it on the ETF's own returns).
        c = np.flatnonzero(assets < 0)
        if len(c):
            rest = d[c] - explained[self.index_of[own[c]]]
            d[c] = np.where(ETF_RESIDUAL_FLOOR > rest, ETF_RESIDUAL_FLOOR, rest)  # max(rest, floor); NaN stays
        return assets, (rows, cols, vals), d

    @classmethod
    def from_tables(cls, tables: dict[str, pa.Table], as_of: dt.date) -> "Market":
        """Build from a book's reference tables (``Book.read`` of each)."""
        sec = tables["securities"]
        ids = sec["security_id"].to_numpy().astype(np.int64)
        if len(ids) == 0:
            raise BookDataError("securities", "*", "security_id", "the book has no securities")
        if np.unique(ids).size != ids.size or ids.min() < 0:
            raise BookDataError("securities", "*", "security_id", "security ids must be unique and >= 0")
        pos = np.full(int(ids.max()) + 1, -1, np.int64)
        pos[ids] = np.arange(len(ids))
        price = sec["price"].to_numpy(zero_copy_only=False).astype(float)
        wash = sec["wash_group"].to_pylist()
        wash_names = tuple(sorted(set(wash)))
        wcode = {g: i for i, g in enumerate(wash_names)}

        cons = tables["index_constituents"]
        c_idx = cons["index_id"].to_pylist()
        c_pos = pos_of(pos, cons["security_id"].to_numpy())
        c_w = cons["weight"].to_numpy()
        index_names = tuple(sorted(set(c_idx)))
        icode = {g: i for i, g in enumerate(index_names)}
        c_code = np.array([icode[g] for g in c_idx], np.int64)
        indexes = tuple((c_pos[c_code == i], c_w[c_code == i]) for i in range(len(index_names)))
        index_of = np.array([icode.get(x, -1) if x is not None else -1 for x in sec["index_id"].to_pylist()], np.int64)

        mt = tables["models"]
        m_id = mt["model_id"].to_numpy()
        m_pos = pos_of(pos, mt["security_id"].to_numpy())
        m_w = mt["weight"].to_numpy()
        names = mt["model_name"].to_pylist()
        models, model_names = {}, {}
        for mid in np.unique(m_id):
            sel = np.flatnonzero(m_id == mid)
            models[int(mid)] = (m_pos[sel], m_w[sel])
            model_names[int(mid)] = names[sel[0]]

        screens: dict[str, set] = {}
        st = tables["screens"]
        for s, a in zip(st["screen_id"].to_pylist(), st["attribute"].to_pylist()):
            screens.setdefault(s, set()).add(a)

        rm = RiskModel.from_tables(tables["risk_factors"], tables["risk_covariance"],
                                   tables["risk_exposures"], tables["risk_specific"])
        # Rows of the risk model by security id -> rows by position.
        n_rm = rm.exposures.shape[0]
        take = np.where(ids < n_rm, ids, 0)
        X = np.where((ids < n_rm)[:, None], rm.exposures[take], 0.0)
        d = np.where(ids < n_rm, rm.specific_var[take], np.nan)
        risk = RiskModel(rm.factor_names, rm.factor_kinds, X, rm.factor_cov, d)

        return cls(
            as_of=as_of, security_id=ids, symbol=np.asarray(sec["symbol"].to_pylist(), object),
            kind=np.asarray(sec["kind"].to_pylist(), object), asset_class=np.asarray(sec["asset_class"].to_pylist(), object),
            price=price, wash_group=np.array([wcode[g] for g in wash], np.int64), wash_group_names=wash_names,
            index_of=index_of, index_names=index_names, indexes=indexes,
            attributes=tuple(frozenset(a or ()) for a in sec["attributes"].to_pylist()),
            yield_=sec["yield"].to_numpy().astype(float),
            income_class=np.array([_TAX_CLASS[c] for c in sec["income_tax_class"].to_pylist()], np.int64),
            spread=sec["spread"].to_numpy().astype(float), models=models, model_names=model_names,
            screens={k: frozenset(v) for k, v in screens.items()}, risk=risk, _pos=pos,
        )


def pos_of(pos: np.ndarray, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, np.int64)
    out = np.full(ids.shape, -1, np.int64)
    ok = (ids >= 0) & (ids < len(pos))
    out[ok] = pos[ids[ok]]
    return out


def _screen_mask(market: Market, screen_ids: tuple) -> np.ndarray:
    attrs: set[str] = set()
    for s in screen_ids:
        attrs |= market.screens[s]
    if not attrs:
        return np.zeros(market.n, bool)
    return np.fromiter((bool(a & attrs) for a in market.attributes), bool, market.n)
