"""The run's ``summary.json``, its ``manifest.json``, and the one-screen summary a desk reads."""
from __future__ import annotations

from rebalancer.book import BookInfo
from rebalancer.jsonout import strict
from rebalancer.totals import headline, merge_totals

from .plan import Plan, Piece

__all__ = ["build_summary", "build_manifest", "format_summary", "TASK_STAGES"]

TASK_STAGES = ("read", "split", "build", "solve", "postprocess", "write")


def _labels(pieces: tuple[Piece, ...]) -> str:
    return ", ".join(p.label() for p in pieces)


def build_summary(run: dict, plan: Plan, info: BookInfo, records: dict[int, dict], ran_now: set[int],
                  failed: dict[int, str], timings: dict, cpus: float, attempts: dict[int, int] | None = None) -> dict:
    """Aggregate the complete shards' records (in shard order) into the run's summary.

    ``records``: completion records of every complete shard; ``ran_now``: the ids of those this
    attempt ran (the others were complete before it); ``failed``: shard id -> error;
    ``attempts``: shard id -> task starts seen by the progress actor (more than one: Ray retried
    the task after a lost worker or node, or a storage outage).
    """
    ordered = [records[k] for k in sorted(records)]
    totals = merge_totals(r["totals"] for r in ordered)
    now = [records[k] for k in sorted(ran_now) if k in records]
    task = {s: sum(r["timings"].get(s, 0.0) for r in now) for s in TASK_STAGES + ("total",)}
    fan_out = timings.get("fan_out", 0.0)
    slot_seconds = fan_out * cpus
    hh_now = sum(r["totals"]["households"]["rebalanced"] + r["totals"]["households"]["rejected"] for r in now)
    shares = {}
    if slot_seconds > 0:
        shares = {
            "io": (task["read"] + task["write"]) / slot_seconds,
            "solving": (task["split"] + task["build"] + task["solve"] + task["postprocess"]) / slot_seconds,
            "other_in_task": (task["total"] - sum(task[s] for s in TASK_STAGES)) / slot_seconds,
            "ray_overhead_and_idle": max(0.0, 1.0 - task["total"] / slot_seconds),
        }
    shards = {s.shard_id: s for s in plan.shards}
    complete = not failed and len(records) == len(plan.shards)
    summary = {
        "run_id": run["run_id"],
        "complete": complete,
        "book": run["book"],
        "book_as_of": info.as_of.isoformat(),
        "date": run["date"],
        "solver": run["solver"],
        "settings": run["settings"],
        "shards": {
            "planned": len(plan.shards),
            "complete": len(records),
            "ran_now": len(now),
            "complete_before": len(records) - len(now),
            "failed": [{"shard_id": k, "pieces": _labels(shards[k].pieces), "error": failed[k]} for k in sorted(failed)],
            "not_run": sorted(set(shards) - set(records) - set(failed)),
        },
        "counts": {
            "households_in_book_json": info.total("households"),
            "accounts_in_book_json": info.total("accounts"),
            "households_in": sum(r["counts"]["households_in"] for r in ordered),
            "accounts_in": sum(r["counts"]["accounts_in"] for r in ordered),
            "accounts_out": sum(r["counts"]["accounts_out"] for r in ordered),
            "lots": sum(r["counts"]["lots"] for r in ordered),
        },
        "totals": totals,
        "headline": headline(totals),
        "rejection_examples": [e for r in ordered for e in r["rejection_examples"]][:10],
        "faults": {
            "task_retries": sum(n - 1 for n in (attempts or {}).values() if n > 1),
            "retried_shards": sorted(k for k, n in (attempts or {}).items() if n > 1),
            "storage_retries": sum(r.get("storage_retries", 0) for r in now),
        },
        "timings": {
            **timings,
            "cpus": cpus,
            "tasks": task,
            "shares": shares,
            "households_per_second": hh_now / fan_out if fan_out > 0 else None,
        },
    }
    return strict(summary)  # JSON has no NaN or infinity: null


def build_manifest(run: dict, plan: Plan, info: BookInfo, records: dict[int, dict]) -> dict:
    """The run's manifest: per shard, counts in and out and its files with their hashes.
    Written only when every shard is complete; it has no timings, so a re-run that changes
    nothing rewrites it byte for byte."""
    shards = []
    for s in plan.shards:
        r = records[s.shard_id]
        shards.append({"shard_id": s.shard_id, "pieces": [p.label() for p in s.pieces],
                       "accounts_in": r["counts"]["accounts_in"], "accounts_out": r["counts"]["accounts_out"],
                       "households_in": r["counts"]["households_in"], "files": r["files"]})
    t = merge_totals(records[k]["totals"] for k in sorted(records))
    accounts_in = sum(x["accounts_in"] for x in shards)
    return {
        "run_id": run["run_id"], "complete": True, "book": run["book"], "book_fingerprint": run["book_fingerprint"],
        "date": run["date"], "solver": run["solver"], "plan_fingerprint": plan.fingerprint(),
        "accounts_in": accounts_in, "accounts_out": sum(x["accounts_out"] for x in shards),
        "accounts_rebalanced": t["accounts"]["rebalanced"], "accounts_rejected": t["accounts"]["rejected"],
        "accounts_in_book_json": info.total("accounts"),
        "households_rebalanced": t["households"]["rebalanced"], "households_rejected": t["households"]["rejected"],
        "trades": t["trades"]["rows"],
        "shards": shards,
    }


def _usd(x: float | None) -> str:
    if x is None:
        return "n/a"
    a = abs(x)
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{'-' if x < 0 else ''}${a / div:,.2f}{unit}"
    return f"{'-' if x < 0 else ''}${a:,.0f}"


