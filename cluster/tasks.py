"""The Ray side of a shard: the remote task and the progress actor the driver polls.

Fault tolerance:
- a task whose worker process or node dies is retried by Ray (``max_retries``), on another
  node if its node is gone; a retried task rewrites the same files with the same bytes, so a
  retry can never double a trade;
- a task that raises :class:`~rebalancer.errors.StorageUnavailableError` (object storage still
  unreachable after the storage layer's own backoff) is retried the same way
  (``retry_exceptions``); once the retries are spent the shard is reported failed with that
  error, and re-running the run id finishes it;
- a permanent input error (a shard file missing or malformed) is not retried: the task returns
  ``{"failed": ...}`` naming the file.
"""
from __future__ import annotations

import time

import ray

from rebalancer.errors import StorageUnavailableError

from .shard import ShardInputError, ShardJob, run_shard

__all__ = ["Progress", "shard_task", "TASK_RETRIES"]

# Retries of a task after a system failure (worker or node lost) or a storage outage.
TASK_RETRIES = 3


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Progress:
    """Households done per shard, reported by tasks as they go, and task starts per shard (a
    start beyond the first is a retry). Per-shard counts are *set*, not added, so a retried
    task does not count its households twice. If the actor is restarted its counts start
    again from zero: progress is for the bar, never for the outputs."""

    def __init__(self):
        self.done: dict[int, int] = {}
        self.starts: dict[int, int] = {}

    def start(self, shard_id: int) -> None:
        self.starts[shard_id] = self.starts.get(shard_id, 0) + 1

    def report(self, shard_id: int, done: int) -> None:
        self.done[shard_id] = done

    def total(self) -> int:
        return sum(self.done.values())

    def attempts(self) -> dict[int, int]:
        return dict(self.starts)


def _reporter(progress, shard_id: int, every: float = 0.5):
    last = [0.0]

    def report(done: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            progress.report.remote(shard_id, done)  # fire and forget
    return report


@ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=[StorageUnavailableError])
def shard_task(job: ShardJob, progress=None) -> dict:
    """Run one shard. Returns its completion record, or ``{"failed": ...}`` when its input
    cannot be read (a permanent error: retrying would not help)."""
    if progress is not None:
        progress.start.remote(job.shard.shard_id)
    report = _reporter(progress, job.shard.shard_id) if progress is not None else None
    try:
        record = run_shard(job, report)
    except ShardInputError as e:
        return {"shard_id": job.shard.shard_id, "failed": str(e), "file": e.file}
    if progress is not None:
        progress.report.remote(job.shard.shard_id, record["counts"]["households_in"])
    return record
