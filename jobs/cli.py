"""The ``rebalance`` command.

Subcommands: ``generate`` (a synthetic book), ``validate`` (a book against the data contract),
``household`` (rebalance one household as a run does and print its trades), ``run``
(rebalance the whole book on Ray), ``capacity`` (generate or reuse a book, run it, and report
speed, memory and both solvers side by side), ``report`` (the run report, HTML and JSON),
``review`` (check a run's orders against the rules a desk sends them by), ``scenario`` (a
crisis day: reprice the book by a shock and run it; a month of daily harvesting), ``schema``
(print the contract). Exit status: 0 success, 1 the book has errors (``validate``), the
household is rejected (``household``) or a hard rule is broken (``review``), 2 bad usage or an
unreadable input, 3 a run finished incomplete (shards failed; re-run with the same
``--run-id`` to finish it).
"""
from __future__ import annotations

import os

# The engine's parallelism is across processes (Ray tasks), one core each: BLAS threads on top
# of that only contend (the batched solver's many small products slow down by 10x and more on
# a busy machine). Set before numpy is imported; an explicit setting in the environment wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from rebalancer import jsonout  # noqa: E402
from rebalancer.errors import RebalancerError  # noqa: E402
from rebalancer.storage import S3Options  # noqa: E402

__all__ = ["main"]


