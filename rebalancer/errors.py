"""The project's small error hierarchy.

Every error about input data names the table, the key (which row) and the field, so a desk can
find the bad record; solver failures (later) carry the household and the solver status.
"""
from __future__ import annotations


class RebalancerError(Exception):
    """Base class of every error this package raises on purpose."""


class BookDataError(RebalancerError):
    """A book's data breaks the data contract.

    Parameters
    ----------
    table : name of the table (``"lots"``, ``"accounts"``, ...).
    key : the row's key, e.g. ``"lot_id=17"`` or ``"account_id=3, security_id=9"``.
    field : the offending column (or ``"*"`` for a whole-row problem).
    message : what is wrong, with the bad value where useful.
    """

    def __init__(self, table: str, key: str, field: str, message: str):
        self.table, self.key, self.field, self.message = table, key, field, message
        super().__init__(f"{table}[{key}].{field}: {message}")


class BookLayoutError(RebalancerError):
    """A book's files are missing, unreadable or not where the layout puts them."""


class StorageError(RebalancerError):
    """An object-storage URI could not be resolved or accessed."""


class StorageUnavailableError(StorageError):
    """Object storage kept failing with transient errors (unreachable, 5xx, throttling) until
    the retry budget ran out. The operation may succeed later: a task that raises it is retried,
    and a run whose shards failed with it finishes when re-run with the same run id."""


class OptimizationError(RebalancerError):
    """A household problem could not be solved (infeasible, numerical failure)."""


class RunError(RebalancerError):
    """A run cannot start or resume: a bad run id, or a run id already used for other inputs."""
