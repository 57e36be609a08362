"""The doctor's figures and warnings (queuectl_kombu.doctor.diagnose) on a clock the test moves:
the write rate over its window against what one file sustains (docs/benchmarks.md), the write
lock, an oversized WAL, the jobs table's dead tuples on PostgreSQL; and the recovery of every
lease and the forgetting of consumers that a backup runs in its copy."""

from __future__ import annotations

import re
import sqlite3

import pytest

from queuectl_kombu import JobState, JobStore, NewJob, WAL_LIMIT_BYTES, diagnose
from queuectl_kombu.doctor import FILE_TASKS_PER_SECOND, _bloat_warnings
from queuectl_kombu.sql import QUERIES
from queuectl_kombu.store import TableActivity
from tests.support.clock import Clock
from tests.support.paths import REPO
from tests.support.waiting import wait_for

#: A minute boundary near the test clock's start: the rate's window is then exactly 4 minutes.
MINUTE = 28_333_334


def add_stats(store: JobStore, rows: list[tuple[int, str, str, int]]) -> None:
    """Counts added to the stats table as the verbs add theirs: (minute, queue, event, count)."""
    with store.db.write() as conn:
        store.db.at_commit(conn, QUERIES["stats_add"], rows)  # type: ignore[arg-type]


def test_the_file_figure_is_the_drain_figure_of_the_benchmarks() -> None:
    """FILE_TASKS_PER_SECOND is the `drain` row of docs/benchmarks.md: a new bench run that
    changes it fails here until the doctor's figure follows."""
    text = (REPO / "docs" / "benchmarks.md").read_text()
    row = re.search(r"^\| drain 5k prefork -c 4, tasks/s \(higher is better\) \| ([\d,]+) ", text, re.MULTILINE)
    assert row is not None, "the drain row of docs/benchmarks.md's table"
    assert FILE_TASKS_PER_SECOND == int(row.group(1).replace(",", ""))


@pytest.mark.parametrize(("published", "completed", "warned"),
                         [(1_150_000, 575_000, True), (1_100_000, 550_000, False)])
