"""Check a book against the data contract and list every problem, naming table, key and field.

The checks are whole-column operations (pyarrow.compute / numpy); a message is built only for
the first ``max_per_rule`` offenders of each rule, the rest are counted. Household-keyed
tables are read one bucket at a time, so memory is bounded by the largest bucket plus the
id arrays kept for book-wide uniqueness (8 bytes per household, account, lot and trade).

Bad data never raises: a missing or malformed ``book.json``, missing or unreadable files and
wrong schemas are problems like any other, and the checks that cannot run without them are
skipped rather than reported a second time.
"""
from __future__ import annotations

import datetime as dt
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .book import INFO_FILE, Book, BookInfo, table_path
from .errors import BookLayoutError
from .schema import (
    HOUSEHOLD_TABLES, REFERENCE_TABLES, TABLES, AccountType, FactorKind, IncomeTaxClass,
    SecurityKind, TableSpec, TradeSide, castable,
)
from .storage import Location, S3Options, open_uri

__all__ = ["Problem", "ValidationReport", "validate_book"]

ERROR = "error"
WARNING = "warning"

WASH_WINDOW_DAYS = 31  # recent_trades cover the wash-sale look-back (30 days) plus the as-of day
WEIGHT_SUM_ATOL = 1e-6
SYMMETRY_RTOL = 1e-12
PSD_RTOL = 1e-10
MAX_FEE_RATE = 0.1
VALUE_RTOL = 1e-6  # book.json value is a float sum: allow for summation order

_BUCKET_FILE = re.compile(r"^bucket-(\d+)\.parquet$")


@dataclass(frozen=True)
class Problem:
    """One breach of the data contract.

    Parameters
    ----------
    table : table name, or ``"book.json"``.
    key : the row (``"lot_id=17"``), group (``"model_id=3"``), file (``"file=lots/bucket-00002.parquet"``)
        or bucket (``"bucket=2"``) concerned.
    field : the offending column, or ``"*"`` for a whole row or file.
    message : what is wrong, with the bad value.
    severity : ``"error"`` (the book must not be used) or ``"warning"``.
    """
    table: str
    key: str
    field: str
    message: str
    severity: str = ERROR

    def __post_init__(self):
        if self.severity not in (ERROR, WARNING):
            raise ValueError(f"severity must be {ERROR!r} or {WARNING!r}, got {self.severity!r}")

    def __str__(self) -> str:
        return f"{self.table}[{self.key}].{self.field}: {self.message}"


@dataclass(frozen=True)
class ValidationReport:
    """What :func:`validate_book` found.

    Parameters
    ----------
    problems : the problems listed, at most ``max_per_rule`` per rule, in the order found.
    rows_checked : rows read per table.
    omitted : ``"table.field: rule"`` -> number of further problems of that rule not listed.
    """
    problems: tuple[Problem, ...]
    rows_checked: dict[str, int]
    omitted: dict[str, int]

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == ERROR)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == WARNING)

    @property
    def ok(self) -> bool:
        # Every rule with omitted problems also has listed ones (max_per_rule >= 1), so the
        # listed problems alone decide.
        return not self.errors

    def format(self) -> str:
        """The report as text: one line per problem, the omitted counts, then a verdict."""
        lines = [f"{p.severity}: {p}" for p in self.problems]
        lines += [f"... and {n} more {rule.split(':', 1)[0]} problems ({rule.split(': ', 1)[1]})"
                  for rule, n in self.omitted.items()]
        n_more = sum(self.omitted.values())
        more = f" ({n_more} more not listed)" if n_more else ""
        warnings = _plural(len(self.warnings), "warning")
        if self.ok:
            rows = sum(self.rows_checked.values())
            tables = sum(1 for n in self.rows_checked.values() if n)
            lines.append(f"book OK: {rows} rows checked in {tables} tables, {warnings}{more}")
        else:
            lines.append(f"{_plural(len(self.errors), 'error')}, {warnings}{more}")
        return "\n".join(lines)


def validate_book(uri_or_book: str | Book, *, s3: S3Options | None = None,
                  max_per_rule: int = 20) -> ValidationReport:
    """Check every table of a book against the data contract (``rebalancer.schema``).

    Parameters
    ----------
    uri_or_book : the book's URI (path, ``file://``, ``s3://``) or an open :class:`Book`.
    s3 : how to reach S3 (default: the standard AWS environment).
    max_per_rule : problems listed per rule; further ones are only counted in ``omitted``.

    Returns
    -------
    ValidationReport
        Never raises for bad data; an unsupported URI scheme raises ``StorageError``.
    """
    if max_per_rule < 1:
        raise ValueError(f"max_per_rule must be >= 1, got {max_per_rule}")
    if isinstance(uri_or_book, Book):
        return _Validator(uri_or_book.loc, max_per_rule).run(uri_or_book.info)
    return _Validator(open_uri(uri_or_book, s3), max_per_rule).run(None)


