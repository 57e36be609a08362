"""Opening the database: path checks, file modes, schema version, fork safety."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from queuectl_kombu import DatabaseUnusable, JobStore, NewJob, sql
from queuectl_kombu.db import Database


def test_missing_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "q.db"
    with pytest.raises(DatabaseUnusable, match=f"directory {tmp_path / 'nope'} does not exist"):
        JobStore(str(path)).open()
    assert not path.parent.exists()


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnusable, match=f"{tmp_path}: it is a directory"):
        JobStore(str(tmp_path)).open()


def test_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a database\n" * 10)
    with pytest.raises(DatabaseUnusable, match=f"{path}: the file is not a SQLite database"):
        JobStore(str(path)).open()
    assert path.read_text().startswith("hello")
    assert not Path(str(path) + "-wal").exists()


def test_read_only_file_is_refused_even_for_root(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    JobStore(str(path)).open()
    path.chmod(0o400)
    with pytest.raises(DatabaseUnusable, match=f"{path}: the file is read-only"):
        JobStore(str(path)).open()


def test_new_database_is_private_with_wal(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = JobStore(str(path))
    store.publish(NewJob(queue="q", payload="{}"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(str(path) + "-wal").stat().st_mode) == 0o600
    assert store.db.connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.connection().execute("PRAGMA user_version").fetchone()[0] == sql.SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = JobStore(str(path))
    store.open()
    store.db.connection().execute("PRAGMA user_version = 99")
    with pytest.raises(DatabaseUnusable, match="schema version 99"):
        JobStore(str(path)).open()


def test_bad_synchronous_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnusable, match="synchronous"):
        Database(str(tmp_path / "q.db"), synchronous="OFF")


def test_child_process_opens_its_own_connection(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "q.db"))
    parent_conn = store.db.connection()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not use the parent's connection
        ok = store.db.connection() is not parent_conn
        store.publish(NewJob(queue="q", payload="{}"))
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    assert store.queue_size("q") == 1
    assert store.db.connection() is parent_conn


def test_other_process_closing_does_not_delete_our_wal(tmp_path: Path) -> None:
    """Opening a second connection in this process must not drop our file locks (POSIX closes
    release them), or another process that closes its connection deletes the WAL under us."""
    import subprocess
    import sys
    import threading

    path = str(tmp_path / "q.db")
    store = JobStore(path)
    store.open()
    before = store.change_stamp()
    thread = threading.Thread(target=store.open)  # a second connection, in another thread
    thread.start()
    thread.join()
    code = f"from queuectl_kombu import JobStore, NewJob; JobStore({path!r}).publish(NewJob(queue='q', payload='1'))"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert Path(path + "-wal").exists()
    assert store.change_stamp() != before
    assert store.queue_size("q") == 1


def test_job_ids_are_never_reused(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "q.db"))
    (first,) = store.publish_many([NewJob(queue="q", payload="1")])
    store.purge("q")
    (second,) = store.publish_many([NewJob(queue="q", payload="2")])
    assert second > first


def test_older_schema_migrates_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "q.db")
    JobStore(path).publish(NewJob(queue="q", payload="kept"))
    version = sql.SCHEMA_VERSION + 1
    monkeypatch.setattr(sql, "SCHEMA_VERSION", version)
    monkeypatch.setattr(sql, "MIGRATIONS", {**sql.MIGRATIONS, version: "ALTER TABLE jobs ADD COLUMN note TEXT;"})
    store = JobStore(path)
    conn = store.db.connection()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == version
    assert [tuple(r) for r in conn.execute("SELECT payload, note FROM jobs")] == [("kept", None)]


def test_a_version_1_file_gains_delivery_counts(tmp_path: Path) -> None:
    """Version 2 counts deliveries (redelivered); a claimed row of a version 1 file counts its attempts."""
    import sqlite3

    path = str(tmp_path / "q.db")
    store = JobStore(path)
    store.publish_many([NewJob(queue="q", payload="claimed"), NewJob(queue="q", payload="waiting")])
    (claimed,) = store.claim(["q"], 1, "owner", 30.0)
    store.db.close()
    old = sqlite3.connect(path)  # make it the file version 1 wrote
    old.execute("ALTER TABLE jobs DROP COLUMN deliveries")
    _undo_version_3(old)
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    conn = JobStore(path).db.connection()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sql.SCHEMA_VERSION == 3
    rows = conn.execute("SELECT payload, attempts, deliveries FROM jobs ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [("claimed", 1, 1), ("waiting", 0, 0)]


def _undo_version_3(conn: Any) -> None:
    conn.execute("DROP TABLE stats")
    conn.execute("ALTER TABLE queues DROP COLUMN paused")


def test_a_version_2_file_gains_paused_queues_and_stats(tmp_path: Path) -> None:
    """Version 3 keeps a queue's paused flag and counts job events per minute; queues and jobs of
    a version 2 file keep what they hold."""
    import sqlite3

    path = str(tmp_path / "q.db")
    store = JobStore(path)
    store.declare_queue("work", {"x-max-priority": 5})
    store.publish(NewJob(queue="work", payload="waiting"))
    store.db.close()
    old = sqlite3.connect(path)
    _undo_version_3(old)
    old.execute("PRAGMA user_version = 2")
    old.commit()
    old.close()
    migrated = JobStore(path)
    conn = migrated.db.connection()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    assert [tuple(r) for r in conn.execute("SELECT name, max_priority, paused FROM queues")] == [("work", 5, 0)]
    migrated.publish(NewJob(queue="work", payload="after"))
    assert [(q, e, n) for _, q, e, n in migrated.activity(0)] == [("work", "published", 1)]


def test_foreign_tables_are_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE users (name TEXT)").connection.commit()
    with pytest.raises(DatabaseUnusable, match="holds tables that are not queuectl's"):
        JobStore(str(path)).open()


def test_group_writable_file_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "q.db"
    JobStore(str(path)).open()
    path.chmod(0o664)
    with caplog.at_level("WARNING", logger="queuectl_kombu.db"):
        JobStore(str(path)).open()
    assert "is writable by its group" in caplog.text


def test_many_threads_opening_a_new_file_at_once(tmp_path: Path) -> None:
    """The switch to WAL is refused at once while another connection creates the file: retried."""
    import threading

    path = str(tmp_path / "new.db")
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            JobStore(path).publish(NewJob(queue="q", payload="{}"))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert JobStore(path).queue_size("q") == 12


def test_missing_tables_of_the_current_version_are_added(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "q.db"
    JobStore(str(path)).publish(NewJob(queue="q", payload="kept"))
    raw = sqlite3.connect(path)
    raw.execute("DROP TABLE consumers")
    raw.commit()
    raw.close()
    store = JobStore(str(path))
    assert store.queue_size("q") == 1
    store.add_consumer("q", "me")  # the table is back
