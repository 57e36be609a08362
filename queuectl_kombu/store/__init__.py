"""JobStore: every statement about jobs, queues, routes and config against one queuectl file,
one method per verb, every job state change. Its parts, by what they hold:

- jobs.py: publish, claim, ack, requeue, fail, cancel, the dead-letter queue (every state change);
- reading.py: one job, lists, counts, schedules;
- topology.py: queues (pause and resume), exchanges, bindings, consumers;
- housekeeping.py: leases renewed and recovered, completed jobs pruned, old stats folded;
- metrics.py: reads for the metrics and the health check;
- diagnosis.py: the doctor's reads (retention, recent events, write lock, PostgreSQL's relations);
- transfer.py: a whole queue read out of one database and written into another (copy);
- config.py: the config table; base.py: the database, the clock, commits and the WAL.
"""

from __future__ import annotations

from typing import Any

from .diagnosis import DiagnosisReads, RelationSize, TableActivity
from .housekeeping import Housekeeping
from .jobs import JobChanges, NewJob
from .metrics import STATS_EVENTS, MetricReads
from .reading import JobReads
from .topology import CONSUMER_HEARTBEAT, CONSUMER_TIMEOUT, QueueInfo, Topology
from .transfer import QueueRows, Transfer, Written

__all__ = ["CONSUMER_HEARTBEAT", "CONSUMER_TIMEOUT", "STATS_EVENTS", "JobStore", "NewJob", "QueueInfo", "QueueRows",
           "RelationSize", "TableActivity", "Written"]


class JobStore(JobChanges, Housekeeping, JobReads, MetricReads, DiagnosisReads, Topology, Transfer):
    """Every statement against one queuectl database goes through here (results: ResultStore)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.db.engine == "sqlite":
            self.db.take_in = self._take_in_spool  # every write moves the spooled publishes in first
