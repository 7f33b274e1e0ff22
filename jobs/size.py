"""``rebalance size``: how many workers a book needs, from a measured capacity test.

- ``--accounts N --minutes T``: the fewest workers of ``--cpus-per-worker`` CPUs that run a book
  of N accounts in T minutes (or why none do);
- ``--accounts N --workers W``: the expected minutes on W workers;

both from ``--capacity`` (default ``docs/capacity/capacity-10000.json``), with the fixed
overheads as options (assumptions; see docs/sizing.md). Lists (``--accounts 50000,350000
--minutes 5,10 --cpus-per-worker 8,16``) print a Markdown table. Also prints the worker pod's
memory and the RayJob settings (``maxReplicas``, ``--max-in-flight``) that go with the answer.
Nothing here starts Ray.
"""
from __future__ import annotations

import argparse

from cluster.plan import DEFAULT_SHARD_WORK
from cluster.sizing import (GIB, Estimate, Overheads, Sizing, Throughput, estimate, head_pod_memory,
                            worker_pod_memory, workers_for)
from rebalancer import jsonout

__all__ = ["add_parser", "DEFAULT_CAPACITY"]

DEFAULT_CAPACITY = "docs/capacity/capacity-10000.json"


def _list(kind):
    def parse(text: str):
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected positive {kind.__name__}s, got {text!r}")
        return values
    return parse


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accounts", type=_list(int), required=True, help="accounts in the book (a comma-separated list for a table)")
    p.add_argument("--minutes", type=_list(float), default=None, help="target wall time: the workers needed")
    p.add_argument("--workers", type=_list(int), default=None, help="workers: the expected wall time")
    p.add_argument("--cpus-per-worker", type=_list(int), default=[16], help="CPUs (Ray task slots) per worker pod or node (default 16)")
    p.add_argument("--capacity", default=DEFAULT_CAPACITY, help=f"measured capacity JSON (default {DEFAULT_CAPACITY})")
    p.add_argument("--shard-work", type=float, default=DEFAULT_SHARD_WORK, help="the run's --shard-work (sets the number of shards)")
    g = p.add_argument_group("fixed overheads in seconds (assumptions; 0 for a cluster already up)")
    d = Overheads()
    g.add_argument("--cluster-start-seconds", type=float, default=d.cluster_start_seconds,
                   help=f"head pod up and the job submitted (default {d.cluster_start_seconds:g})")
    g.add_argument("--scale-up-seconds", type=float, default=d.scale_up_seconds,
                   help=f"workers from zero: nodes, image pull, Ray joined (default {d.scale_up_seconds:g})")
    g.add_argument("--worker-start-seconds", type=float, default=d.worker_start_seconds,
                   help=f"a worker process before its first shard (default {d.worker_start_seconds:g})")
    g.add_argument("--driver-seconds", type=float, default=None, help="driver's fixed time (default: the measured one)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def _min(x: float) -> str:
    return f"{x:.1f} min"


def _measured(tp: Throughput, ov: Overheads) -> list[str]:
    driver = tp.driver_seconds if ov.driver_seconds is None else ov.driver_seconds
    return [f"sizing from {tp.source} (measured {tp.date}, {tp.solver} solver, {tp.accounts:,} accounts on "
            f"{tp.cpus:g} CPUs of {tp.cpu_model or 'an unnamed CPU'}):",
            f"  measured: {tp.task_seconds_per_household * 1e3:.1f} task-ms per household, "
            f"{tp.households_per_account:.3f} households per account, CPUs busy {tp.efficiency:.1%} of the fan-out, "
            f"task process peak {tp.worker_peak_rss_bytes / 2**20:,.0f} MiB, driver {driver:.1f} s"
            + (" (given)" if ov.driver_seconds is not None else ""),
            f"  assumed:  cluster start {ov.cluster_start_seconds:g} s, scale-up from zero {ov.scale_up_seconds:g} s, "
            f"worker process start {ov.worker_start_seconds:g} s"]


def _breakdown(e: Estimate) -> str:
    return (f"{_min(e.minutes)} = {_min(e.fixed_seconds / 60)} fixed + {e.waves} wave(s) of shards "
            f"{_min(e.fan_out_seconds / 60)}")


def _rayjob(workers: int, cpus: int) -> str:
    return (f"  RayJob: maxReplicas >= {workers}, entrypoint --max-in-flight {2 * workers * cpus} "
            "(2 x workers x CPUs: the autoscaler sees the whole demand at once)")


def _pod(tp: Throughput, cpus: int) -> str:
    m = worker_pod_memory(tp, cpus)
    return (f"  worker pod: {cpus} CPUs, memory {m.quantity} ({cpus} x {m.process_bytes / 2**20:,.0f} MiB measured "
            f"task peak + {m.ray_bytes / GIB:g} GiB Ray, +{m.headroom:.0%}, + {m.object_store_bytes / GIB:g} GiB "
            f"object store = {m.required_bytes / GIB:.2f} GiB); head pod memory {head_pod_memory(tp).quantity}")


def _text_one(tp: Throughput, ov: Overheads, sizings: list[Sizing], estimates: list[Estimate]) -> str:
    first = (sizings or estimates)[0]
    e0 = first.estimate if isinstance(first, Sizing) else first
    lines = _measured(tp, ov)
    lines.append(f"{e0.accounts:,} accounts: ~{e0.households:,} households, ~{e0.shards:,} shards of ~{e0.shard_seconds:.1f} s, "
                 f"{e0.task_seconds:,.0f} task-s ({e0.task_seconds / 60:,.1f} CPU-min)")
    for s in sizings:
        e = s.estimate
        if s.feasible:
            lines.append(f"  in {s.target_minutes:g} min with {e.cpus_per_worker}-CPU workers: {e.workers} worker(s) "
                         f"({e.cpus} CPUs): {_breakdown(e)}")
        else:
            lines.append(f"  in {s.target_minutes:g} min with {e.cpus_per_worker}-CPU workers: {s.reason}")
        lines.append(_pod(tp, e.cpus_per_worker))
        if s.feasible:
            lines.append(_rayjob(e.workers, e.cpus_per_worker))
    for e in estimates:
        lines.append(f"  on {e.workers} worker(s) of {e.cpus_per_worker} CPUs ({e.cpus} CPUs): {_breakdown(e)}"
                     + (f"; only {e.useful_workers} can be busy ({e.shards:,} shards)" if e.idle_workers else ""))
    return "\n".join(lines)


def _table(tp: Throughput, ov: Overheads, args, sizings: list[Sizing], estimates: list[Estimate]) -> str:
    cpus = args.cpus_per_worker
    out = _measured(tp, ov) + [""]
    if sizings:
        by = {(s.estimate.accounts, s.target_minutes, s.estimate.cpus_per_worker): s for s in sizings}
        out += ["| accounts | shards | minutes | " + " | ".join(f"{c}-CPU workers" for c in cpus) + " |",
                "|---:|---:|---:|" + "---|" * len(cpus)]
        for n in args.accounts:
            for t in args.minutes:
                cells = []
                for c in cpus:
                    s = by[(n, t, c)]
                    cells.append(f"{s.workers} ({_min(s.estimate.minutes)})" if s.feasible
                                 else f"not reachable (best {_min(s.estimate.minutes)} with {s.workers})")
                out.append(f"| {n:,} | {by[(n, t, cpus[0])].estimate.shards:,} | {t:g} | " + " | ".join(cells) + " |")
        out.append("")
    if estimates:
        by = {(e.accounts, e.workers, e.cpus_per_worker): e for e in estimates}
        out += ["| accounts | workers | " + " | ".join(f"{c}-CPU workers" for c in cpus) + " |",
                "|---:|---:|" + "---|" * len(cpus)]
        for n in args.accounts:
            for w in args.workers:
                cells = [_min(by[(n, w, c)].minutes) + (" (idle workers)" if by[(n, w, c)].idle_workers else "")
                         for c in cpus]
                out.append(f"| {n:,} | {w} | " + " | ".join(cells) + " |")
        out.append("")
    out.append("worker pod memory: " + ", ".join(f"{c} CPUs {worker_pod_memory(tp, c).quantity}" for c in cpus)
               + f"; head pod {head_pod_memory(tp).quantity}")
    return "\n".join(out)


def cmd_size(args) -> int:
    if not args.minutes and not args.workers:
        raise ValueError("give --minutes (workers needed) and/or --workers (expected minutes)")
    tp = Throughput.load(args.capacity)
    ov = Overheads(cluster_start_seconds=args.cluster_start_seconds, scale_up_seconds=args.scale_up_seconds,
                   worker_start_seconds=args.worker_start_seconds, driver_seconds=args.driver_seconds)
    sizings = [workers_for(tp, n, t, c, ov, args.shard_work)
               for n in args.accounts for t in (args.minutes or []) for c in args.cpus_per_worker]
    estimates = [estimate(tp, n, w, c, ov, args.shard_work)
                 for n in args.accounts for w in (args.workers or []) for c in args.cpus_per_worker]
    if args.json:
        print(jsonout.dumps({
            "capacity": {"source": tp.source, "created": tp.created, "solver": tp.solver, "cpus": tp.cpus,
                         "accounts": tp.accounts, "task_seconds_per_household": tp.task_seconds_per_household,
                         "households_per_account": tp.households_per_account, "efficiency": tp.efficiency,
                         "driver_seconds": tp.driver_seconds, "worker_peak_rss_bytes": tp.worker_peak_rss_bytes,
                         "driver_peak_rss_bytes": tp.driver_peak_rss_bytes},
            "overheads": {"cluster_start_seconds": ov.cluster_start_seconds, "scale_up_seconds": ov.scale_up_seconds,
                          "worker_start_seconds": ov.worker_start_seconds, "driver_seconds": ov.driver_seconds,
                          "total_seconds": ov.total(tp)},
            "shard_work": args.shard_work,
            "sizings": [s.to_json() for s in sizings],
            "estimates": [e.to_json() for e in estimates],
            "worker_pods": {str(c): worker_pod_memory(tp, c).to_json() for c in args.cpus_per_worker},
            "head_pod": head_pod_memory(tp).to_json(),
        }, indent=2))
    elif max(len(args.accounts), len(args.cpus_per_worker), len(args.minutes or []), len(args.workers or [])) == 1:
        print(_text_one(tp, ov, sizings, estimates))
    else:
        print(_table(tp, ov, args, sizings, estimates))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``size`` to the ``rebalance`` command's subparsers."""
    s = subparsers.add_parser("size", help="workers needed for a book in a time, or the time on some workers, "
                                           "from a measured capacity test (no Ray)")
    _args(s)
    s.set_defaults(func=cmd_size)
    return s
