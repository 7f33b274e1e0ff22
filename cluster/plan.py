"""Shard planning: whole households, balanced by work, from ``book.json`` alone.

A shard is a list of *pieces*; a piece is one household bucket, or one part of it: the
households of bucket ``b`` with ``(household_id // n_buckets) % parts == part``. The work of a
bucket is its lots plus its positions (what a household problem's size grows with), plus a
fixed cost per household; a piece counts ``1 / parts`` of it (household ids are spread evenly
over parts). Big buckets are cut into parts, small ones are packed together, so every shard
carries about ``shard_work`` units.

The plan depends only on the book's metadata and the planning settings, never on the
cluster's size, so a run resumed on another cluster writes the same files. It is stored in the
run's ``run.json``; a resumed run uses the stored plan.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from rebalancer.book import BookInfo, BucketStats

__all__ = ["HOUSEHOLD_WORK", "DEFAULT_SHARD_WORK", "Piece", "Shard", "Plan", "plan_shards", "bucket_work", "part_mask"]

# A household costs about as much as this many lots+positions before its first lot (problem
# set-up, the naive rebalance, a solve of a tiny problem).
HOUSEHOLD_WORK = 40
# About 20-40 s of one core per shard with the reference solver: enough shards for a small
# cluster to balance, few enough that per-task costs (reading the reference tables, Ray
# scheduling) stay small.
DEFAULT_SHARD_WORK = 60_000


def bucket_work(b: BucketStats) -> float:
    return float(b.lots + b.positions + HOUSEHOLD_WORK * b.households)


@dataclass(frozen=True)
class Piece:
    """Households of ``bucket`` with ``(household_id // n_buckets) % parts == part``."""
    bucket: int
    part: int = 0
    parts: int = 1

    def __post_init__(self):
        if not (self.parts >= 1 and 0 <= self.part < self.parts and self.bucket >= 0):
            raise ValueError(f"bad piece {self}")

    def label(self) -> str:
        return f"bucket {self.bucket}" + (f" part {self.part + 1}/{self.parts}" if self.parts > 1 else "")


@dataclass(frozen=True)
class Shard:
    """One task's input. ``households``, ``accounts`` and ``work`` are estimates from
    ``book.json`` (exact when every piece is a whole bucket)."""
    shard_id: int
    pieces: tuple[Piece, ...]
    households: float
    accounts: float
    work: float

    @property
    def name(self) -> str:
        return f"shard-{self.shard_id:05d}"

    def label(self) -> str:
        return f"{self.name} ({', '.join(p.label() for p in self.pieces)})"


@dataclass(frozen=True)
class Plan:
    n_buckets: int
    shard_work: float
    shards: tuple[Shard, ...]

    def to_json(self) -> dict:
        return {"n_buckets": self.n_buckets, "shard_work": self.shard_work,
                "shards": [{"shard_id": s.shard_id, "pieces": [asdict(p) for p in s.pieces],
                            "households": s.households, "accounts": s.accounts, "work": s.work}
                           for s in self.shards]}

    @classmethod
    def from_json(cls, obj: dict) -> "Plan":
        return cls(n_buckets=int(obj["n_buckets"]), shard_work=float(obj["shard_work"]),
                   shards=tuple(Shard(shard_id=int(s["shard_id"]), pieces=tuple(Piece(**p) for p in s["pieces"]),
                                      households=float(s["households"]), accounts=float(s["accounts"]),
                                      work=float(s["work"]))
                                for s in obj["shards"]))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def households(self) -> float:
        return sum(s.households for s in self.shards)


def plan_shards(info: BookInfo, shard_work: float = DEFAULT_SHARD_WORK) -> Plan:
    """Cut and pack the book's buckets into shards of about ``shard_work`` units.

    Every household of the book is in exactly one piece of exactly one shard: each bucket is
    cut into ``parts`` pieces that partition it by ``(household_id // n_buckets) % parts``.
    Pieces are packed in bucket order (consecutive buckets share a shard), so the plan is a
    pure function of ``book.json`` and ``shard_work``.
    """
    if not shard_work > 0:
        raise ValueError(f"shard_work must be > 0, got {shard_work}")
    pieces: list[tuple[Piece, float, float, float]] = []  # piece, work, households, accounts
    for b in info.buckets:
        w = bucket_work(b)
        parts = max(1, round(w / shard_work)) if w > shard_work else 1
        for k in range(parts):
            pieces.append((Piece(b.bucket, k, parts), w / parts, b.households / parts, b.accounts / parts))

    shards: list[Shard] = []
    cur: list = []

    def close():
        if cur:
            shards.append(Shard(len(shards), tuple(p for p, *_ in cur), sum(h for _, _, h, _ in cur),
                                sum(a for *_, a in cur), sum(w for _, w, _, _ in cur)))
            cur.clear()

    for item in pieces:
        # Close the shard when adding the piece would overshoot more than stopping short does.
        load = sum(w for _, w, _, _ in cur)
        if cur and abs(load + item[1] - shard_work) > abs(load - shard_work):
            close()
        cur.append(item)
    close()
    return Plan(n_buckets=info.n_buckets, shard_work=float(shard_work), shards=tuple(shards))


def part_mask(household_id, n_buckets: int, piece: Piece):
    """Mask of the households (an int64 array of ids, all in ``piece.bucket``) in ``piece``."""
    household_id = np.asarray(household_id, np.int64)
    if piece.parts == 1:
        return np.ones(len(household_id), bool)
    return (household_id // n_buckets) % piece.parts == piece.part

