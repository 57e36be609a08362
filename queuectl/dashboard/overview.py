"""The overview's figures: jobs per state and queue, the oldest pending job, throughput per minute."""

from __future__ import annotations

from dataclasses import dataclass

from queuectl_kombu import JobStore

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


def overview(store: JobStore, now: float) -> Overview:
    """The overview at `now` (epoch seconds), from three reads of the store."""
    per_queue = queue_counts(store)
    oldest = store.oldest_pending_created_at()
    return Overview(
        per_queue=per_queue,
        totals=state_totals(per_queue),
        oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
        throughput=throughput(store.activity(now - (CHART_MINUTES - 1) * 60), now),
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
