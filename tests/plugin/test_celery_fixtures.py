"""queuectl behind Celery's own fixtures (celery_app, celery_worker: an embedded worker in this
process), where a worker process is not the point: what a broker does that the in-memory one
Celery's fixtures default to does not (broker-held countdowns, priorities, results in the file)."""

from __future__ import annotations

import sqlite3
from typing import Any

from celery import Celery, chord, group

from queuectl_kombu import JobStore


def test_a_retry_waits_in_the_broker_for_its_countdown(celery_app: Celery, celery_worker: Any,
                                                       queuectl_db_path: str) -> None:
    @celery_app.task(bind=True, max_retries=2, name="fixtures.flaky")
    def flaky(self: Any) -> int:
        if self.request.retries < 2:
            raise self.retry(countdown=0.2)
        return int(self.request.retries)

    celery_worker.reload()
    assert flaky.delay().get(timeout=20) == 2
    # the retries were messages in the file, each published with its ETA
    store = JobStore(queuectl_db_path)
    names = [j.task_name for j in store.list_jobs(jobs_only=True)]
    store.close()
    assert names.count("fixtures.flaky") == 3


def test_a_chord_is_counted_in_the_file(celery_app: Celery, celery_worker: Any, queuectl_db_path: str) -> None:
    @celery_app.task(name="fixtures.square")
    def square(x: int) -> int:
        return x * x

    @celery_app.task(name="fixtures.total")
    def total(numbers: list[int]) -> int:
        return sum(numbers)

    celery_worker.reload()
    assert chord(square.s(i) for i in range(5))(total.s()).get(timeout=20) == 30
    assert group(square.s(i) for i in range(3))().get(timeout=20) == [0, 1, 4]
    conn = sqlite3.connect(queuectl_db_path)
    keys = [r[0] for r in conn.execute("SELECT key FROM results")]
    conn.close()
    assert any(key.startswith("celery-task-meta-") for key in keys)


def test_the_worker_takes_higher_priorities_first(celery_app: Celery, queuectl_db_path: str) -> None:
    """Published while no worker runs, then drained by one: priority 9 before 0, FIFO within."""
    from celery.contrib.testing.worker import start_worker

    order: list[str] = []

    @celery_app.task(name="fixtures.note")
    def note(tag: str) -> None:
        order.append(tag)

    for tag, priority in (("low-1", 0), ("high-1", 9), ("low-2", 0), ("high-2", 9)):
        note.apply_async((tag,), priority=priority)
    with start_worker(celery_app, pool="solo", perform_ping_check=False):
        results = [note.apply_async(("last",), priority=0)]
        results[0].get(timeout=20)
    assert order == ["high-1", "high-2", "low-1", "low-2", "last"]
