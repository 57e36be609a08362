"""Reads for the metrics and the health check: how long each queue's runnable jobs have waited,
the file's size and whether SQLite finds it sound."""

from __future__ import annotations

from ..sql import QUERIES as Q
from .base import StoreBase, fresh

#: What the stats table counts per minute and queue: a job published, completed, failed (its
#: retry waits), dead, recovered (its lease ran out), revived (dlq retry) or cancelled.
STATS_EVENTS: tuple[str, ...] = ("published", "completed", "failed", "dead", "recovered", "revived", "cancelled")


class MetricReads(StoreBase):
    """What `queuectl metrics`, `queuectl health` and the dashboard's /metrics and /healthz read."""

    @fresh
    def waiting_since(self) -> dict[str, float]:
        """Per queue that has a job a claim could take now (control queues left out), since when
        the longest-waiting of them has been runnable (epoch seconds)."""
        rows = self.db.connection().execute(Q["waiting_since"], {"now": self.clock()})
        return {str(queue): float(since) for queue, since in rows}

    def file_sizes(self) -> tuple[int, int]:
        """(bytes of the database file, bytes of its WAL)."""
        return self.db.file_size(), self.db.wal_size()

    def quick_check(self) -> list[str]:
        """The problems SQLite's quick check finds in the file (none when it is sound); opens
        the file (and creates it: callers that must not create it look first)."""
        return self.db.quick_check()
