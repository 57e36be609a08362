"""The store's reads for the metrics and the health check (how long runnable jobs have waited,
the file's sizes, SQLite's quick check), and the stats table kept bounded by fold_stats."""

from __future__ import annotations

import os

import pytest
from pathlib import Path

from queuectl_kombu import JobStore, NewJob
from queuectl_kombu.store.housekeeping import STATS_KEEP
from tests.support.clock import Clock


def test_waiting_since_is_the_earliest_runnable_job_per_queue(store: JobStore, clock: Clock) -> None:
    start = clock()
    store.publish_many([NewJob(queue="a", payload="1"), NewJob(queue="a", payload="2")])
    store.publish(NewJob(queue="later", payload="eta", next_run_at=start + 3600))  # not due: not waiting
    store.publish(NewJob(queue="gone", payload="ttl", expires_at=start + 10))  # expired: not claimable
    store.publish(NewJob(queue="celery@host.celery.pidbox", payload="{}"))  # a control message
    (b,) = store.publish_many([NewJob(queue="b", payload="retry", max_retries=3)])
    store.claim(["b"], 1, "w", 30.0)
    store.fail(b, "w", "boom", backoff_base=2)  # failed, its retry due at start + 2
    assert store.waiting_since() == {"a": start, "gone": start}
    clock.advance(60)
    assert store.waiting_since() == {"a": start, "b": start + 2}
    clock.advance(3600)
    assert store.waiting_since() == {"a": start, "b": start + 2, "later": start + 3600}
    store.claim(["a", "b", "later"], 10, "w", 30.0)
    assert store.waiting_since() == {}


def test_a_paused_queue_has_no_runnable_job(store: JobStore, clock: Clock) -> None:
    """Its jobs wait on purpose: the health check's pending age must not count them."""
    store.publish_many([NewJob(queue="held", payload="1"), NewJob(queue="open", payload="2")])
    assert store.pause_queue("held")
    assert set(store.waiting_since()) == {"open"}
    store.resume_queue("held")
    assert set(store.waiting_since()) == {"held", "open"}


def test_file_sizes_are_those_of_the_file_and_its_wal(store: JobStore, db_path: str) -> None:
    if store.db.engine != "sqlite":
        pytest.skip("a SQLite file and its WAL (PostgreSQL: test_table_sizes_on_postgresql)")
    store.publish_many([NewJob(queue="q", payload="x" * 1000) for _ in range(50)])
    database, wal = store.file_sizes()
    assert (database, wal) == (os.stat(db_path).st_size, os.stat(db_path + "-wal").st_size)
    assert wal > 50_000


def test_quick_check_of_a_sound_file_finds_nothing(store: JobStore) -> None:
    store.publish_many([NewJob(queue="q", payload=str(i)) for i in range(100)])
    assert store.quick_check() == []


def test_quick_check_finds_a_damaged_index(tmp_path: Path) -> None:
    path = str(tmp_path / "damaged.db")
    store = JobStore(path)
    store.publish_many([NewJob(queue="q", payload="x" * 200, task_id=f"t{i}") for i in range(2000)])
    index_root = store.db.connection().execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'jobs_task_id'").fetchone()[0]
    page_size = store.db.connection().execute("PRAGMA page_size").fetchone()[0]
    store.close()  # the last connection: the WAL is copied into the file and removed
    assert not os.path.exists(path + "-wal")
    with open(path, "r+b") as f:  # the index's root page overwritten: the pages below it are lost
        f.seek((index_root - 1) * page_size)
        f.write(b"\xff" * page_size)
    problems = JobStore(path).quick_check()
    assert problems[0] == f"Page {index_root}: btreeInitPage() returns error code 11"
    assert len(problems) > 1 and all(p.endswith(" is never used") for p in problems[1:])


def test_fold_stats_keeps_totals_and_drops_old_minutes(store: JobStore, clock: Clock) -> None:
    start = clock()
    store.publish_many([NewJob(queue="q", payload="1"), NewJob(queue="r", payload="2")])
    clock.advance(3600)
    store.publish(NewJob(queue="q", payload="3"))
    clock.advance(STATS_KEEP - 1800)  # the first minute is past STATS_KEEP, the second is not
    recent = int((start + 3600) // 60)
    totals = store.event_totals()
    assert store.fold_stats() == 2
    assert store.event_totals() == totals == {("q", "published"): 2, ("r", "published"): 1}
    assert store.activity(0) == [(0, "q", "published", 1), (0, "r", "published", 1), (recent, "q", "published", 1)]
    assert store.fold_stats() == 0  # nothing older left
    clock.advance(3600)
    assert store.fold_stats() == 1  # the second minute joins the first: one row per queue and event
    assert store.activity(0) == [(0, "q", "published", 2), (0, "r", "published", 1)]
    assert store.event_totals() == totals


def test_table_sizes_on_postgresql(pg_url: str) -> None:
    """PostgreSQL has no file: the size is that of the schema's tables and indexes, and no WAL."""
    store = JobStore(pg_url)
    empty, wal = store.file_sizes()
    store.publish_many([NewJob(queue="q", payload="x" * 2000) for _ in range(500)])
    grown, wal_after = store.file_sizes()
    assert wal == wal_after == 0
    assert grown > empty > 0
    store.close()
