"""The Ray side of a shard: the remote task and the progress actor the driver polls."""
from __future__ import annotations

import time

import ray

from .shard import ShardInputError, ShardJob, run_shard

__all__ = ["Progress", "shard_task", "TASK_RETRIES"]

# Retries of a task whose worker or node died (system failures). A retried task rewrites the
# same files, so a retry can never double a trade.
TASK_RETRIES = 3


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Progress:
    """Households done per shard, reported by tasks as they go. Per-shard counts are *set*,
    not added, so a retried task does not count its households twice."""

    def __init__(self):
        self.done: dict[int, int] = {}

    def report(self, shard_id: int, done: int) -> None:
        self.done[shard_id] = done

    def total(self) -> int:
        return sum(self.done.values())


def _reporter(progress, shard_id: int, every: float = 0.5):
    last = [0.0]

    def report(done: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            progress.report.remote(shard_id, done)  # fire and forget
    return report


@ray.remote(num_cpus=1, max_retries=TASK_RETRIES)
def shard_task(job: ShardJob, progress=None) -> dict:
    """Run one shard. Returns its completion record, or ``{"failed": ...}`` when its input
    cannot be read (a permanent error: retrying would not help)."""
    report = _reporter(progress, job.shard.shard_id) if progress is not None else None
    try:
        record = run_shard(job, report)
    except ShardInputError as e:
        return {"shard_id": job.shard.shard_id, "failed": str(e), "file": e.file}
    if progress is not None:
        progress.report.remote(job.shard.shard_id, record["counts"]["households_in"])
    return record
