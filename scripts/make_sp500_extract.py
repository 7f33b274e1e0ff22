"""Build the S&P 500 price extract shipped in rebalancer/data/ from the shared raw data.

Run once by a developer (not at install time): the outputs are committed so that a fresh
machine needs nothing outside the project.

    python scripts/make_sp500_extract.py ../shared/data/sp500 rebalancer/data

Outputs
-------
sp500_close.parquet   wide: ``date`` (date32) + one float32 column per symbol, the close as
                      traded (not split-adjusted), NaN before listing. 2005-01-03 .. 2021-04-21.
sp500_events.parquet  long: date, symbol, dividend (cash per share as traded), split
                      (coefficient, 1.0 when none); only rows with a dividend or a split.
sp500_sectors.csv     symbol, name, sector, sub_industry for the symbols that have GICS data.
"""
from __future__ import annotations

import csv
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

START = dt.date(2005, 1, 1)


def main(src: Path, dst: Path) -> None:
    t = pq.read_table(src / "prices_daily.parquet")
    t = t.filter(pc.greater_equal(t["date"], pa.scalar(START)))
    dates = np.unique(t["date"].to_numpy())
    syms = np.unique(t["symbol"].to_numpy(zero_copy_only=False))
    di = np.searchsorted(dates, t["date"].to_numpy())
    si = np.searchsorted(syms, t["symbol"].to_numpy(zero_copy_only=False))
    close = np.full((len(dates), len(syms)), np.nan, np.float32)
    close[di, si] = t["close"].to_numpy()
    wide = pa.table({"date": pa.array(dates, pa.date32())} | {s: close[:, i] for i, s in enumerate(syms)})
    pq.write_table(wide, dst / "sp500_close.parquet", compression="zstd", compression_level=19,
                   use_byte_stream_split=True)

    ev = t.filter(pc.or_(pc.greater(t["dividend"], 0.0), pc.not_equal(t["split"], 1.0)))
    ev = ev.select(["date", "symbol", "dividend", "split"]).sort_by([("date", "ascending"), ("symbol", "ascending")])
    pq.write_table(ev, dst / "sp500_events.parquet", compression="zstd", compression_level=19)

    with open(src / "constituents.csv", newline="") as f, open(dst / "sp500_sectors.csv", "w", newline="") as g:
        w = csv.writer(g)
        w.writerow(["symbol", "name", "sector", "sub_industry"])
        rows = sorted((r["Symbol"], r["Security"], r["GICS Sector"], r["GICS Sub-Industry"]) for r in csv.DictReader(f))
        known = set(syms)
        for r in rows:
            if r[0] in known:
                w.writerow(r)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