def _s3_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("S3 (defaults: the standard AWS environment variables)")
    g.add_argument("--s3-endpoint-url", help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
    g.add_argument("--s3-region", help="region (else AWS_REGION / AWS_DEFAULT_REGION, then us-east-1)")
    g.add_argument("--s3-backend", choices=["arrow", "s3fs"], help="S3 client (else REBALANCER_S3_BACKEND, then arrow)")
    g.add_argument("--storage-retry-seconds", type=float, default=None,
                   help="how long an S3 operation that fails transiently (unreachable, 5xx, throttled) is retried "
                        "with backoff before it is reported (else REBALANCER_STORAGE_RETRY_SECONDS, then 120)")


def _s3(args) -> S3Options:
    return S3Options.from_env(endpoint_url=args.s3_endpoint_url, region=args.s3_region, backend=args.s3_backend,
                              retry_seconds=args.storage_retry_seconds)


def _peak_rss_mb() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest finished child, in MB."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return self_kb / 1024.0, child_kb / 1024.0


def _progress(label: str):
    t0 = time.perf_counter()
    tty = sys.stderr.isatty()

    def report(done: int, total: int) -> None:
        if tty or done == total or done % max(1, total // 10) == 0:
            el = time.perf_counter() - t0
            eta = el / done * (total - done) if done else 0.0
            end = "\n" if done == total or not tty else ""
            print(f"\r{label}: {done}/{total} buckets, {el:5.1f}s elapsed, ETA {eta:5.1f}s", end=end, file=sys.stderr, flush=True)
    return report


def cmd_generate(args) -> int:
    from rebalancer.generate import GeneratorSettings, generate_book
    from rebalancer.storage import open_uri

    settings = GeneratorSettings(accounts=args.accounts, seed=args.seed, as_of=args.as_of,
                                 accounts_per_bucket=args.accounts_per_bucket)
    workers = args.workers or min(os.cpu_count() or 1, settings.n_buckets)
    t0 = time.perf_counter()
    info = generate_book(settings, args.out, s3=_s3(args), overwrite=args.overwrite, workers=workers,
                         progress=_progress("generate"))
    wall = time.perf_counter() - t0
    n_files, n_bytes = open_uri(args.out, _s3(args)).total_size()
    own, child = _peak_rss_mb()
    tot = info.to_json()["totals"]
    summary = {
        "book": args.out, "as_of": info.as_of.isoformat(), "buckets": info.n_buckets, "seed": args.seed,
        "households": tot["households"], "accounts": tot["accounts"], "lots": tot["lots"],
        "positions": tot["positions"], "recent_trades": tot["recent_trades"], "value_usd": round(tot["value"], 2),
        "files": n_files, "bytes_on_disk": n_bytes, "wall_seconds": round(wall, 2), "workers": workers,
        "peak_rss_mb_driver": round(own, 1), "peak_rss_mb_worker": round(child, 1),
    }
    if args.json:
        print(jsonout.dumps(summary, indent=2))
    else:
        print(f"book {args.out} as of {summary['as_of']}: {summary['households']:,} households, "
              f"{summary['accounts']:,} accounts, {summary['lots']:,} lots, {summary['positions']:,} positions, "
              f"{summary['recent_trades']:,} recent trades, ${summary['value_usd'] / 1e9:,.3f}B")
        print(f"{n_files} files, {n_bytes / 1e6:,.1f} MB on disk, {info.n_buckets} buckets; "
              f"{wall:.1f}s with {workers} worker(s); peak memory {own:,.0f} MB driver, {child:,.0f} MB largest worker")
    return 0


def cmd_validate(args) -> int:
    from rebalancer.validate import validate_book

    report = validate_book(args.book, s3=_s3(args), max_per_rule=args.max_per_rule)
    if args.json:
        print(jsonout.dumps({"ok": report.ok, "rows_checked": report.rows_checked, "omitted": report.omitted,
                          "problems": [p.__dict__ for p in report.problems]}, indent=2, default=str))
    else:
        print(report.format())
    return 0 if report.ok else 1


def _household_inputs(args) -> tuple[str, str, dt.date | None, dict | None]:
    """Book, solver, date and settings (as run.json holds them) of ``rebalance household``: a
    run's where ``--run`` names one, the job's defaults otherwise; explicit flags win."""
    from rebalancer.solvers import DEFAULT_SOLVER

    if not args.run:
        if not args.book:
            raise ValueError("give --book, or --run to take the book, solver, date and settings of a run")
        return args.book, args.solver or DEFAULT_SOLVER, args.date, None
    from cluster.history import split_run_uri
    from cluster.layout import RunLayout
    from rebalancer.book import Book, book_fingerprint
    from rebalancer.storage import open_uri

    out, run_id = split_run_uri(args.run)
    run = RunLayout(open_uri(out, _s3(args)), run_id).read_run()
    if run is None:
        raise ValueError(f"{args.run}: no run.json: not a run")
    book = args.book or run["book"]
    if args.book and book_fingerprint(Book.open(book, _s3(args))) != run["book_fingerprint"]:
        raise ValueError(f"run {run_id} was made from another book than {book} (book.json differs)")
    return book, args.solver or run["solver"], args.date or dt.date.fromisoformat(run["date"]), run["settings"]


def cmd_household(args) -> int:
    from cluster.shard import run_household, settings_from_json
    from rebalancer.outputs import HOUSEHOLDS_SCHEMA

    book, solver, date, settings = _household_inputs(args)
    hr = run_household(book, args.household, solver=solver, date=date, s3=_s3(args),
                       settings=None if settings is None else settings_from_json(settings))
    if hr.rejections:
        for j in hr.rejections:
            print(f"account {j.account_id}: rejected ({j.stage}): {j.reason}")
        return 1
    if hr.result is None:
        print(f"household {args.household} is not in the book (bucket {hr.bucket})", file=sys.stderr)
        return 2
    hh, r, mkt = hr.household, hr.result, hr.market
    # The run's rows for this household, with the symbol and the account type beside the ids.
    sym = dict(zip(mkt.security_id.tolist(), mkt.symbol.tolist()))
    kinds = dict(zip(hr.outputs["accounts"]["account_id"].to_pylist(), hr.outputs["accounts"]["account_type"].to_pylist()))
    rows = [{**x, "symbol": str(sym[x["security_id"]]), "account_type": kinds[x["account_id"]]}
            for x in hr.outputs["trades"].to_pylist()]
    figures = {k: v for k, v in hr.outputs["households"].to_pylist()[0].items() if k in HOUSEHOLDS_SCHEMA.names}
    if args.json:
        print(jsonout.dumps({"household_id": hh.household_id, "book": book, "run": args.run, "date": hr.date.isoformat(),
                             "solver": solver, **figures, "timings": r.timings, "trades": rows},
                            indent=2, default=str))
        return 0
    print(f"household {hh.household_id}: {hh.n_accounts} accounts, {len(hh.lots)} lots, ${r.value:,.2f}; {r.status}; "
          f"solver {solver} -> {r.solver}, date {hr.date}" + (f", settings of run {args.run}" if args.run else ""))
    print(f"  tracking error {r.te_before:.2%} -> {r.te_after:.2%} (naive rebalance: {r.te_naive:.2%})")
    print(f"  realized: ST {r.realized_st_gain + r.realized_st_loss:,.2f}, LT {r.realized_lt_gain + r.realized_lt_loss:,.2f}; "
          f"tax {r.tax:,.2f} vs naive {r.naive_tax:,.2f}: saved or deferred {r.taxes_saved:,.2f} "
          f"(harvest {r.harvest_value:,.2f}, deferral {r.deferral_value:,.2f}, waits {r.wait_value:,.2f})")
    print(f"  bought {r.bought:,.2f}, sold {r.sold:,.2f}; objective {r.objective:,.2f} "
          f"(rounding cost {r.rounding_cost:,.2f}); {r.solves} solve(s), {sum(r.timings.values()) * 1e3:.0f} ms")
    print(f"  {'account':>10} {'type':11} {'symbol':8} {'side':4} {'lot':>14} {'shares':>12} {'value':>12} {'gain':>11} term reason")
    for x in rows:
        gain = "" if x["realized_gain"] is None else f"{x['realized_gain']:,.2f}"
        print(f"  {x['account_id']:>10} {x['account_type']:11} {x['symbol']:8} {x['side']:4} {x['lot_id'] or '':>14} "
              f"{x['shares']:12.4f} {x['value']:12,.2f} {gain:>11} {x['term'] or '':4} {x['reason']}")
    return 0


def add_run_args(r: argparse.ArgumentParser) -> None:
    """Arguments of ``rebalance run`` and ``jobs/rebalance_book.py``."""
    from cluster.plan import DEFAULT_SHARD_WORK

    r.add_argument("--book", required=True, help="book URI: path, file:// or s3://bucket/prefix")
    r.add_argument("--out", required=True, help="where runs go: outputs are written under <out>/<run-id>/")
    r.add_argument("--date", type=dt.date.fromisoformat, default=None, help="trade date (default: the book's as-of date)")
    r.add_argument("--run-id", default=None,
                   help="run id (default: a new one, <date>-<time>-<hex>); an existing id resumes that run, "
                        "skipping its complete shards")
    r.add_argument("--address", default=None,
                   help="Ray cluster to join (else RAY_ADDRESS; with neither, a local Ray is started for the run)")
    r.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    r.add_argument("--solver", default="fast", choices=["fast", "reference"],
                   help="household solver: fast (batched interior point, falling back to the reference where it "
                        "does not converge) or reference (cvxpy + Clarabel)")
    r.add_argument("--shard-work", type=float, default=DEFAULT_SHARD_WORK,
                   help="work per shard, in lots + positions + 40 per household")
    r.add_argument("--max-in-flight", type=int, default=None, help="tasks in flight (default: twice the cluster's CPUs, at least 64)")
    r.add_argument("--json", action="store_true", help="print summary.json instead of the one-screen summary")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    _s3_args(r)


def _json_only_on_stdout(json_out: bool):
    """With --json, whatever the run prints (Ray's forwarded worker and raylet lines: "Task
    Progress.report failed..." under load) goes to stderr, so stdout is the JSON alone."""
    return contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext()


def cmd_run(args) -> int:
    from cluster.driver import RunRequest, run_book

    req = RunRequest(book=args.book, out=args.out, run_id=args.run_id, date=args.date, address=args.address,
                     solver=args.solver, shard_work=args.shard_work, max_in_flight=args.max_in_flight,
                     num_cpus=args.num_cpus, s3=_s3(args))
    with _json_only_on_stdout(args.json):
        outcome = run_book(req, stream=None if args.quiet else sys.stderr)
    print(jsonout.dumps(outcome.summary, indent=2, sort_keys=True) if args.json else outcome.text)
    return 0 if outcome.complete else 3


def add_capacity_args(c: argparse.ArgumentParser) -> None:
    """Arguments of ``rebalance capacity`` and ``jobs/capacity_test.py``."""
    from cluster.plan import DEFAULT_SHARD_WORK

    c.add_argument("--accounts", type=int, required=True, help="accounts in the book")
    c.add_argument("--seed", type=int, default=1, help="the book's random seed")
    c.add_argument("--book", default=None,
                   help="book URI (default data/capacity/book-<accounts>-s<seed>): reused when its book.json has "
                        "the same accounts, seed and accounts per bucket, else generated")
    c.add_argument("--overwrite-book", action="store_true", help="replace another book found at --book")
    c.add_argument("--accounts-per-bucket", type=int, default=2500, help="sets the book's number of buckets")
    c.add_argument("--generate-workers", type=int, default=0, help="processes generating the book (default: one per CPU)")
    c.add_argument("--out", default="data/capacity/runs", help="where runs go (a new run id each time)")
    c.add_argument("--date", type=dt.date.fromisoformat, default=None, help="trade date (default: the book's as-of date)")
    c.add_argument("--address", default=None,
                   help="Ray cluster to join (else RAY_ADDRESS; with neither, a local Ray is started for the run)")
    c.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    c.add_argument("--solver", default=None, help="the job's household solver (default: fast when the job has it, else reference)")
    c.add_argument("--shard-work", type=float, default=DEFAULT_SHARD_WORK,
                   help="work per shard, in lots + positions + 40 per household")
    c.add_argument("--max-in-flight", type=int, default=None, help="tasks in flight (default: twice the cluster's CPUs, at least 64)")
    c.add_argument("--sample", type=int, default=20, help="households per kind solved both ways (0: none)")
    c.add_argument("--sample-mix", type=int, default=100, help="households of the standard mix solved both ways (0: none)")
    c.add_argument("--sample-buckets", type=int, default=2, help="buckets the sample is drawn from")
    c.add_argument("--sample-seed", type=int, default=0, help="seed of the sample")
    c.add_argument("--docs", default="docs",
                   help="folder for capacity/capacity-<accounts>.json and capacity.md (complete runs only)")
    c.add_argument("--no-docs", action="store_true", help="write the figures into the run's folder only")
    c.add_argument("--json", action="store_true", help="print the figures as JSON instead of the one-screen summary")
    c.add_argument("--quiet", action="store_true", help="no progress")
    _s3_args(c)


def cmd_capacity(args) -> int:
    from cluster.capacity import CapacityRequest, format_report, run_capacity

    req = CapacityRequest(accounts=args.accounts, seed=args.seed, book=args.book, overwrite_book=args.overwrite_book,
                          accounts_per_bucket=args.accounts_per_bucket, generate_workers=args.generate_workers,
                          out=args.out, date=args.date, address=args.address, num_cpus=args.num_cpus,
                          solver=args.solver, shard_work=args.shard_work, max_in_flight=args.max_in_flight,
                          s3=_s3(args), per_kind=args.sample, mix=args.sample_mix, sample_buckets=args.sample_buckets,
                          sample_seed=args.sample_seed, docs=None if args.no_docs else args.docs)
    with _json_only_on_stdout(args.json):
        report = run_capacity(req, stream=None if args.quiet else sys.stderr)
    print(jsonout.dumps(report, indent=2, sort_keys=True) if args.json else format_report(report))
    return 0 if report["run"]["complete"] else 3


def cmd_report(args) -> int:
    from cluster.history import write_report

    report, html_uri, json_uri = write_report(args.run, args.since, args.html, args.json_out, s3=_s3(args))
    h = report["headline"]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"
    print(f"report of run {report['run']['run_id']} ({report['run']['date']}), period from {report['run']['since']} "
          f"({len(report['run']['runs_read'])} runs, {len(report['run']['runs_skipped'])} left out)")
    print(f"  taxes saved or deferred: run ${h['taxes_saved_run']:,.0f}, period ${h['taxes_saved_period']:,.0f}; "
          f"fees for the period ${h['fees_period']:,.0f}")
    print(f"  households whose tax value exceeds their fee (period): {pct(h['exceeding_period_by_count'])} by count, "
          f"{pct(h['exceeding_period_by_value'])} by value")
    print(f"  HTML: {html_uri}\n  JSON: {json_uri}")
    return 0


def cmd_review(args) -> int:
    from cluster.history import split_run_uri
    from cluster.layout import RunLayout
    from rebalancer.book import Book, book_fingerprint
    from rebalancer.review import format_review, review_run
    from rebalancer.storage import open_uri

    out, run_id = split_run_uri(args.run)
    run = RunLayout(open_uri(out, _s3(args)), run_id).read_run()
    if run is None:
        raise ValueError(f"{args.run}: no run.json: not a run")
    if book_fingerprint(Book.open(args.book, _s3(args))) != run["book_fingerprint"]:
        raise ValueError(f"run {run_id} was made from another book than {args.book} (book.json differs)")
    rep = review_run(args.run, args.book, s3=_s3(args))
    print(jsonout.dumps(rep, indent=2, sort_keys=True) if args.json else format_review(rep))
    return 0 if rep["ok"] else 1


def cmd_schema(args) -> int:
    from rebalancer.schema import contract_markdown

    print(contract_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rebalance", description="Full-book, tax-aware household rebalancing.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate a synthetic book (DESIGN section 5)")
    g.add_argument("--accounts", type=int, required=True, help="number of accounts")
    g.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    g.add_argument("--out", required=True, help="book URI: path, file:// or s3://bucket/prefix")
    g.add_argument("--as-of", type=dt.date.fromisoformat, default=None, help="book date (a trading day 2006-01..2021-04-21; default the last)")
    g.add_argument("--accounts-per-bucket", type=int, default=2500, help="sets the number of household buckets")
    g.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU)")
    g.add_argument("--overwrite", action="store_true", help="replace a book already at --out")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")
    _s3_args(g)
    g.set_defaults(func=cmd_generate)

    v = sub.add_parser("validate", help="check a book against the data contract and cross-table rules")
    v.add_argument("--book", required=True, help="book URI")
    v.add_argument("--max-per-rule", type=int, default=20, help="problems listed per rule; the rest are counted")
    v.add_argument("--json", action="store_true", help="print problems as JSON")
    _s3_args(v)
    v.set_defaults(func=cmd_validate)

    h = sub.add_parser("household", help="rebalance one household of a book as a run does and print its trades "
                                          "(no outputs written; exit 1 if it is rejected)")
    h.add_argument("--book", default=None, help="book URI (default: the book of --run)")
    h.add_argument("--household", type=int, required=True, help="household id")
    h.add_argument("--run", default=None,
                   help="a run's URI, <out>/<run_id>: take its book, solver, date and settings (flags given win)")
    h.add_argument("--solver", default=None, choices=["fast", "reference"],
                   help="household solver (default: the run's with --run, else the job's default, fast with the "
                        "reference as fallback, as `rebalance run`)")
    h.add_argument("--date", type=dt.date.fromisoformat, default=None,
                   help="run date (default: the run's with --run, else the book's as-of date)")
    h.add_argument("--json", action="store_true", help="print the result as JSON")
    _s3_args(h)
    h.set_defaults(func=cmd_household)

    r = sub.add_parser("run", help="rebalance every household of a book on Ray (exit 3 if shards failed)")
    add_run_args(r)
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("capacity", help="capacity test: generate or reuse a book, run it, report speed, memory "
                                        "and both solvers on a sample (exit 3 if shards failed)")
    add_capacity_args(c)
    c.set_defaults(func=cmd_capacity)

    rp = sub.add_parser("report", help="the run report: tax value vs fees (run and period), tracking error, "
                                       "dispersion by model, trades by reason, rejected accounts; HTML + JSON")
    rp.add_argument("--run", required=True, help="the run's URI, <out>/<run_id> (path, file:// or s3://)")
    rp.add_argument("--since", type=dt.date.fromisoformat, default=None,
                    help="start of the period (default: 1 January of the run's year); earlier complete runs under "
                         "<out> from this date are read")
    rp.add_argument("--html", default=None, help="where to write the HTML (default: <run>/report.html)")
    rp.add_argument("--json-out", default=None, help="where to write the JSON figures (default: <run>/report.json)")
    _s3_args(rp)
    rp.set_defaults(func=cmd_report)

    rv = sub.add_parser("review", help="review a run's orders before sending them: value kept after rounding, "
                                       "worse than holding, dust, under minimums, cash above band, wash-sale "
                                       "losses; writes review.json into the run (exit 1 if a hard rule is broken)")
    rv.add_argument("--book", required=True, help="the book the run was made from (URI)")
    rv.add_argument("--run", required=True, help="the run's URI, <out>/<run_id> (path, file:// or s3://)")
    rv.add_argument("--json", action="store_true", help="print review.json instead of the one-screen review")
    _s3_args(rv)
    rv.set_defaults(func=cmd_review)

    s = sub.add_parser("schema", help="print the data contract as Markdown")
    s.add_argument("--markdown", action="store_true", help="(the only format)")
    s.set_defaults(func=cmd_schema)

    from jobs.scenario import add_parser as add_scenario_parser  # not at the top: jobs.scenario imports jobs.cli
    add_scenario_parser(sub)
    from jobs.size import add_parser as add_size_parser
    add_size_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RebalancerError, ValueError, OSError) as e:
        print(f"rebalance {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
