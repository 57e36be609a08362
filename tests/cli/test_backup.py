"""`queuectl backup DEST`: a copy of the SQLite file that opens as a queue of its own. An idle
file is copied row for row; in the copy (never in the source) running jobs go back to pending as
after a crash and the consumers are forgotten; an existing DEST is replaced only with --force;
PostgreSQL is refused; bad destinations fail with one line and leave nothing behind.
(tests/acceptance/test_acc_backup.py takes a backup while real workers drain the file.)"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from queuectl_kombu import JobState, JobStore, NewJob
from tests.support.reading import rows

from .conftest import snapshot, spool_number


def assert_one_error_line(result: Result, line: str) -> None:
    assert (result.exit_code, result.stderr, result.stdout) == (1, line + "\n", "")


def files_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def journal_mode(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def fill_every_state(db: Path, *, running: bool) -> None:
    """t0 completed, t1 failed (its retry waiting), t2 dead, t3 pending (requeued) or, if
    `running`, processing under w1, t4 pending; a setting, a paused queue, a consumer if running."""
    store = JobStore(str(db))
    store.publish_many([NewJob(queue="q", payload=f"p{i}", task_id=f"t{i}") for i in range(5)])
    store.set_config("retention", 3600)
    claimed = store.claim(["q"], 4, "w1", 60.0)
    assert [c.task_id for c in claimed] == ["t0", "t1", "t2", "t3"]
    assert store.ack_many([claimed[0].id], "w1") == []
    assert store.fail(claimed[1].id, "w1", "boom") is JobState.FAILED
    assert store.fail(claimed[2].id, "w1", "boom", max_retries=0) is JobState.DEAD
    if running:
        store.add_consumer("q", "w1")
    else:
        assert store.requeue(claimed[3].id, "w1")
    store.pause_queue("q")
    store.close()


def test_an_idle_file_is_copied_row_for_row(cli: Callable[..., Result], db: Path, tmp_path: Path) -> None:
    fill_every_state(db, running=False)
    before = snapshot(db)
    dest = tmp_path / "backup.db"
    result = cli("backup", str(dest))
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (f"wrote {dest}: 2 pending, 0 processing, 1 completed, 1 failed, 1 dead; "
                             "0 processing job(s) put back to pending\n")
    # the copy alone, whole: its WAL folded in, no temporary file left (read before anything opens it)
    assert files_in(tmp_path) - {"queue.db-wal", "queue.db-shm"} == {"queue.db", "backup.db"}
    assert journal_mode(dest) == "wal"
    assert snapshot(db) == before  # the source as it was
    assert snapshot(dest) == before  # every table, every row: jobs, config, queues, stats, sequence
    assert spool_number(dest) != spool_number(db)  # never takes in the source's spool, restored in its place


def test_running_jobs_go_back_to_pending_in_the_copy_only(cli: Callable[..., Result], db: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    fill_every_state(db, running=True)
    store = JobStore(str(db))
    store.publish(NewJob(queue="r", payload="last", task_id="t5", max_retries=0))
    store.resume_queue("q")
    [last] = store.claim(["r"], 1, "w2", 60.0)  # t5: its first attempt is its last
    assert last.task_id == "t5"
    store.close()
    before = snapshot(db)
    dest = tmp_path / "backup.db"

    with caplog.at_level(logging.WARNING, logger="queuectl_kombu.store"):
        result = cli("backup", str(dest))

    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (f"wrote {dest}: 2 pending, 0 processing, 1 completed, 1 failed, 2 dead; "
                             "1 processing job(s) put back to pending, 1 dead (no retry left)\n")
    assert snapshot(db) == before  # the source still has its running jobs and consumers
    assert rows(db, "SELECT task_id, state FROM jobs WHERE state = 'processing' ORDER BY id") == [
        ("t3", "processing"), ("t5", "processing")]
    assert rows(db, "SELECT queue, owner FROM consumers") == [("q", "w1")]

    copied = rows(dest, "SELECT task_id, state, attempts, lease_owner, lease_expires_at, last_error FROM jobs "
                        "WHERE task_id IN ('t3', 't5') ORDER BY id")
    assert copied == [("t3", "pending", 1, None, None, "lease of w1 expired"),
                      ("t5", "dead", 1, None, None, "lease of w2 expired")]
    assert rows(dest, "SELECT COUNT(*) FROM consumers") == [(0,)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("(task t3): lease expired after attempt 1, now pending" in m for m in warnings), warnings
    assert any("(task t5): lease expired after attempt 1, now dead" in m for m in warnings), warnings

    # the copy is a queue: the CLI reads it, and a worker would claim t3 (attempt 2) at once
    status = cli("--db", str(dest), "status", "--no-workers", "--format", "json")
    assert status.exit_code == 0, status.stderr
    assert json.loads(status.stdout)["jobs"] == {"pending": 2, "processing": 0, "completed": 1, "failed": 1,
                                                 "dead": 2, "total": 6}
    restored = JobStore(str(dest))
    claimed = restored.claim(["q"], 10, "w3", 60.0)
    assert [(c.task_id, c.attempts) for c in claimed] == [("t3", 2), ("t4", 1)]
    restored.close()


def test_an_existing_destination_is_replaced_only_with_force(cli: Callable[..., Result], db: Path,
                                                             tmp_path: Path) -> None:
    fill_every_state(db, running=False)
    dest = tmp_path / "backup.db"
    dest.write_bytes(b"an older backup")

    result = cli("backup", str(dest))
    assert_one_error_line(result, f"Error: cannot write the backup to {dest}: the file exists (--force replaces it)")
    assert dest.read_bytes() == b"an older backup"
    assert not [name for name in files_in(tmp_path) if name.endswith(".partial")]

    result = cli("backup", str(dest), "--force")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.startswith(f"wrote {dest}: 2 pending, ")
    assert snapshot(dest) == snapshot(db)


def test_a_destination_with_a_wal_beside_it_is_refused_even_with_force(cli: Callable[..., Result], db: Path,
                                                                       tmp_path: Path) -> None:
    fill_every_state(db, running=False)
    dest = tmp_path / "backup.db"
    dest.write_bytes(b"an older backup")
    Path(f"{dest}-wal").write_bytes(b"its log")
    result = cli("backup", str(dest), "--force")
    assert_one_error_line(
        result, f"Error: cannot write the backup to {dest}: {dest}-wal exists (a database there is open, or was "
        "not closed cleanly, and its WAL would be replayed into the backup): stop what uses it, or remove it")
    assert dest.read_bytes() == b"an older backup"


def test_postgresql_is_refused_with_pg_dump_named(cli: Callable[..., Result], tmp_path: Path) -> None:
    dest = tmp_path / "backup.db"
    result = cli("--db", "postgresql://queuectl:secret@127.0.0.1:1/jobs", "backup", str(dest))
    assert_one_error_line(
        result, "Error: postgresql://queuectl:***@127.0.0.1:1/jobs is a PostgreSQL database: back up its schema "
        "with pg_dump -n queuectl (see docs/operations.md); queuectl backup copies SQLite files")
    assert files_in(tmp_path) == set()


def test_a_missing_source_is_an_error_and_is_not_created(cli: Callable[..., Result], db: Path,
                                                         tmp_path: Path) -> None:
    result = cli("backup", str(tmp_path / "backup.db"))
    assert_one_error_line(result, f"Error: database {db} does not exist")
    assert files_in(tmp_path) == set()


def test_a_source_that_is_not_a_queue_writes_nothing(cli: Callable[..., Result], db: Path, tmp_path: Path) -> None:
    db.write_bytes(b"not a database at all, " * 100)
    result = cli("backup", str(tmp_path / "backup.db"))
    assert_one_error_line(result, f"Error: cannot open database {db}: the file is not a SQLite database")
    assert files_in(tmp_path) == {"queue.db"}


BAD_DESTINATIONS = [
    # (DEST relative to the test's directory, or absolute; the error after "cannot write the backup to DEST: ")
    ("adir", "it is a directory"),
    ("missing/backup.db", "directory {tmp}/missing does not exist"),
    ("queue.db", "it is the database itself"),
    ("/sys/queuectl-backup.db", None),  # a directory nobody can create files in, root included
]


@pytest.mark.parametrize(("where", "why"), BAD_DESTINATIONS, ids=[c[0] for c in BAD_DESTINATIONS])
def test_bad_destinations_fail_with_one_line_and_leave_nothing(cli: Callable[..., Result], db: Path,
                                                               tmp_path: Path, where: str, why: str | None) -> None:
    fill_every_state(db, running=False)
    (tmp_path / "adir").mkdir()
    before = snapshot(db)
    present = files_in(tmp_path)
    dest = Path(where) if where.startswith("/") else tmp_path / where
    result = cli("backup", str(dest), "--force")
    if why is None:  # the system's words (permission denied, read-only file system)
        assert (result.exit_code, result.stdout) == (1, "")
        assert result.stderr.startswith(f"Error: cannot write the backup to {dest}: ")
        assert result.stderr.count("\n") == 1
        assert not dest.exists()
    else:
        assert_one_error_line(result, f"Error: cannot write the backup to {dest}: {why.format(tmp=tmp_path)}")
    assert files_in(tmp_path) - {"queue.db-wal", "queue.db-shm"} == present - {"queue.db-wal", "queue.db-shm"}
    assert snapshot(db) == before


def test_a_failure_half_way_leaves_no_file_behind(cli: Callable[..., Result], db: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fill_every_state(db, running=True)

    def full(self: JobStore) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(JobStore, "forget_consumers", full)
    result = cli("backup", str(tmp_path / "backup.db"))
    assert_one_error_line(result, "Error: OperationalError: database or disk is full")
    assert files_in(tmp_path) - {"queue.db-wal", "queue.db-shm"} == {"queue.db"}