def test_the_write_rate_warns_past_70_percent_of_one_file(store: JobStore, clock: Clock, published: int,
                                                           completed: int, warned: bool) -> None:
    clock.now = MINUTE * 60.0
    add_stats(store, [
        (MINUTE - 1, "a", "published", published // 2), (MINUTE - 4, "b", "published", published - published // 2),
        (MINUTE - 2, "a", "completed", completed),
        (MINUTE - 1, "a", "recovered", 10**9),  # not a write the rate counts
        (MINUTE - 5, "a", "published", 10**9),  # before the window
    ])
    diagnosis = diagnose(store)
    rate = diagnosis.rate
    assert rate is not None and rate.window == 240.0
    assert rate.events == {"published": published, "completed": completed, "failed": 0, "dead": 0}
    writes = published + 2 * completed  # a completed job was claimed and acked: two writes
    assert rate.writes_per_second == writes / 240
    assert rate.tasks_per_second == writes / 240 / 3
    rate_warnings = [w for w in diagnosis.warnings if "tasks/s" in w]
    if store.db.engine != "sqlite":  # a server's capacity is not one file's: no share, no warning
        assert (rate.capacity, rate.share, rate_warnings) == (None, None, [])
        return
    assert (rate.capacity, rate.share) == (FILE_TASKS_PER_SECOND, rate.tasks_per_second / FILE_TASKS_PER_SECOND)
    if warned:
        assert rate_warnings == [
            f"the last 240 s wrote {rate.tasks_per_second:.0f} tasks/s, 71% of the ~4,487 tasks/s one SQLite "
            "file sustains (more than 70%): spread the queues over several files, or move to PostgreSQL"]
    else:
        assert rate.share > 0.68 and rate_warnings == []


def test_a_held_write_lock_is_a_warning(store: JobStore, db_path: str) -> None:
    if store.db.engine != "sqlite":
        pytest.skip("the write lock of a SQLite file (PostgreSQL locks rows)")
    store.publish(NewJob(queue="q", payload="1"))
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        held = diagnose(store, lock_timeout=0.2)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert held.lock_wait is None
    assert held.warnings == ["a writer did not get the write lock within 0.2 s: a long transaction holds it "
                             "(a bulk enqueue of a large file?)"]
    assert "write lock  not had within 0.2 s" in held.lines()
    free = diagnose(store, lock_timeout=0.2)
    assert free.lock_wait is not None and free.lock_wait < 0.2
    assert free.warnings == []


def test_an_oversized_wal_is_a_warning(store: JobStore) -> None:
    if store.db.engine != "sqlite":
        pytest.skip("a SQLite file's WAL")
    big = "x" * (1024 * 1024)
    store.publish_many([NewJob(queue="q", payload=big) for _ in range(WAL_LIMIT_BYTES // len(big) + 1)])
    wal = store.db.wal_size()
    assert wal > WAL_LIMIT_BYTES  # one transaction wrote it all
    diagnosis = diagnose(store)
    assert diagnosis.wal_bytes == wal
    assert diagnosis.checkpoint is not None
    _, log, done = diagnosis.checkpoint
    assert diagnosis.warnings == [
        f"the WAL holds {wal / 2**20:.1f} MiB, more than its 8.0 MiB limit: a long reader keeps checkpoints from "
        f"finishing (the last copied {done} of {log} pages)"]


def test_dead_tuples_that_autovacuum_never_cleared_are_a_warning(store: JobStore) -> None:
    if store.db.engine != "postgresql":
        pytest.skip("PostgreSQL's dead tuples (a SQLite file reuses its free pages)")
    conn = store.db.connection()
    conn.execute("ALTER TABLE jobs SET (autovacuum_enabled = false)")  # whatever the server's setting
    ids = store.publish_many([NewJob(queue="q", payload=str(i)) for i in range(200)])
    store.claim(["q"], 200, "w", 60.0)
    assert store.ack_many(ids, "w", retention=0) == []  # deleted at once: 200 rows, each updated once

    def bloat_warnings() -> list[str]:
        return [w for w in diagnose(store).warnings if w.startswith("the jobs table has ")]

    # the server's statistics views catch up with a session's writes within a few seconds
    [warning] = wait_for(bloat_warnings, 30, what="the dead tuples in pg_stat_user_tables")
    assert re.fullmatch(r"the jobs table has \d+ dead tuples for 0 live \(more than 50 \+ 20%\) and autovacuum "
                        r"never vacuumed it: turn autovacuum on, or VACUUM it", warning), warning
    conn.execute("VACUUM jobs")
    wait_for(lambda: bloat_warnings() == [], 30, what="the warning gone after VACUUM")


def test_bloat_is_no_warning_once_autovacuum_ran() -> None:
    never = TableActivity(live_tuples=1000, dead_tuples=251, last_vacuum=None, last_autovacuum=None,
                          last_analyze=None, last_autoanalyze=None)
    assert len(_bloat_warnings(never)) == 1
    assert _bloat_warnings(TableActivity(1000, 250, None, None, None, None)) == []  # 50 + 20 % of 1000
    assert _bloat_warnings(TableActivity(1000, 251, None, 1.7e9, None, None)) == []


def test_recover_every_lease_is_the_recovery_after_a_crash(store: JobStore, clock: Clock) -> None:
    ids = store.publish_many([NewJob(queue="q", payload=str(i), task_id=f"t{i}", max_retries=m)
                              for i, m in enumerate([3, 0, 3])])
    store.claim(["q"], 2, "w", 3600.0)  # t0, t1: leases far from running out
    store.add_consumer("q", "w")
    recovered = store.recover_every_lease()
    assert recovered == [(ids[0], "t0", JobState.PENDING, 1), (ids[1], "t1", JobState.DEAD, 1)]
    jobs = {j.task_id: j for j in store.list_jobs()}
    assert [(j.state, j.attempts, j.lease_owner, j.lease_expires_at, j.next_run_at) for j in jobs.values()] == [
        (JobState.PENDING, 1, None, None, clock()), (JobState.DEAD, 1, None, None, clock()),
        (JobState.PENDING, 0, None, None, clock())]
    assert store.recover_every_lease() == []
    assert store.forget_consumers() == 1 and store.forget_consumers() == 0
    [claimed] = store.claim(["q"], 1, "w2", 60.0)
    assert (claimed.task_id, claimed.attempts) == ("t0", 2)  # the attempt before the backup counted
