"""Entrypoint: crisis scenarios (``rebalance scenario ...``, or ``python jobs/scenario.py ...``,
which is what ``ray job submit`` runs).

- ``crisis --book URI --out URI --shock equity=-30%`` (or ``--shock 2020-02-19..2020-03-23``):
  reprice the book by the shock into a new book, run the whole of it on Ray, report losses
  harvested, trades, tracking error and time (``<out>/<scenario id>/scenario.json``);
- ``month --book URI --window 2020-02-19..2020-03-23``: a seeded sample of households
  rebalanced every trading day of the window (in-process, no Ray), against one run on its
  last day.

Exit status as ``rebalance run``: 0 complete, 2 bad usage or an unreadable input, 3 a run
finished incomplete (re-run with the same ``--run-id``). See docs/scenario.md.
"""
from __future__ import annotations

import os
import sys

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # as jobs/cli.py: one BLAS thread
    os.environ.setdefault(_var, "1")

if __package__ in (None, ""):  # run as a script: make the project importable without installing it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402

from rebalancer import jsonout  # noqa: E402
from rebalancer.errors import RebalancerError  # noqa: E402

# jobs.cli's S3 helpers are imported where used: jobs/cli.py imports this module to add the
# subcommand, and a module-level import back would be circular.

__all__ = ["add_parser", "main"]


def _crisis_args(c: argparse.ArgumentParser) -> None:
    from cluster.plan import DEFAULT_SHARD_WORK
    from jobs.cli import _s3_args

    c.add_argument("--book", required=True, help="book URI: path, file:// or s3://bucket/prefix (only read)")
    c.add_argument("--out", required=True,
                   help="where scenarios go: <out>/<run-id>/ holds the repriced book, the run(s) and scenario.json")
    c.add_argument("--shock", required=True,
                   help="equity=-30%% (the benchmark index falls 30%%, every security by its beta) or START..END "
                        "(prices as they moved between two closes, e.g. 2020-02-19..2020-03-23; the book must be "
                        "as of START)")
    c.add_argument("--benchmark", default="SP500", help="index of the book's index_constituents that is 'equity' "
                                                        "(default SP500)")
    c.add_argument("--baseline", action="store_true", help="also run the input book unshocked, for comparison")
    c.add_argument("--skip-validate", action="store_true", help="do not validate the repriced book before running it")
    c.add_argument("--run-id", default=None,
                   help="scenario id (default: crisis-<date>-<time>-<hex>); an existing id resumes that scenario")
    c.add_argument("--address", default=None,
                   help="Ray cluster to join (else RAY_ADDRESS; with neither, a local Ray is started for the runs)")
    c.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    c.add_argument("--solver", default="fast", choices=["fast", "reference"],
                   help="household solver: fast (batched interior point, reference as fallback) or reference")
    c.add_argument("--shard-work", type=float, default=DEFAULT_SHARD_WORK,
                   help="work per shard, in lots + positions + 40 per household")
    c.add_argument("--max-in-flight", type=int, default=None, help="tasks in flight (default: twice the cluster's CPUs)")
    c.add_argument("--json", action="store_true", help="print scenario.json instead of the one-screen summary")
    c.add_argument("--quiet", action="store_true", help="no progress")
    _s3_args(c)


def _month_args(m: argparse.ArgumentParser) -> None:
    from jobs.cli import _s3_args

    m.add_argument("--book", required=True, help="book URI, as of the window's start (only read)")
    m.add_argument("--window", required=True, help="START..END, e.g. 2020-02-19..2020-03-23")
    m.add_argument("--households", type=int, default=200, help="households in the sample (default 200)")
    m.add_argument("--seed", type=int, default=0, help="seed of the sample")
    m.add_argument("--sample-buckets", type=int, default=4, help="household buckets the sample is drawn from")
    m.add_argument("--only", choices=["all", "taxable", "direct"], default="all",
                   help="households to sample: all, with a taxable account, or with a direct-indexed account")
    m.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU, at most 8)")
    m.add_argument("--solver", default="fast", choices=["fast", "reference"], help="household solver")
    m.add_argument("--benchmark", default="SP500", help="benchmark index (for delisted stocks' factor-implied returns)")
    m.add_argument("--out", default=None, help="if given, the report goes to <out>/<run-id>/month.json")
    m.add_argument("--run-id", default=None, help="study id (default: month-<start>-<end>-<time>-<hex>)")
    m.add_argument("--json", action="store_true", help="print the report as JSON instead of the one-screen summary")
    m.add_argument("--quiet", action="store_true", help="no progress")
    _s3_args(m)


def cmd_crisis(args) -> int:
    from cluster.scenario import CrisisRequest, run_crisis
    from jobs.cli import _s3

    req = CrisisRequest(book=args.book, out=args.out, shock=args.shock, benchmark=args.benchmark,
                        scenario_id=args.run_id, baseline=args.baseline, validate=not args.skip_validate,
                        address=args.address, num_cpus=args.num_cpus, solver=args.solver, shard_work=args.shard_work,
                        max_in_flight=args.max_in_flight, s3=_s3(args))
    outcome = run_crisis(req, stream=None if args.quiet else sys.stderr)
    print(jsonout.dumps(outcome.report, indent=2, sort_keys=True) if args.json else outcome.text)
    return 0 if outcome.complete else 3


def cmd_month(args) -> int:
    from cluster.layout import new_run_id, validate_run_id
    from jobs.cli import _s3
    from rebalancer.scenario import MonthRequest, ScenarioError, WindowShock, format_month, parse_shock, run_month

    window = parse_shock(args.window)
    if not isinstance(window, WindowShock):
        raise ScenarioError(f"--window needs START..END (e.g. 2020-02-19..2020-03-23), got {args.window!r}")
    study_id = args.run_id
    if study_id is not None:
        validate_run_id(study_id)
    elif args.out:
        study_id = f"month-{window.start}-{new_run_id(window.end)}"
    workers = args.workers or min(os.cpu_count() or 1, 8)
    req = MonthRequest(book=args.book, window=args.window, households=args.households, seed=args.seed,
                       sample_buckets=args.sample_buckets, only=args.only, workers=workers, solver=args.solver,
                       benchmark=args.benchmark, out=args.out, study_id=study_id, s3=_s3(args))
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    report = run_month(req, log=log)
    print(jsonout.dumps(report, indent=2, sort_keys=True) if args.json else format_month(report))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``scenario`` (with ``crisis`` and ``month``) to the ``rebalance`` command's subparsers."""
    s = subparsers.add_parser("scenario", help="crisis scenarios: reprice a book by a shock and run it (crisis); "
                                               "a month of daily harvesting on a sample (month)")
    sub = s.add_subparsers(dest="scenario", required=True)
    c = sub.add_parser("crisis", help="reprice the book by a market shock, run all of it on Ray, report the harvest "
                                      "(exit 3 if shards failed)")
    _crisis_args(c)
    c.set_defaults(func=cmd_crisis)
    m = sub.add_parser("month", help="a month of daily harvesting on a sample of households, vs one run at the end "
                                     "(in-process, no Ray)")
    _month_args(m)
    m.set_defaults(func=cmd_month)
    return s


def main(argv: list[str] | None = None) -> int:
    """``python jobs/scenario.py crisis ...`` / ``month ...``: the ``rebalance scenario`` command."""
    p = argparse.ArgumentParser(prog="rebalance", description="Crisis scenarios.")
    top = p.add_subparsers(dest="command", required=True)
    add_parser(top)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(["scenario", *argv])
    try:
        return args.func(args)
    except (RebalancerError, ValueError, OSError) as e:
        print(f"rebalance scenario {args.scenario}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
