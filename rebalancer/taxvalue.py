"""Tax value against fees: what the optimizer saved each household, beside what it paid.

DESIGN section 6. Each run writes, per household, the taxes saved or deferred against the
naive rebalance (``taxes_saved = naive_tax - tax``) split into losses harvested beyond the
rebalance, gains deferred and short-term gains left to turn long-term, and the annual
advisory fee (``fee = fee_rate * value``). Over a series of runs (a date range, e.g. the year
to date) this module adds them up:

- each run covers the days since the previous run of the series (the first run: from the
  start of the range, that day included), so the runs of a range cover each of its days
  exactly once;
- the fee of a run is the annual fee at that run's household value times its days / 365;
- the run figures are the last run's. Over the period, losses harvested are realized once,
  so their value adds up over the runs; a gain deferred (or a short-term gain left to turn
  long-term) is the same gain run after run while the household holds it, and the naive
  rebalance of every run would sell it again: summing those would count one deferred tax once
  per run. The period's deferral and wait values are each household's largest of any run
  (conservative: gains deferred on different days at different times count only once), and
  taxes saved for the period = harvest (sum) + deferral (largest) + wait (largest);
- a household's tax value exceeds its fee when ``taxes_saved > fee`` for the same period;
  firm-wide, the share of households that do, by count and weighted by household value
  (the last run's). A household with no fee and a positive tax value exceeds it.

The households counted are those rebalanced in the last run (the current book); earlier runs
add to them. A household rebalanced earlier but not in the last run (closed, or rejected
today) is not in the figures; the report lists the runs it read.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

__all__ = ["RunHouseholds", "TaxValue", "period_days", "tax_value", "SPLIT"]

SPLIT = ("harvest_value", "deferral_value", "wait_value")
_SUMMED = ("taxes_saved",) + SPLIT


@dataclass(frozen=True, eq=False)
class RunHouseholds:
    """The rebalanced households of one run, arrays (H,) in USD: ``fee`` is the annual fee."""
    date: dt.date
    household_id: np.ndarray
    value: np.ndarray
    taxes_saved: np.ndarray
    harvest_value: np.ndarray
    deferral_value: np.ndarray
    wait_value: np.ndarray
    fee: np.ndarray

    def __post_init__(self):
        n = len(self.household_id)
        for name in ("value", "fee") + _SUMMED:
            if len(getattr(self, name)) != n:
                raise ValueError(f"run of {self.date}: {name} has {len(getattr(self, name))} entries, "
                                 f"household_id {n}")
        if len(np.unique(self.household_id)) != n:
            raise ValueError(f"run of {self.date}: a household appears twice")


@dataclass(frozen=True, eq=False)
class TaxValue:
    """Per household of the last run (arrays (H,), ascending household id), USD, for the run
    and for the period (``*_period``): taxes saved, its split, the fee for the same days, and
    ``ratio`` = taxes saved / fee (inf for a positive tax value without fee, nan for 0 / 0).
    ``runs`` : per run of the series, (date, days covered)."""
    household_id: np.ndarray
    value: np.ndarray
    run: dict
    period: dict
    runs: tuple
    since: dt.date

    def exceeds(self, which: str) -> np.ndarray:
        f = self.run if which == "run" else self.period
        return f["taxes_saved"] > f["fee"]

    def share_exceeding(self, which: str) -> dict:
        """Share of households whose tax value exceeds their fee, by count and by value."""
        ex = self.exceeds(which)
        n = len(ex)
        total = float(self.value.sum())
        return {"households": int(ex.sum()), "of": n,
                "by_count": float(ex.mean()) if n else float("nan"),
                "by_value": float(self.value[ex].sum() / total) if total > 0 else float("nan")}


def period_days(dates: list[dt.date], since: dt.date) -> list[int]:
    """Days each run covers: since the previous run, the first from ``since`` inclusive."""
    out, prev = [], since - dt.timedelta(days=1)
    for d in dates:
        if d <= prev:
            raise ValueError(f"runs must be on increasing dates from {since}: {d} after {prev}")
        out.append((d - prev).days)
        prev = d
    return out


def _ratio(saved: np.ndarray, fee: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(fee > 0, saved / np.where(fee > 0, fee, 1.0),
                        np.where(saved > 0, np.inf, np.where(saved < 0, -np.inf, np.nan)))


def tax_value(runs: list[RunHouseholds], since: dt.date) -> TaxValue:
    """Tax value against fees over ``runs`` (increasing dates, all on or after ``since``); the
    last run is the one reported."""
    if not runs:
        raise ValueError("no runs to report")
    days = period_days([r.date for r in runs], since)
    last = runs[-1]
    ids = np.sort(last.household_id)
    order = np.argsort(last.household_id)
    run = {k: np.asarray(getattr(last, k), float)[order] for k in _SUMMED}
    run["fee"] = np.asarray(last.fee, float)[order] * days[-1] / 365.0
    period = {k: np.zeros(len(ids)) for k in ("harvest_value", "fee")}
    period.update({k: np.full(len(ids), -np.inf) for k in ("deferral_value", "wait_value")})  # every id is in the last run
    for r, d in zip(runs, days):
        pos = np.searchsorted(ids, r.household_id)
        pos_c = np.minimum(pos, max(len(ids) - 1, 0))
        hit = (pos < len(ids)) & (ids[pos_c] == r.household_id) if len(ids) else np.zeros(len(pos), bool)
        np.add.at(period["harvest_value"], pos[hit], np.asarray(r.harvest_value, float)[hit])
        for k in ("deferral_value", "wait_value"):  # stocks, not flows: the largest of any run
            np.maximum.at(period[k], pos[hit], np.asarray(getattr(r, k), float)[hit])
        np.add.at(period["fee"], pos[hit], np.asarray(r.fee, float)[hit] * d / 365.0)
    period["taxes_saved"] = period["harvest_value"] + period["deferral_value"] + period["wait_value"]
    run["ratio"] = _ratio(run["taxes_saved"], run["fee"])
    period["ratio"] = _ratio(period["taxes_saved"], period["fee"])
    return TaxValue(household_id=ids, value=np.asarray(last.value, float)[order], run=run, period=period,
                    runs=tuple((r.date, d) for r, d in zip(runs, days)), since=since)