# --- helpers -------------------------------------------------------------------------------

def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _fmt(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, (str, float)):
        return repr(v)
    return str(v)


def _np_mask(bad) -> np.ndarray:
    """A boolean ndarray from an Arrow or numpy mask; null (unknown) counts as not bad."""
    if isinstance(bad, np.ndarray):
        return bad.astype(bool, copy=False)
    return pc.fill_null(bad, False).to_numpy(zero_copy_only=False)


def _unknown(values: pa.Array, known: pa.Array) -> pa.Array:
    """True where a value is set but not among ``known``."""
    return pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=known)))


def _enum_values(enum_cls) -> pa.Array:
    return pa.array([e.value for e in enum_cls], pa.string())


def _outside(values: pa.Array, lo: float, hi: float) -> pa.Array:
    return pc.or_(pc.less(values, lo), pc.greater(values, hi))


def _safe_cast(col: pa.ChunkedArray, dst: pa.DataType) -> pa.ChunkedArray | None:
    if not castable(col.type, dst):
        return None
    try:
        return col.cast(dst, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


def _first_repeats(codes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """True for each valid row whose code equals an earlier valid row's."""
    rows = np.flatnonzero(valid)
    _, first = np.unique(codes[rows], return_index=True)
    rep = np.zeros(len(codes), bool)
    rep[rows] = True
    rep[rows[first]] = False
    return rep


@dataclass
class _Table:
    """One file's rows with exactly the contract's columns.

    A column that is missing or of the wrong type is all null and listed in ``broken``; null
    makes every rule skip its rows, so one bad column is reported once, not per rule.
    Non-finite floats are nulled too, after being reported.
    """
    spec: TableSpec
    rel: str
    bucket: int | None
    cols: dict[str, pa.Array]
    n: int
    broken: frozenset[str]

    @property
    def name(self) -> str:
        return self.spec.name

    def __getitem__(self, column: str) -> pa.Array:
        return self.cols[column]

    def value(self, column: str, i: int):
        return self.cols[column][i].as_py()

    def key(self, i: int) -> str:
        parts = []
        for c in self.spec.key:
            v = self.value(c, i)
            if v is None:  # the key itself is bad (reported): fall back to the row's position
                return f"row={i}" if self.bucket is None else f"bucket={self.bucket}, row={i}"
            parts.append(f"{c}={v}")
        return ", ".join(parts)

    def usable(self, *columns: str) -> bool:
        return not self.broken.intersection(columns)


class _Collector:
    """Gathers problems, listing at most ``max_per_rule`` per (table, field, rule)."""

    def __init__(self, max_per_rule: int):
        self.max = max_per_rule
        self.problems: list[Problem] = []
        self.found: Counter = Counter()
        self.omitted: Counter = Counter()

    def add(self, table: str, field: str, rule: str, n_found: int,
            items: Iterable[tuple[str, str]], severity: str = ERROR) -> None:
        """Record ``n_found`` offenders of a rule; ``items`` yields (key, message) lazily.

        Only as many items as the cap leaves room for are drawn, so callers can build messages
        in a generator without paying for offenders that will not be listed.
        """
        if n_found <= 0:
            return
        rule_id = (table, field, rule)
        room = max(0, self.max - self.found[rule_id])
        self.found[rule_id] += n_found
        shown = 0
        for key, message in itertools.islice(items, min(room, n_found)):
            self.problems.append(Problem(table, key, field, message, severity))
            shown += 1
        if n_found > shown:
            self.omitted[f"{table}.{field}: {rule}"] += n_found - shown

    def one(self, table: str, key: str, field: str, rule: str, detail: str = "",
            severity: str = ERROR) -> None:
        self.add(table, field, rule, 1, [(key, f"{rule} ({detail})" if detail else rule)], severity)

    def rows(self, t: _Table, field: str, rule: str, bad, detail: Callable[[int], str] | None = None,
             severity: str = ERROR) -> None:
        """Report the rows of ``t`` where ``bad`` holds; by default the detail is the value."""
        idx = np.flatnonzero(_np_mask(bad))
        if detail is None:
            detail = lambda i: f"got {_fmt(t.value(field, i))}"  # noqa: E731
        self.add(t.name, field, rule, len(idx), self._row_items(t, idx, rule, detail), severity)

    @staticmethod
    def _row_items(t: _Table, idx: np.ndarray, rule: str, detail: Callable[[int], str]):
        for i in idx:
            d = detail(int(i))
            yield t.key(int(i)), f"{rule} ({d})" if d else rule


# --- the validator -------------------------------------------------------------------------

class _Validator:
    def __init__(self, loc: Location, max_per_rule: int):
        self.loc = loc
        self.c = _Collector(max_per_rule)
        self.rows_checked = {name: 0 for name in TABLES}
        self.as_of: dt.date | None = None
        self.n_buckets = 0
        # Reference data used by later checks; None when it could not be read (checks skipped).
        self.security_ids: pa.Array | None = None
        self.prices: tuple[pa.Array, pa.Array] | None = None  # (security_id, price)
        self.indexed_securities: pa.Array | None = None  # securities with an index_id
        self.model_ids: pa.Array | None = None
        self.model_pairs: np.ndarray | None = None  # encoded (model_id, security_id)
        self.screen_ids: pa.Array | None = None
        self.factor_ids: pa.Array | None = None
        self.global_ids: dict[str, list[tuple[int, np.ndarray]]] = {t.name: [] for t in HOUSEHOLD_TABLES}

    def report(self) -> ValidationReport:
        return ValidationReport(tuple(self.c.problems), dict(self.rows_checked), dict(self.c.omitted))

    def run(self, info: BookInfo | None) -> ValidationReport:
        if info is None:
            if not self.loc.exists():
                self.c.one("book.json", f"file={INFO_FILE}", "*", "no book at this location", self.loc.uri)
                return self.report()
            info = self._read_info()
        else:
            self.as_of, self.n_buckets = info.as_of, info.n_buckets
        self._check_layout()
        refs = {spec.name: self._load(spec) for spec in REFERENCE_TABLES}
        self._check_reference(refs)
        for b in range(self.n_buckets):
            self._check_bucket(b, info)
        self._check_global_ids()
        return self.report()

    # -- book.json and files

    def _read_info(self) -> BookInfo | None:
        key = f"file={INFO_FILE}"
        raw = None
        if not self._exists(INFO_FILE):
            self.c.one("book.json", key, "*", "missing: not a book, or its writing did not finish")
        else:
            try:
                raw = self.loc.read_json(INFO_FILE)
            except (OSError, ValueError) as e:
                self.c.one("book.json", key, "*", "unreadable", str(e))
        info = None
        if raw is not None:
            try:
                info = BookInfo.from_json(raw)
            except BookLayoutError as e:
                self.c.one("book.json", key, "*", "malformed", str(e))
        if info is not None:
            self.as_of, self.n_buckets = info.as_of, info.n_buckets
            return info
        # Salvage what a broken book.json still says, so the tables can be checked anyway.
        raw = raw if isinstance(raw, dict) else {}
        try:
            self.as_of = dt.date.fromisoformat(raw["as_of"])
        except (KeyError, TypeError, ValueError):
            self.as_of = None  # date rules are skipped
        n = raw.get("n_buckets")
        if isinstance(n, int) and n >= 1:
            self.n_buckets = n
        else:
            found = [int(m.group(1)) for spec in HOUSEHOLD_TABLES for name in self._listdir(spec.name)
                     if (m := _BUCKET_FILE.match(name))]
            self.n_buckets = max(found, default=-1) + 1
        return None

    def _check_layout(self) -> None:
        """Bucket files the book's n_buckets does not cover would be silently ignored by readers."""
        for spec in HOUSEHOLD_TABLES:
            for name in self._listdir(spec.name):
                m = _BUCKET_FILE.match(name)
                if m and int(m.group(1)) >= self.n_buckets:
                    self.c.one(spec.name, f"file={spec.name}/{name}", "*", "file outside the book's buckets",
                               f"n_buckets is {self.n_buckets}")

    def _load(self, spec: TableSpec, bucket: int | None = None) -> _Table | None:
        rel = table_path(spec, bucket)
        key = f"file={rel}"
        try:
            raw = self.loc.read_parquet(rel)
        except (OSError, pa.ArrowException) as e:
            missing = isinstance(e, FileNotFoundError) or not self._exists(rel)
            if missing:
                self.c.one(spec.name, key, "*", "missing file")
            else:
                self.c.one(spec.name, key, "*", "unreadable file", str(e))
            return None
        self.rows_checked[spec.name] += raw.num_rows
        return self._conform(spec, rel, bucket, raw)

    def _exists(self, rel: str) -> bool:
        try:
            return self.loc.exists(rel)
        except OSError:
            return False

    def _listdir(self, rel: str) -> list[str]:
        try:
            return self.loc.listdir(rel)
        except OSError:
            return []  # an unlistable folder shows up as missing files later

    def _conform(self, spec: TableSpec, rel: str, bucket: int | None, raw: pa.Table) -> _Table:
        key = f"file={rel}"
        n = raw.num_rows
        cols: dict[str, pa.Array] = {}
        broken = set()
        for f in spec.schema:
            idx = raw.schema.get_all_field_indices(f.name)
            if not idx and f.name in spec.optional:
                cols[f.name] = pa.nulls(n, f.type)  # a book written before the column: all null
                continue
            if not idx:
                self.c.one(spec.name, key, f.name, "missing column")
            elif len(idx) > 1:
                self.c.one(spec.name, key, f.name, "column appears more than once", f"{len(idx)} times")
            else:
                col = raw.column(idx[0])
                cast = col if col.type.equals(f.type) else _safe_cast(col, f.type)
                if cast is not None:
                    cols[f.name] = cast.combine_chunks()
                    continue
                self.c.add(spec.name, f.name, "wrong type", 1, [(key, f"type {col.type}, expected {f.type}")])
            cols[f.name] = pa.nulls(n, f.type)
            broken.add(f.name)
        t = _Table(spec, rel, bucket, cols, n, frozenset(broken))
        for f in spec.schema:
            if f.name in broken:
                continue
            col = cols[f.name]
            if not f.nullable and col.null_count:
                self.c.rows(t, f.name, "must not be null", pc.is_null(col), detail=lambda i: "")
            if pa.types.is_floating(f.type):
                finite = pc.is_finite(col)
                if (pc.sum(finite).as_py() or 0) < n - col.null_count:
                    self.c.rows(t, f.name, "must be finite", pc.invert(finite))
                    # Later rules then skip the value instead of reporting it again.
                    cols[f.name] = pc.if_else(finite, col, pa.scalar(None, f.type))
        return t

    # -- reference tables

    def _check_reference(self, refs: dict[str, _Table | None]) -> None:
        sec, idx = refs["securities"], refs["index_constituents"]
        if sec is not None and sec.usable("security_id"):
            self.security_ids = pc.unique(sec["security_id"].drop_null())
            if sec.usable("price"):
                self.prices = (sec["security_id"], sec["price"])
            if sec.usable("index_id"):
                self.indexed_securities = pc.filter(sec["security_id"], pc.is_valid(sec["index_id"]))
        if sec is not None:
            self._securities(sec, idx)
        if (m := refs["models"]) is not None:
            self._models(m)
        if idx is not None:
            self._index_constituents(idx)
        if (s := refs["screens"]) is not None:
            self._duplicates(s)
            if s.usable("screen_id"):
                self.screen_ids = pc.unique(s["screen_id"].drop_null())
        k = self._risk_factors(f) if (f := refs["risk_factors"]) is not None else None
        if (cov := refs["risk_covariance"]) is not None:
            self._risk_covariance(cov, k)
        if (x := refs["risk_exposures"]) is not None:
            self._duplicates(x)
            self._references(x, "security_id", self.security_ids, "unknown security")
            self._references(x, "factor_id", self.factor_ids, "unknown factor")
        if (d := refs["risk_specific"]) is not None:
            self._risk_specific(d)

    def _duplicates(self, t: _Table) -> None:
        """Rows repeating an earlier row's key (reference tables: one file, fits in memory)."""
        cols = t.spec.key
        if not t.usable(*cols):
            return
        codes = np.zeros(t.n, np.int64)
        valid = np.ones(t.n, bool)
        for c in cols:
            uniq = pc.unique(t[c])
            codes = codes * len(uniq) + pc.index_in(t[c], value_set=uniq).to_numpy(zero_copy_only=False)
            valid &= _np_mask(pc.is_valid(t[c]))
        field = cols[0] if len(cols) == 1 else "*"
        rule = f"duplicate {cols[0].replace('_', ' ')}" if len(cols) == 1 else "duplicate key"
        self.c.rows(t, field, rule, _first_repeats(codes, valid), detail=lambda i: "")

    def _references(self, t: _Table, column: str, known: pa.Array | None, rule: str) -> None:
        if known is not None:
            self.c.rows(t, column, rule, _unknown(t[column], known))

    def _enum(self, t: _Table, column: str, enum_cls) -> None:
        allowed = _enum_values(enum_cls)
        rule = "must be one of " + ", ".join(allowed.to_pylist())
        self.c.rows(t, column, rule, _unknown(t[column], allowed))

    def _securities(self, t: _Table, idx: _Table | None) -> None:
        self._duplicates(t)
        if t.usable("symbol"):
            sym = t["symbol"]
            codes = pc.index_in(sym, value_set=pc.unique(sym)).to_numpy(zero_copy_only=False)
            self.c.rows(t, "symbol", "duplicate symbol", _first_repeats(codes, _np_mask(pc.is_valid(sym))))
        self.c.rows(t, "price", "must be > 0", pc.less_equal(t["price"], 0))
        self._enum(t, "kind", SecurityKind)
        self._enum(t, "income_tax_class", IncomeTaxClass)
        spread = t["spread"]
        self.c.rows(t, "spread", "must be in [0, 1)", pc.or_(pc.less(spread, 0), pc.greater_equal(spread, 1)))
        self.c.rows(t, "yield", "must be >= 0", pc.less(t["yield"], 0))
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(t["wash_group"])), 0)
        self.c.rows(t, "wash_group", "must not be empty", empty)
        if idx is not None and idx.usable("index_id"):
            known = pc.unique(idx["index_id"].drop_null())
            self.c.rows(t, "index_id", "unknown index (not in index_constituents)", _unknown(t["index_id"], known))

    def _weights(self, t: _Table, group: str) -> None:
        """Each group's weights are non-negative and sum to 1."""
        self.c.rows(t, "weight", "must be >= 0", pc.less(t["weight"], 0))
        if not t.usable(group, "weight"):
            return
        sums = (pa.table({"g": t[group], "w": t["weight"]})
                .filter(pc.is_valid(t[group]))
                .group_by("g").aggregate([("w", "sum")])
                .sort_by("g"))
        s = sums["w_sum"].to_numpy(zero_copy_only=False).astype(float)
        bad = np.flatnonzero(np.abs(s - 1.0) > WEIGHT_SUM_ATOL)
        groups = sums["g"]
        rule = "weights must sum to 1"
        self.c.add(t.name, "weight", rule, len(bad),
                   ((f"{group}={groups[int(i)].as_py()}",
                     f"{rule} (sum is {s[i]:.12g}, tolerance {WEIGHT_SUM_ATOL:g})") for i in bad))

    def _models(self, t: _Table) -> None:
        self._duplicates(t)
        self._references(t, "security_id", self.security_ids, "unknown security")
        self._weights(t, "model_id")
        if t.usable("model_id"):
            self.model_ids = pc.unique(t["model_id"].drop_null())
        if t.usable("model_id", "security_id"):
            ok = _np_mask(pc.and_(pc.is_valid(t["model_id"]), pc.is_valid(t["security_id"])))
            self.model_pairs = np.unique(_pair_codes(t["model_id"], t["security_id"])[ok])

    def _index_constituents(self, t: _Table) -> None:
        self._duplicates(t)
        self._references(t, "security_id", self.security_ids, "unknown security")
        self._weights(t, "index_id")

    def _risk_factors(self, t: _Table) -> int | None:
        """Check the factors; return k when the ids are exactly 0..k-1 (None otherwise)."""
        self._duplicates(t)
        self._enum(t, "kind", FactorKind)
        if not t.usable("factor_id"):
            return None
        self.factor_ids = pc.unique(t["factor_id"].drop_null())
        ids = set(self.factor_ids.to_pylist())
        k = t.n
        if ids == set(range(k)):
            return k
        missing = sorted(set(range(k)) - ids)[:10]
        extra = sorted(ids - set(range(k)))[:10]
        self.c.one(t.name, f"file={t.rel}", "factor_id", f"factor ids must be exactly 0..{k - 1}",
                   f"missing {missing}, unexpected {extra}")
        return None

    def _risk_covariance(self, t: _Table, k: int | None) -> None:
        self._duplicates(t)
        self._references(t, "factor_row", self.factor_ids, "unknown factor")
        self._references(t, "factor_col", self.factor_ids, "unknown factor")
        if k is None or not t.usable("factor_row", "factor_col", "covariance"):
            return
        r, c, v = (t[name].to_numpy(zero_copy_only=False) for name in ("factor_row", "factor_col", "covariance"))
        ok = _np_mask(pc.and_(pc.and_(pc.is_valid(t["factor_row"]), pc.is_valid(t["factor_col"])),
                              pc.is_valid(t["covariance"])))
        ok &= (r >= 0) & (r < k) & (c >= 0) & (c < k)
        r, c, v = r[ok].astype(np.int64), c[ok].astype(np.int64), v[ok].astype(float)
        F = np.zeros((k, k))
        present = np.zeros((k, k), bool)
        F[r, c], present[r, c] = v, True
        where = f"file={t.rel}"
        if not present.all():
            gaps = [tuple(map(int, p)) for p in np.argwhere(~present)[:5]]
            self.c.one(t.name, where, "covariance", f"must have all k*k = {k * k} entries",
                       f"{int((~present).sum())} missing, e.g. (row, col) {gaps}")
            return
        scale = float(np.abs(F).max()) if k else 0.0
        asym = np.triu(np.abs(F - F.T) > SYMMETRY_RTOL * scale, 1)
        pairs = np.argwhere(asym)
        rule = "must be symmetric"
        self.c.add(t.name, "covariance", rule, len(pairs),
                   ((f"factor_row={i}, factor_col={j}", f"{rule} (F[{i},{j}]={F[i, j]!r}, F[{j},{i}]={F[j, i]!r})")
                    for i, j in pairs))
        if len(pairs) or k == 0:
            return
        min_eig = float(np.linalg.eigvalsh(F).min())
        if min_eig < -PSD_RTOL * scale:
            self.c.one(t.name, where, "covariance", "must be positive semidefinite",
                       f"min eigenvalue {min_eig:.6g}, tolerance {-PSD_RTOL * scale:.3g}")

    def _risk_specific(self, t: _Table) -> None:
        self._duplicates(t)
        self._references(t, "security_id", self.security_ids, "unknown security")
        self.c.rows(t, "specific_variance", "must be > 0", pc.less_equal(t["specific_variance"], 0))
        if self.security_ids is None or not t.usable("security_id"):
            return
        has_row = pc.is_in(self.security_ids, value_set=t["security_id"])
        ids = np.sort(pc.filter(self.security_ids, pc.invert(has_row)).to_numpy(zero_copy_only=False)).tolist()
        rule = "missing row: every security needs a specific variance"
        self.c.add(t.name, "*", rule, len(ids), ((f"security_id={s}", rule) for s in ids))

    # -- household-keyed tables, one bucket at a time

    def _check_bucket(self, b: int, info: BookInfo | None) -> None:
        hh, ac, lots, rt = (self._load(TABLES[name], b) for name in ("households", "accounts", "lots", "recent_trades"))
        for t in (hh, ac, lots, rt):
            if t is not None:
                self._bucket_column(t, b)
                self._collect_ids(t, b)
        if hh is not None:
            self._households(hh, ac)
        if ac is not None:
            self._accounts(ac, hh)
        if lots is not None:
            self._lots(lots, ac)
        if rt is not None:
            self._recent_trades(rt, ac)
        if info is not None:
            self._bucket_counts(info, b, hh, ac, lots, rt)

    def _bucket_column(self, t: _Table, b: int) -> None:
        col = t["bucket"]
        self.c.rows(t, "bucket", "must equal the file's bucket", pc.not_equal(col, b),
                    detail=lambda i: f"got {t.value('bucket', i)}, file is bucket {b}")
        hh = t["household_id"]
        expected = pc.fill_null(hh, 0).to_numpy(zero_copy_only=False) % self.n_buckets
        bad = _np_mask(pc.and_(pc.is_valid(hh), pc.is_valid(col)))
        bad &= pc.fill_null(col, 0).to_numpy(zero_copy_only=False) != expected
        n = self.n_buckets
        self.c.rows(t, "bucket", "must equal household_id % n_buckets", bad,
                    detail=lambda i: f"got {t.value('bucket', i)}, "
                                     f"household {t.value('household_id', i)} % {n} = {expected[i]}")

    def _collect_ids(self, t: _Table, b: int) -> None:
        column = t.spec.key[0]
        if t.usable(column):
            self.global_ids[t.name].append((b, t[column].drop_null().to_numpy(zero_copy_only=False).astype(np.int64)))

    def _check_global_ids(self) -> None:
        """Keys unique across the whole book: one sort of each table's ids."""
        for spec in HOUSEHOLD_TABLES:
            parts = self.global_ids.pop(spec.name)
            if not parts:
                continue
            column = spec.key[0]
            ids = np.concatenate([p for _, p in parts])
            uniq, counts = np.unique(ids, return_counts=True)
            dups = uniq[counts > 1]
            del uniq, counts
            if not len(dups):
                continue
            shown = dups[: self.c.max]
            # Buckets of the listed duplicates from the parts' offsets (no per-row bucket array).
            at = np.flatnonzero(np.isin(ids, shown))
            ends = np.cumsum([len(p) for _, p in parts])
            part_buckets = np.array([b for b, _ in parts])
            where: dict[int, list[int]] = {}
            for v, b in zip(ids[at].tolist(), part_buckets[np.searchsorted(ends, at, side="right")].tolist()):
                where.setdefault(v, []).append(b)
            rule = f"duplicate {column.replace('_', ' ')}"
            items = []
            for v in shown.tolist():
                bs = sorted(set(where[v]))
                in_buckets = f"bucket{'s' if len(bs) > 1 else ''} {', '.join(map(str, bs))}"
                items.append((f"{column}={v}", f"{rule} ({len(where[v])} rows, in {in_buckets})"))
            self.c.add(spec.name, column, rule, len(dups), items)

    def _households(self, t: _Table, ac: _Table | None) -> None:
        for col in ("short_term_rate", "long_term_rate", "state_rate"):
            self.c.rows(t, col, "must be in [0, 1]", _outside(t[col], 0.0, 1.0))
        for col in ("loss_carryforward_st", "loss_carryforward_lt", "tax_sensitivity"):
            self.c.rows(t, col, "must be >= 0", pc.less(t[col], 0))
        self.c.rows(t, "tax_budget", "must be >= 0 when set", pc.less(t["tax_budget"], 0))
        self.c.rows(t, "fee_rate", f"must be in [0, {MAX_FEE_RATE}]", _outside(t["fee_rate"], 0.0, MAX_FEE_RATE))
        if ac is not None and ac.usable("household_id"):
            lonely = _unknown(t["household_id"], pc.unique(ac["household_id"].drop_null()))
            self.c.rows(t, "*", "household has no account", lonely, detail=lambda i: "", severity=WARNING)

    def _accounts(self, t: _Table, hh: _Table | None) -> None:
        b = t.bucket
        if hh is not None and hh.usable("household_id"):
            self.c.rows(t, "household_id", "unknown household", _unknown(t["household_id"], hh["household_id"]),
                        detail=lambda i: f"got {t.value('household_id', i)}, not in households of bucket {b}")
        self._references(t, "model_id", self.model_ids, "unknown model")
        self._enum(t, "account_type", AccountType)
        for col in ("cash", "deposit", "cash_reserve", "min_trade", "transition_years"):
            self.c.rows(t, col, "must be >= 0", pc.less(t[col], 0))
        for col in ("min_position", "cash_band"):  # null: the firm default
            self.c.rows(t, col, "must be >= 0 when set", pc.less(t[col], 0))
        self.c.rows(t, "deposit", "must not exceed cash", pc.greater(t["deposit"], t["cash"]),
                    detail=lambda i: f"got {_fmt(t.value('deposit', i))}, cash {_fmt(t.value('cash', i))}")
        self._list_references(t, "screens", self.screen_ids, "unknown screen")
        self._list_references(t, "never_buy", self.security_ids, "unknown security")
        self._list_references(t, "never_sell", self.security_ids, "unknown security")
        self._direct_index(t)
        self._transition(t)

    def _list_references(self, t: _Table, column: str, known: pa.Array | None, rule: str) -> None:
        if known is None or not t.usable(column):
            return
        lists = t[column]
        values = pc.list_flatten(lists)
        bad_values = _np_mask(_unknown(values, known))
        parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
        bad = np.zeros(t.n, bool)
        bad[parents[bad_values]] = True
        known_py = set(known.to_pylist())
        self.c.rows(t, column, rule, bad, detail=lambda i: "got " + ", ".join(
            _fmt(v) for v in t.value(column, i) if v is not None and v not in known_py))

    def _direct_index(self, t: _Table) -> None:
        etf = t["direct_index_etf"]
        if self.security_ids is None:
            return
        unknown = _unknown(etf, self.security_ids)
        self.c.rows(t, "direct_index_etf", "unknown security", unknown)
        known = pc.and_(pc.is_valid(etf), pc.invert(unknown))
        if self.indexed_securities is not None:
            self.c.rows(t, "direct_index_etf", "must be a security with an index_id",
                        pc.and_(known, pc.invert(pc.is_in(etf, value_set=self.indexed_securities))))
        if self.model_pairs is not None and t.usable("model_id"):
            in_model = np.isin(_pair_codes(t["model_id"], etf), self.model_pairs)
            bad = _np_mask(pc.and_(known, pc.is_valid(t["model_id"]))) & ~in_model
            self.c.rows(t, "direct_index_etf", "must be a security of the account's model", bad,
                        detail=lambda i: f"security {t.value('direct_index_etf', i)} "
                                         f"is not in model {t.value('model_id', i)}")

    def _transition(self, t: _Table) -> None:
        start, years = t["transition_start"], t["transition_years"]
        if t.usable("transition_start", "transition_years"):
            self.c.rows(t, "transition_start", "must be set when transition_years > 0",
                        pc.and_(pc.greater(years, 0), pc.is_null(start)),
                        detail=lambda i: f"transition_years is {t.value('transition_years', i)}")
            self.c.rows(t, "transition_start", "must be null when transition_years is 0",
                        pc.and_(pc.less_equal(years, 0), pc.is_valid(start)))
        if self.as_of is not None:
            self.c.rows(t, "transition_start", f"must not be after the as-of date {self.as_of}",
                        pc.greater(start, pa.scalar(self.as_of, pa.date32())))

    def _account_lookup(self, t: _Table, ac: _Table | None) -> None:
        """Rows must name an account of their bucket, and carry that account's household."""
        if ac is None or not ac.usable("account_id"):
            return
        b = t.bucket
        ids = ac["account_id"]
        valid = pc.is_valid(ids)
        pos = pc.index_in(t["account_id"], value_set=pc.filter(ids, valid))
        self.c.rows(t, "account_id", "unknown account", pc.and_(pc.is_valid(t["account_id"]), pc.is_null(pos)),
                    detail=lambda i: f"got {t.value('account_id', i)}, not in accounts of bucket {b}")
        owner = pc.take(pc.filter(ac["household_id"], valid), pos)
        self.c.rows(t, "household_id", "must equal the account's household_id",
                    pc.not_equal(t["household_id"], owner),
                    detail=lambda i: f"got {t.value('household_id', i)}, account {t.value('account_id', i)} "
                                     f"is in household {owner[i].as_py()}")

    def _lots(self, t: _Table, ac: _Table | None) -> None:
        self._account_lookup(t, ac)
        self._references(t, "security_id", self.security_ids, "unknown security")
        self.c.rows(t, "shares", "must be > 0", pc.less_equal(t["shares"], 0))
        self.c.rows(t, "cost_basis", "must be >= 0", pc.less(t["cost_basis"], 0))
        if self.as_of is not None:
            self.c.rows(t, "acquired", f"must not be after the as-of date {self.as_of}",
                        pc.greater(t["acquired"], pa.scalar(self.as_of, pa.date32())))

    def _recent_trades(self, t: _Table, ac: _Table | None) -> None:
        self._account_lookup(t, ac)
        self._references(t, "security_id", self.security_ids, "unknown security")
        if self.as_of is not None:
            lo = self.as_of - dt.timedelta(days=WASH_WINDOW_DAYS)
            d = t["trade_date"]
            out = pc.or_(pc.less(d, pa.scalar(lo, pa.date32())), pc.greater(d, pa.scalar(self.as_of, pa.date32())))
            self.c.rows(t, "trade_date", f"must be between {lo} and the as-of date {self.as_of}", out)
        self._enum(t, "side", TradeSide)
        self.c.rows(t, "shares", "must be > 0", pc.less_equal(t["shares"], 0))
        self.c.rows(t, "price", "must be > 0", pc.less_equal(t["price"], 0))
        if t.usable("side", "realized_gain"):
            side, gain = t["side"], t["realized_gain"]
            self.c.rows(t, "realized_gain", "must be null for a buy",
                        pc.and_(pc.equal(side, TradeSide.BUY.value), pc.is_valid(gain)))
            self.c.rows(t, "realized_gain", "must be set for a sell",
                        pc.and_(pc.equal(side, TradeSide.SELL.value), pc.is_null(gain)), detail=lambda i: "")

    def _bucket_counts(self, info: BookInfo, b: int, hh, ac, lots, rt) -> None:
        stats = info.buckets[b]
        key = f"bucket={b}"
        rule = "count differs from the files"
        for name, t in (("households", hh), ("accounts", ac), ("lots", lots), ("recent_trades", rt)):
            if t is not None and getattr(stats, name) != t.n:
                self.c.one("book.json", key, name, rule, f"book.json says {getattr(stats, name)}, files hold {t.n}")
        if lots is None or not lots.usable("account_id", "security_id"):
            return
        pairs = pa.table({"a": lots["account_id"], "s": lots["security_id"]})
        positions = pairs.group_by(["a", "s"]).aggregate([]).num_rows
        if stats.positions != positions:
            self.c.one("book.json", key, "positions", rule, f"book.json says {stats.positions}, files hold {positions}")
        if ac is None or self.prices is None:
            return
        sec_ids, prices = self.prices
        price = pc.take(prices, pc.index_in(lots["security_id"], value_set=sec_ids))
        holdings = pc.sum(pc.multiply(lots["shares"], price)).as_py() or 0.0
        value = holdings + (pc.sum(ac["cash"]).as_py() or 0.0)
        if abs(stats.value - value) > VALUE_RTOL * max(abs(value), 1.0):
            self.c.one("book.json", key, "value", "differs from holdings at as-of prices plus cash",
                       f"book.json says {stats.value:.2f}, files give {value:.2f}", severity=WARNING)


def _pair_codes(first: pa.Array, second: pa.Array) -> np.ndarray:
    """(int32, int32) pairs as one int64 each, for set membership in numpy (nulls read as 0)."""
    a = pc.fill_null(first, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    b = pc.fill_null(second, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return (a << 32) | (b & 0xFFFFFFFF)
