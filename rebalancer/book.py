"""A book in object storage: its layout, its ``book.json`` and typed access to its tables.

Layout under the book prefix (see ``rebalancer.schema`` for the tables)::

    book.json                              written last; the book is complete when it exists
    <reference table>/part-0.parquet       securities, models, ..., risk_specific
    <household table>/bucket-00042.parquet households, accounts, lots, recent_trades

``book.json`` carries per-bucket counts so a driver can plan shards balanced by work without
reading the household tables.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from .errors import BookLayoutError
from .schema import HOUSEHOLD_TABLES, REFERENCE_TABLES, TABLES, TableSpec, conform
from .storage import Location, S3Options, open_uri

__all__ = ["BOOK_FORMAT", "BOOK_VERSION", "BucketStats", "BookInfo", "Book", "BookWriter", "table_path", "book_fingerprint"]

BOOK_FORMAT = "rebalancer-book"
BOOK_VERSION = 1
INFO_FILE = "book.json"


@dataclass(frozen=True)
class BucketStats:
    """Counts of one household bucket (what a shard planner balances on)."""
    bucket: int
    households: int
    accounts: int
    lots: int
    recent_trades: int
    positions: int  # distinct (account, security) pairs
    value: float  # USD: holdings at as-of prices plus cash


@dataclass(frozen=True)
class BookInfo:
    """Contents of ``book.json``."""
    as_of: dt.date
    n_buckets: int
    buckets: tuple[BucketStats, ...]
    source: dict = field(default_factory=dict)  # how the book was made (generator settings)

    def __post_init__(self):
        if self.n_buckets < 1:
            raise ValueError(f"n_buckets must be >= 1, got {self.n_buckets}")
        if [b.bucket for b in self.buckets] != list(range(self.n_buckets)):
            raise ValueError("book.json must list every bucket 0..n_buckets-1 exactly once, in order")

    def total(self, name: str) -> float:
        return sum(getattr(b, name) for b in self.buckets)

    def to_json(self) -> dict:
        return {
            "format": BOOK_FORMAT,
            "version": BOOK_VERSION,
            "as_of": self.as_of.isoformat(),
            "n_buckets": self.n_buckets,
            "bucket_rule": "household_id % n_buckets",
            "totals": {k: self.total(k) for k in ("households", "accounts", "lots", "recent_trades", "positions", "value")},
            "buckets": [asdict(b) for b in self.buckets],
            "source": self.source,
        }

    @classmethod
    def from_json(cls, obj: dict) -> "BookInfo":
        if not isinstance(obj, dict):
            raise BookLayoutError("book.json: not a JSON object")
        if obj.get("format") != BOOK_FORMAT:
            raise BookLayoutError(f"book.json: format is {obj.get('format')!r}, expected {BOOK_FORMAT!r}")
        if obj.get("version") != BOOK_VERSION:
            raise BookLayoutError(f"book.json: version {obj.get('version')!r} not supported (this code reads {BOOK_VERSION})")
        if not isinstance(obj.get("n_buckets"), int):
            raise BookLayoutError(f"book.json: n_buckets must be an integer, got {obj.get('n_buckets')!r}")
        try:
            return cls(
                as_of=dt.date.fromisoformat(obj["as_of"]),
                n_buckets=obj["n_buckets"],
                buckets=tuple(BucketStats(**b) for b in obj["buckets"]),
                source=obj.get("source", {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BookLayoutError(f"book.json: malformed ({e})") from None


def table_path(spec: TableSpec, bucket: int | None = None) -> str:
    """Path of a table's file relative to the book prefix."""
    if spec.household_keyed:
        if bucket is None:
            raise ValueError(f"{spec.name} is household-keyed: give a bucket")
        return f"{spec.name}/bucket-{bucket:05d}.parquet"
    return f"{spec.name}/part-0.parquet"


class Book:
    """Read access to a complete book."""

    def __init__(self, loc: Location, info: BookInfo):
        self.loc, self.info = loc, info

    @classmethod
    def open(cls, uri: str, s3: S3Options | None = None) -> "Book":
        loc = open_uri(uri, s3)
        if not loc.exists(INFO_FILE):
            raise BookLayoutError(f"{uri}: no {INFO_FILE}; not a book, or its writing did not finish")
        return cls(loc, BookInfo.from_json(loc.read_json(INFO_FILE)))

    @property
    def as_of(self) -> dt.date:
        return self.info.as_of

    def read(self, name: str, bucket: int | None = None, columns: list[str] | None = None) -> pa.Table:
        """Read a reference table, or one bucket of a household-keyed table, as stored."""
        spec = TABLES[name]
        rel = table_path(spec, bucket)
        try:
            return self.loc.read_parquet(rel, columns=columns)
        except FileNotFoundError:
            raise BookLayoutError(f"{self.loc.uri}: missing file {rel}") from None
        except (OSError, pa.ArrowInvalid) as e:
            raise BookLayoutError(f"{self.loc.uri}: cannot read {rel}: {e}") from None


class BookWriter:
    """Writes a book: tables in any order, then :meth:`finish` writes ``book.json`` last."""

    def __init__(self, uri: str, s3: S3Options | None = None, overwrite: bool = False):
        self.loc = open_uri(uri, s3)
        if self.loc.exists(INFO_FILE) or any(self.loc.listdir(t.name) for t in REFERENCE_TABLES + HOUSEHOLD_TABLES):
            if not overwrite:
                raise BookLayoutError(f"{uri} already holds a book; pass overwrite=True (--overwrite) to replace it")
            self.loc.delete_dir_contents()

    def write(self, name: str, table: pa.Table, bucket: int | None = None) -> None:
        spec = TABLES[name]
        self.loc.write_parquet(table_path(spec, bucket), conform(table, spec))

    def finish(self, info: BookInfo) -> None:
        self.loc.write_json(INFO_FILE, info.to_json())


def book_fingerprint(book: Book) -> str:
    """A short hash of the book's ``book.json`` (counts, buckets, as-of, source): what a run
    records to tell the book it ran on, and a scenario to tell the book it repriced."""
    return hashlib.sha256(json.dumps(book.info.to_json(), sort_keys=True).encode()).hexdigest()[:32]