def _pct(x: float | None, d: int = 2) -> str:
    return "n/a" if x is None else f"{x * 100:.{d}f}%"


def format_summary(s: dict, run_uri: str) -> str:
    """One screen of text: what the desk reads first."""
    t, h, c = s["totals"], s["headline"], s["counts"]
    hh, acc, usd, tr, sv = t["households"], t["accounts"], t["usd"], t["trades"], t["solver"]
    sh, tm = s["shards"], s["timings"]
    state = "COMPLETE" if s["complete"] else "INCOMPLETE"
    lines = [
        f"Run {s['run_id']}  book {s['book']} (as of {s['book_as_of']})  trade date {s['date']}  solver {s['solver']}",
        f"{state}: {sh['complete']}/{sh['planned']} shards"
        + (f" ({sh['complete_before']} complete from an earlier attempt)" if sh["complete_before"] else "")
        + (f"; {sh['ran_now']} ran in {tm.get('wall', 0):,.1f} s on {tm.get('cpus', 0):g} CPUs"
           + (f", {tm['households_per_second']:,.1f} households/s" if tm.get("households_per_second") else "")
           if sh["ran_now"] or sh["failed"] else "; nothing left to run"),
    ]
    for f in sh["failed"]:
        lines.append(f"  FAILED shard {f['shard_id']} ({f['pieces']}): {f['error']}")
    if sh["not_run"]:
        lines.append(f"  not run: shards {sh['not_run']}")
    fl = s.get("faults") or {}
    if fl.get("task_retries") or fl.get("storage_retries"):
        lines.append(f"  faults ridden out: {fl['task_retries']} task retries (shards {fl['retried_shards']}), "
                     f"{fl['storage_retries']} storage operations retried")
    st = hh["status"]
    lines += [
        "",
        f"Households {c['households_in']:,} read: {hh['rebalanced']:,} rebalanced, {hh['rejected']:,} rejected; "
        f"{hh['with_trades']:,} with trades",
        f"           {st['optimal']:,} optimal, {st['optimal_inaccurate']:,} inaccurate, "
        f"{st['budget_exceeded']:,} over tax budget ({_usd(usd['budget_overrun'])} over)",
        f"Solver     {s['solver']}: {sv['solves']:,} solves"
        + (f"; fell back to the reference for {sv['fallback_solves']:,} of them "
           f"({sv['fallback_households']:,} households)" if s["solver"] == "fast" else ""),
        f"Accounts   {c['accounts_in']:,} read = {acc['rebalanced']:,} rebalanced + {acc['rejected']:,} rejected"
        f" ({', '.join(f'{v} {k}' for k, v in acc['rejected_by_stage'].items() if v) or 'none'}); "
        f"{acc['traded']:,} traded",
        f"Trades     {tr['rows']:,} ({tr['buys']:,} buys, {tr['sells']:,} lot sells): bought {_usd(usd['bought'])}, "
        f"sold {_usd(usd['sold'])}; turnover {_pct(h['turnover'])} of {_usd(h['value_rebalanced'])}",
        f"Realized   ST {_usd(usd['realized_st_gain'])} gains, {_usd(usd['realized_st_loss'])} losses; "
        f"LT {_usd(usd['realized_lt_gain'])} gains, {_usd(usd['realized_lt_loss'])} losses; "
        f"disallowed (wash sales) {_usd(usd['disallowed_loss'])}: deferred into basis {_usd(usd['loss_deferred'])}, "
        f"destroyed by IRA replacements {_usd(usd['loss_destroyed'])}",
        f"Harvested  {_usd(h['losses_harvested'])} of losses = {_pct(h['losses_harvested_share_of_value'])} of value",
        f"Tax        {_usd(usd['tax'])} vs naive rebalance {_usd(usd['naive_tax'])}: saved or deferred "
        f"{_usd(usd['taxes_saved'])} (harvest {_usd(usd['harvest_value'])}, deferral {_usd(usd['deferral_value'])}, "
        f"waits {_usd(usd['wait_value'])}); annual fees {_usd(usd['fee'])}",
        f"Tracking   error, value-weighted: {_pct(h['te_before_value_weighted'])} before -> "
        f"{_pct(h['te_after_value_weighted'])} after (naive rebalance {_pct(h['te_naive_value_weighted'])}); "
        f"median household under {_pct(h['te_before_median_bin'])} -> under {_pct(h['te_after_median_bin'])}",
    ]
    task = tm.get("tasks", {})
    shares = tm.get("shares") or {}
    if task.get("total"):
        lines.append(
            f"Time       tasks: read {task['read']:,.1f} s, solve {task['split'] + task['build'] + task['solve'] + task['postprocess']:,.1f} s, "
            f"write {task['write']:,.1f} s; shares of CPU time: I/O {_pct(shares.get('io'), 1)}, "
            f"solving {_pct(shares.get('solving'), 1)}, Ray overhead and idle {_pct(shares.get('ray_overhead_and_idle'), 1)}")
    if s["rejection_examples"]:
        lines.append("Rejected   e.g.")
        for e in s["rejection_examples"][:3]:
            reason = e["reason"] if len(e["reason"]) <= 110 else e["reason"][:107] + "..."
            lines.append(f"           account {e['account_id']} (household {e['household_id']}, {e['stage']}): {reason}")
    lines.append(f"Outputs    {run_uri}/  trades/ households/ accounts/ rejected/ summary.json"
                 + (" manifest.json" if s["complete"] else "  (no manifest: re-run with the same --run-id to finish)"))
    return "\n".join(lines)
