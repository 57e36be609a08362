"""JobStore: every statement about jobs, queues, routes and config against one queuectl file,
one method per verb, every job state change. Its parts, by what they hold:

- jobs.py: publish, claim, ack, requeue, fail, cancel, the dead-letter queue (every state change);
- reading.py: one job, lists, counts, schedules;
- topology.py: queues (pause and resume), exchanges, bindings, consumers;
- housekeeping.py: leases renewed and recovered, completed jobs pruned;
- config.py: the config table; base.py: the database, the clock, commits and the WAL.
"""

from __future__ import annotations

from .housekeeping import Housekeeping
from .jobs import JobChanges, NewJob
from .reading import JobReads
from .topology import CONSUMER_HEARTBEAT, CONSUMER_TIMEOUT, QueueInfo, Topology

__all__ = ["CONSUMER_HEARTBEAT", "CONSUMER_TIMEOUT", "JobStore", "NewJob", "QueueInfo"]


class JobStore(JobChanges, Housekeeping, JobReads, Topology):
    """Every statement against one queuectl database goes through here (results: ResultStore)."""
