"""Prometheus metrics of one queuectl file, in the text format, through prometheus_client: what
`queuectl metrics` prints and the dashboard serves at /metrics (docs/metrics.md lists them).

Every render reads the file afresh into a registry of its own: nothing is kept between calls
and nothing is registered in prometheus_client's global registry.
"""

from __future__ import annotations

from collections.abc import Iterator

from celery import Celery
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from queuectl_kombu import STATS_EVENTS, WAL_LIMIT_BYTES, JobState, JobStore, is_control_queue

from .workers import answering

#: The Content-Type of what render_metrics returns (the Prometheus text format).
CONTENT_TYPE = CONTENT_TYPE_LATEST


class QueueCollector(Collector):
    """The metrics of one queuectl file, read when collected; the workers are pinged through
    `app` (none asked when it is None)."""

    def __init__(self, store: JobStore, app: Celery | None = None, *, workers_timeout: float = 1.0) -> None:
        self.store = store
        self.app = app
        self.workers_timeout = workers_timeout

    def collect(self) -> Iterator[Metric]:
        """Every metric family, read from the file now."""
        store = self.store
        per_queue = {q: c for q, c in store.counts_by_queue().items() if not is_control_queue(q)}
        declared = {row["name"]: bool(row.get("paused", 0)) for row in store.list_queues()
                    if not is_control_queue(row["name"])}
        waiting = store.waiting_since()
        events = store.event_totals()
        queues = sorted(set(per_queue) | set(declared) | set(waiting) | {q for q, _ in events})
        now = store.clock()

        jobs = GaugeMetricFamily("queuectl_jobs", "Jobs in the file, per queue and state.", labels=["queue", "state"])
        for queue in queues:
            counts = per_queue.get(queue, {})
            for state in JobState:
                jobs.add_metric([queue, state.value], counts.get(state, 0))
        yield jobs

        oldest = GaugeMetricFamily(
            "queuectl_oldest_pending_age_seconds",
            "Seconds the longest-waiting runnable job of the queue has waited (0 when none waits).",
            labels=["queue"],
        )
        for queue in queues:
            oldest.add_metric([queue], max(0.0, now - waiting[queue]) if queue in waiting else 0.0)
        yield oldest

        paused = GaugeMetricFamily("queuectl_queue_paused", "1 when the queue is paused, else 0.", labels=["queue"])
        for queue in queues:
            paused.add_metric([queue], 1 if declared.get(queue) else 0)
        yield paused

        counter = CounterMetricFamily(
            "queuectl_job_events",
            "What happened to jobs, per queue: published, completed, failed (a retry waits), dead, "
            "recovered (a lease ran out), revived (dlq retry), cancelled.",
            labels=["queue", "event"],
        )
        for queue in queues:
            for event in sorted(set(STATS_EVENTS) | {e for q, e in events if q == queue}):
                counter.add_metric([queue, event], events.get((queue, event), 0))
        yield counter

        if self.app is not None:
            workers = len(answering(self.app, self.workers_timeout))
            yield GaugeMetricFamily(
                "queuectl_workers", "Workers that answered a ping of Celery's remote control.", value=workers
            )

        database, wal = store.file_sizes()
        yield GaugeMetricFamily("queuectl_database_bytes", "Bytes of the database file.", value=database)
        yield GaugeMetricFamily("queuectl_wal_bytes", "Bytes of the database's write-ahead log.", value=wal)
        yield GaugeMetricFamily(
            "queuectl_wal_limit_bytes", "The WAL size past which it is checkpointed and truncated.",
            value=WAL_LIMIT_BYTES,
        )


def render_metrics(store: JobStore, app: Celery | None, *, workers_timeout: float = 1.0) -> bytes:
    """The metrics of the file of `store` in the Prometheus text format (CONTENT_TYPE); the workers
    that answer `app`'s ping within `workers_timeout` seconds are counted (not when app is None)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(store, app, workers_timeout=workers_timeout))
    return generate_latest(registry)
