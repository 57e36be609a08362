"""The overview's figures: jobs per state and queue, the oldest pending job, throughput per minute."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from queuectl_kombu import JobState, JobStore

from ..cli.views import queue_counts, state_totals

#: Minutes the throughput chart spans.
CHART_MINUTES = 60
#: Events that count as failures in the chart: a failed attempt (a retry waits) and a move to the DLQ.
FAILURE_EVENTS = ("failed", "dead")


@dataclass(frozen=True)
class Minute:
    """What one minute of the chart shows."""

    minute: int  # epoch seconds // 60
    completed: int
    failures: int


@dataclass(frozen=True)
class Overview:
    """One look at the database: counts, the oldest pending job's age, the last hour's throughput."""

    per_queue: dict[str, dict[str, int]]
    totals: dict[str, int]
    oldest_pending_age: float | None
    throughput: list[Minute]
    #: Paused queues (each also in per_queue, with zero counts if it holds no job).
    paused: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Reads:
    """What one look read: the stamp of the file it saw, and the three reads' answers."""

    stamp: tuple[int, int]
    minute: int
    per_queue: dict[str, dict[str, int]]
    oldest_pending_at: float | None
    activity: list[tuple[int, str, str, int]]
    paused: frozenset[str]


class OverviewReader:
    """The overview of one store, read again only when someone committed since the last look or
    a new minute began: an update of a file that did not change costs one PRAGMA. The last look
    is kept per thread, since SQLite's data_version is per connection (one per thread)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._local = threading.local()

    def overview(self, now: float) -> Overview:
        """The overview at `now` (epoch seconds)."""
        stamp = self._store.change_stamp()
        last: _Reads | None = getattr(self._local, "last", None)
        if last is None or last.stamp != stamp or last.minute != int(now // 60):
            last = self._local.last = _read(self._store, stamp, now)
        per_queue = dict(last.per_queue)
        for queue in sorted(last.paused - per_queue.keys()):
            per_queue[queue] = {}
        return Overview(
            per_queue=per_queue,
            paused=last.paused,
            totals=state_totals(last.per_queue),
            oldest_pending_age=None if last.oldest_pending_at is None else max(0.0, now - last.oldest_pending_at),
            throughput=throughput(last.activity, now),
        )


def _read(store: JobStore, stamp: tuple[int, int], now: float) -> _Reads:
    # The oldest pending job is the first in id order (created_at never changes, ids only grow):
    # one step into the state index, where MIN(created_at) would read every pending row.
    first = store.list_jobs(JobState.PENDING, None, 1, jobs_only=True)
    return _Reads(
        stamp=stamp,
        minute=int(now // 60),
        per_queue=queue_counts(store),
        oldest_pending_at=first[0].created_at if first else None,
        activity=store.activity(now - (CHART_MINUTES - 1) * 60),
        paused=frozenset(store.paused_queues()),
    )


def throughput(rows: list[tuple[int, str, str, int]], now: float) -> list[Minute]:
    """Completed jobs and failures per minute over the CHART_MINUTES minutes up to `now`, every
    queue together, minutes without events included as zero."""
    last = int(now // 60)
    first = last - CHART_MINUTES + 1
    completed = dict.fromkeys(range(first, last + 1), 0)
    failures = dict(completed)
    for minute, _queue, event, count in rows:
        if first <= minute <= last:
            if event == "completed":
                completed[minute] += count
            elif event in FAILURE_EVENTS:
                failures[minute] += count
    return [Minute(m, completed[m], failures[m]) for m in completed]
