"""The crisis-day scenario: reprice a book by a market shock, run the whole repriced book on
Ray, and report what the run harvested (``rebalance scenario crisis``).

A scenario's files, under ``<out>/<scenario id>/``::

    book/            the repriced book (rebalancer.scenario.reprice_book), a complete book
    shocked/         the full-book run of the repriced book (cluster.driver.run_book)
    baseline/        with --baseline: the same run of the input book, unshocked
    scenario.json    the scenario's figures, written last (rewritten by every attempt)

The same scenario id resumes: a repriced book already there is reused when it was made from
the same input book with the same shock (else the scenario is refused), and the runs resume
their shards.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

import ray

from rebalancer.book import Book
from rebalancer.errors import BookLayoutError, RunError
from rebalancer.scenario import (DEFAULT_BENCHMARK, FactorShock, ScenarioError, book_fingerprint, json_ready,
                                 parse_shock, reprice_book)
from rebalancer.settings import OptimizerSettings
from rebalancer.solvers import DEFAULT_SOLVER, SOLVERS
from rebalancer.storage import S3Options, open_uri
from rebalancer.validate import validate_book

from .driver import RunRequest, connect_ray, run_book
from .layout import new_run_id, validate_run_id
from .plan import DEFAULT_SHARD_WORK
from .summary import _pct, _usd

__all__ = ["CrisisRequest", "CrisisOutcome", "run_crisis", "run_figures", "format_crisis", "SCENARIO_FILE"]

SCENARIO_FILE = "scenario.json"
BOOK_DIR, SHOCKED_RUN, BASELINE_RUN = "book", "shocked", "baseline"


@dataclass(frozen=True)
class CrisisRequest:
    """A crisis scenario. ``shock``: ``equity=-30%`` or ``START..END``
    (:func:`rebalancer.scenario.parse_shock`). ``scenario_id`` None: a new id
    (``crisis-<date>-<time>-<hex>``); an existing one resumes. ``baseline``: also run the input
    book unshocked, for comparison. ``validate``: check the repriced book against the data
    contract before running it. The rest as :class:`cluster.driver.RunRequest`."""
    book: str
    out: str
    shock: str
    benchmark: str = DEFAULT_BENCHMARK
    scenario_id: str | None = None
    baseline: bool = False
    validate: bool = True
    address: str | None = None
    num_cpus: int | None = None
    solver: str = DEFAULT_SOLVER
    settings: OptimizerSettings = field(default_factory=OptimizerSettings)
    shard_work: float = DEFAULT_SHARD_WORK
    max_in_flight: int | None = None
    s3: S3Options | None = None

    def __post_init__(self):
        parse_shock(self.shock)
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose from {sorted(SOLVERS)}")
        if self.scenario_id is not None:
            validate_run_id(self.scenario_id)


@dataclass(frozen=True)
class CrisisOutcome:
    scenario_id: str
    uri: str
    complete: bool
    report: dict  # what scenario.json holds
    text: str  # the one-screen summary


def run_figures(summary: dict, book_value: float) -> dict:
    """The scenario's figures of one run, from its ``summary.json`` (``book_value``: the value of
    the book it ran, the denominator of the shares)."""
    t, h = summary["totals"], summary["headline"]
    usd, hh, acc, tr = t["usd"], t["households"], t["accounts"], t["trades"]
    harvested = h["losses_harvested"]
    return {
        "run_id": summary["run_id"],
        "uri": summary.get("out"),
        "complete": summary["complete"],
        "date": summary["date"],
        "solver": summary["solver"],
        "households": {"rebalanced": hh["rebalanced"], "rejected": hh["rejected"], "with_trades": hh["with_trades"]},
        "accounts": {"rebalanced": acc["rebalanced"], "rejected": acc["rejected"], "traded": acc["traded"]},
        "trades": {"rows": tr["rows"], "buys": tr["buys"], "sells": tr["sells"]},
        "book_value": book_value,
        "value_rebalanced": h["value_rebalanced"],
        "losses_harvested": harvested,
        "losses_harvested_share_of_book": harvested / book_value if book_value else None,
        "losses_harvested_share_of_value_rebalanced": h["losses_harvested_share_of_value"],
        "gains_realized": usd["realized_st_gain"] + usd["realized_lt_gain"],
        "realized": {k: usd[k] for k in ("realized_st_gain", "realized_st_loss", "realized_lt_gain", "realized_lt_loss",
                                         "disallowed_loss", "loss_deferred", "loss_destroyed")},
        "net_realized_gain": h["net_realized_gain"],
        "tax": usd["tax"],
        "naive_tax": usd["naive_tax"],
        "taxes_saved": usd["taxes_saved"],
        "taxes_saved_share_of_book": usd["taxes_saved"] / book_value if book_value else None,
        "turnover": h["turnover"],
        "bought": usd["bought"],
        "sold": usd["sold"],
        "tracking_error": {"before": h["te_before_value_weighted"], "after": h["te_after_value_weighted"],
                           "naive": h["te_naive_value_weighted"]},
        "failed_shards": summary["shards"]["failed"],
        "wall_seconds": summary["timings"].get("wall"),
    }


def _reuse_or_reprice(req: CrisisRequest, book: Book, scenario_id: str, book_uri: str, shock) -> tuple[dict, bool]:
    """The repricing's figures: a repriced book of this scenario already there is reused (its
    figures from the last scenario.json), provided it came from the same input and shock."""
    loc = open_uri(book_uri, req.s3)
    if loc.exists("book.json"):
        done = Book.open(book_uri, req.s3)
        src = done.info.source.get("scenario", {})
        mine = {"shock": shock.label, "benchmark": req.benchmark, "input_fingerprint": book_fingerprint(book)}
        diff = [k for k, v in mine.items() if src.get(k) != v]
        if diff:
            raise RunError(f"scenario {scenario_id!r} already holds a repriced book made from other inputs "
                           f"({', '.join(f'{k}: {src.get(k)!r} then, {mine[k]!r} now' for k in diff)}); "
                           "use a new scenario id")
        scen = open_uri(req.out, req.s3).child(scenario_id)
        if scen.exists(SCENARIO_FILE):
            old = scen.read_json(SCENARIO_FILE).get("repricing")
            if old:
                return {**old, "seconds": 0.0, "reused": True}, True
        # The book is complete but its figures were not recorded: reprice again (same bytes).
    rep = reprice_book(book, shock, book_uri, s3=req.s3, benchmark=req.benchmark, overwrite=True,
                       source={"scenario_id": scenario_id})
    return {**rep.summary(), "reused": False}, False


def run_crisis(req: CrisisRequest, stream: TextIO | None = sys.stderr) -> CrisisOutcome:
    """Reprice, validate, run (and the baseline), gather; writes ``scenario.json`` last."""
    t0 = time.perf_counter()
    shock = parse_shock(req.shock)
    try:
        book = Book.open(req.book, req.s3)
    except BookLayoutError as e:
        raise ScenarioError(f"cannot open the book: {e}") from None
    if not isinstance(shock, FactorShock) and book.as_of != shock.start:
        raise ScenarioError(f"the book {req.book} is as of {book.as_of}, but the window {shock.label} starts on "
                            f"{shock.start}: a historical window reprices a book of its start date")
    scenario_id = req.scenario_id or f"crisis-{new_run_id(book.as_of)}"
    scen = open_uri(req.out, req.s3).child(scenario_id)
    book_uri = scen.child(BOOK_DIR).uri
    if stream is not None:
        print(f"scenario {scenario_id}: {shock.label} on {req.book} (as of {book.as_of}) -> {scen.uri}", file=stream)

    repricing, reused = _reuse_or_reprice(req, book, scenario_id, book_uri, shock)
    t_reprice = time.perf_counter() - t0
    if stream is not None:
        print(f"repriced book {'reused' if reused else 'written'}: {book_uri} (as of {repricing['as_of']}), "
              f"{t_reprice:.1f} s", file=stream)

    t = time.perf_counter()
    validation = None
    if req.validate:
        report = validate_book(book_uri, s3=req.s3)
        validation = {"ok": report.ok, "errors": len(report.errors), "warnings": len(report.warnings)}
        if not report.ok:
            first = "; ".join(str(p) for p in report.errors[:3])
            raise ScenarioError(f"the repriced book {book_uri} does not validate ({len(report.errors)} errors, e.g. "
                                f"{first}); check the input book with `rebalance validate --book {req.book}`")
    t_validate = time.perf_counter() - t

    runs: dict[str, dict] = {}
    started = connect_ray(req.address, req.num_cpus)  # once for the scenario's runs
    try:
        common = dict(out=scen.uri, address=req.address, solver=req.solver, settings=req.settings,
                      shard_work=req.shard_work, max_in_flight=req.max_in_flight, num_cpus=req.num_cpus, s3=req.s3)
        t = time.perf_counter()
        shocked = run_book(RunRequest(book=book_uri, run_id=SHOCKED_RUN, **common), stream=stream)
        runs[SHOCKED_RUN] = run_figures(shocked.summary, repricing["value_after"])
        t_run = time.perf_counter() - t
        t_base = None
        if req.baseline:
            t = time.perf_counter()
            base = run_book(RunRequest(book=req.book, run_id=BASELINE_RUN, date=book.as_of, **common), stream=stream)
            runs[BASELINE_RUN] = run_figures(base.summary, repricing["value_before"])
            t_base = time.perf_counter() - t
    finally:
        if started:
            ray.shutdown()

    complete = all(r["complete"] for r in runs.values())
    s = runs[SHOCKED_RUN]
    losses_after = -repricing["unrealized_taxable"]["losses_after"]
    report = {
        "scenario_id": scenario_id,
        "kind": "crisis",
        "complete": complete,
        "shock": {"spec": shock.label, "kind": "factor" if isinstance(shock, FactorShock) else "window",
                  **({"factor": shock.factor, "size": shock.size} if isinstance(shock, FactorShock)
                     else {"start": shock.start.isoformat(), "end": shock.end.isoformat()}),
                  "benchmark": req.benchmark, "benchmark_return": repricing["benchmark_return"]},
        "input_book": {"uri": req.book, "as_of": book.as_of.isoformat(), "fingerprint": book_fingerprint(book),
                       "value": repricing["value_before"]},
        "repricing": repricing,
        "validation": validation,
        "run": s,
        "baseline": runs.get(BASELINE_RUN),
        # the headline figures, for a reader in a hurry
        "book_value_before": repricing["value_before"],
        "book_value_after": repricing["value_after"],
        "losses_harvested": s["losses_harvested"],
        "losses_harvested_share_of_book": s["losses_harvested_share_of_book"],
        "losses_harvested_share_of_unrealized": s["losses_harvested"] / losses_after if losses_after > 0 else None,
        "taxes_saved": s["taxes_saved"],
        "timings": {"reprice": t_reprice, "validate": t_validate, "run": t_run, "baseline": t_base,
                    "total": time.perf_counter() - t0},
        "uri": scen.uri,
    }
    scen.write_json(SCENARIO_FILE, json_ready(report))
    report = json_ready(report)
    return CrisisOutcome(scenario_id=scenario_id, uri=scen.uri, complete=complete, report=report,
                         text=format_crisis(report))


def format_crisis(r: dict) -> str:
    """One screen of text for a crisis scenario."""
    sh, rp, s, tm = r["shock"], r["repricing"], r["run"], r["timings"]
    sr = rp["security_returns"]
    state = "COMPLETE" if r["complete"] else "INCOMPLETE"
    v0, v1 = r["book_value_before"], r["book_value_after"]
    lines = [
        f"Scenario   {r['scenario_id']}: shock {sh['spec']} ({sh['benchmark']} {_pct(sh['benchmark_return'])}); {state}",
        f"Book       {r['input_book']['uri']} (as of {r['input_book']['as_of']}) -> repriced {rp['uri']} "
        f"(as of {rp['as_of']})" + (", reused" if rp.get("reused") else ""),
        f"Value      {_usd(v0)} before -> {_usd(v1)} after the shock ({_pct(v1 / v0 - 1 if v0 else None)}); "
        f"securities {_pct(sr['min'], 1)} .. median {_pct(sr['median'], 1)} .. {_pct(sr['max'], 1)}"
        + (f"; {rp['clipped_at_floor']} clipped at -95%" if rp["clipped_at_floor"] else "")
        + (f"; {len(rp['factor_implied'])} factor-implied" if rp.get("factor_implied") else ""),
        f"Taxable    unrealized losses {_usd(-rp['unrealized_taxable']['losses_before'])} before -> "
        f"{_usd(-rp['unrealized_taxable']['losses_after'])} after the shock",
        f"Run        {s['households']['rebalanced']:,} households rebalanced, {s['households']['rejected']:,} rejected; "
        f"{s['accounts']['traded']:,} accounts traded",
        f"Harvested  {_usd(s['losses_harvested'])} of losses = {_pct(s['losses_harvested_share_of_book'])} of book value "
        f"after the shock ({_pct(r['losses_harvested_share_of_unrealized'], 1)} of the unrealized losses)",
        f"Realized   gains {_usd(s['gains_realized'])}; losses disallowed by wash sales {_usd(-s['realized']['disallowed_loss'])}",
        f"Tax        saved or deferred {_usd(s['taxes_saved'])} vs the naive rebalance "
        f"({_pct(s['taxes_saved_share_of_book'])} of book value)",
        f"Trades     {s['trades']['rows']:,} ({s['trades']['buys']:,} buys, {s['trades']['sells']:,} lot sells); "
        f"turnover {_pct(s['turnover'])}",
        f"Tracking   error, value-weighted: {_pct(s['tracking_error']['before'])} before -> "
        f"{_pct(s['tracking_error']['after'])} after (naive rebalance {_pct(s['tracking_error']['naive'])})",
    ]
    b = r.get("baseline")
    if b:
        lines.append(f"Baseline   unshocked book: harvested {_usd(b['losses_harvested'])} = "
                     f"{_pct(b['losses_harvested_share_of_book'])} of book value, taxes saved {_usd(b['taxes_saved'])}, "
                     f"{b['trades']['rows']:,} trades")
    for f in s["failed_shards"][:3]:
        lines.append(f"  FAILED shard {f['shard_id']} ({f['pieces']}): {f['error']}")
    lines.append(
        f"Time       reprice {tm['reprice']:.1f} s, validate {tm['validate']:.1f} s, run {tm['run']:.1f} s"
        + (f", baseline {tm['baseline']:.1f} s" if tm.get("baseline") is not None else "")
        + f"; total {tm['total']:.1f} s")
    for n in rp.get("notes", [])[:3]:
        lines.append(f"Note       {n}")
    lines.append(f"Outputs    {r['uri']}/  {BOOK_DIR}/ {SHOCKED_RUN}/" + (f" {BASELINE_RUN}/" if b else "")
                 + f" {SCENARIO_FILE}"
                 + ("" if r["complete"] else "  (incomplete: re-run with the same --run-id to finish)"))
    return "\n".join(lines)
