"""Per-household time of the reference solver (cvxpy + Clarabel) by kind of household.

Usage: python scripts/bench_reference.py --book /tmp/book3k [--per-kind 40] [--repeats 3]

Kinds (from the book's data):
  small   : ETF/fund households (no direct indexing) with at most 40 lots;
  medium  : ETF/fund households with more than 40 lots (multi-account, older, bigger);
  direct  : households with a direct-indexed account (200-500 stocks, hundreds of lots).

For each sampled household it times ``rebalance_household`` end to end (build, solves,
rounding, naive counterfactual) ``--repeats`` times and keeps the median; prints, per kind,
the median and 90th percentile, the median number of solves and the median time of one
Clarabel solve (cvxpy compile included).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from rebalancer.book import Book
from rebalancer.household import split_households
from rebalancer.market import Market
from rebalancer.optimize import rebalance_household
from rebalancer.schema import HOUSEHOLD_TABLES, REFERENCE_TABLES


def kind_of(hh) -> str:
    if (hh.accounts.di_etf >= 0).any():
        return "direct"
    return "small" if len(hh.lots) <= 40 else "medium"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--book", required=True)
    ap.add_argument("--bucket", type=int, default=0)
    ap.add_argument("--per-kind", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    book = Book.open(a.book)
    market = Market.from_tables({t.name: book.read(t.name) for t in REFERENCE_TABLES}, book.as_of)
    hhs, _ = split_households(market, {t.name: book.read(t.name, a.bucket) for t in HOUSEHOLD_TABLES})
    by_kind: dict[str, list] = {"small": [], "medium": [], "direct": []}
    for hh in hhs:
        if len(by_kind[kind_of(hh)]) < a.per_kind:
            by_kind[kind_of(hh)].append(hh)
    rebalance_household(market, by_kind["small"][0])  # warm imports and caches
    out = {}
    for kind, sample in by_kind.items():
        times, solves, per_solve, lots = [], [], [], []
        for hh in sample:
            ts = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                r = rebalance_household(market, hh)
                ts.append(time.perf_counter() - t)
            times.append(statistics.median(ts))
            solves.append(r.solves)
            per_solve.append(r.timings["solve"] / max(r.solves, 1))
            lots.append(len(hh.lots))
        if not times:
            continue
        out[kind] = {
            "households": len(times), "median_lots": float(np.median(lots)),
            "median_s": float(np.median(times)), "p90_s": float(np.percentile(times, 90)),
            "median_solves": float(np.median(solves)), "median_s_per_solve": float(np.median(per_solve)),
        }
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{'kind':8} {'hh':>4} {'lots':>6} {'median':>9} {'p90':>9} {'solves':>7} {'per solve':>10}")
        for k, v in out.items():
            print(f"{k:8} {v['households']:4d} {v['median_lots']:6.0f} {v['median_s'] * 1e3:7.1f}ms "
                  f"{v['p90_s'] * 1e3:7.1f}ms {v['median_solves']:7.1f} {v['median_s_per_solve'] * 1e3:8.1f}ms")


if __name__ == "__main__":
    main()
