"""`queuectl doctor`: the database's health and limits, on both engines: the counts, the text and
JSON forms, exit 1 for a damaged SQLite file, one line for a database that is missing (never
created) or not a database. The warnings themselves: tests/unit/test_doctor.py."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result

from queuectl_kombu import JobState, JobStore, NewJob
from tests.support.postgres import database_url, fresh_database

PAYLOAD = "x" * 100
KEYS = {"engine", "database", "ok", "problems", "warnings", "size_bytes", "wal_bytes", "checkpoint", "lock_wait",
        "lock_timeout", "jobs", "retention", "completed_kept", "completed_bytes", "rate", "relations", "activity"}


@pytest.fixture
def filled(db_target: str) -> Iterator[JobStore]:
    """t0, t1 completed; t2 failed; t3 processing; t4, t5 pending. The store stays open (its
    connection keeps a SQLite file's WAL) until the test ends."""
    store = JobStore(db_target)
    store.publish_many([NewJob(queue="q", payload=PAYLOAD, task_id=f"t{i}") for i in range(6)])
    claimed = store.claim(["q"], 4, "w1", 60.0)
    assert store.ack_many([claimed[0].id, claimed[1].id], "w1") == []
    assert store.fail(claimed[2].id, "w1", "boom") is JobState.FAILED
    yield store
    store.close()


def test_json_has_the_counts_of_each_engine(cli: Callable[..., Result], db_target: str, engine: str,
                                            filled: JobStore) -> None:
    result = cli("--db", db_target, "doctor", "--format", "json")
    assert (result.exit_code, result.stderr) == (0, "")
    data = json.loads(result.stdout)
    assert set(data) == KEYS
    assert (data["engine"], data["ok"], data["problems"], data["warnings"]) == (engine, True, [], [])
    assert data["jobs"] == {"pending": 2, "processing": 1, "completed": 2, "failed": 1, "dead": 0}
    assert (data["completed_kept"], data["completed_bytes"], data["retention"]) == (2, 2 * len(PAYLOAD), 86400.0)
    rate = data["rate"]
    assert rate["events"] == {"published": 6, "completed": 2, "failed": 1, "dead": 0}  # this minute's
    assert rate["writes_per_second"] == (6 + 2 * 3) / rate["window"]
    if engine == "sqlite":
        assert data["size_bytes"] == os.path.getsize(db_target)
        assert data["wal_bytes"] == os.path.getsize(db_target + "-wal")
        assert set(data["checkpoint"]) == {"busy", "wal_pages", "checkpointed_pages"}
        # nobody else reads: the checkpoint copied the whole WAL (the fill's commits)
        assert data["checkpoint"]["busy"] is False and data["checkpoint"]["wal_pages"] > 0
        assert data["checkpoint"]["checkpointed_pages"] == data["checkpoint"]["wal_pages"]
        assert data["lock_timeout"] == 2.0 and 0 <= data["lock_wait"] < 2.0
        assert rate["capacity"] == 4487 and rate["share"] == rate["tasks_per_second"] / 4487
        assert (data["relations"], data["activity"]) == ([], None)
    else:
        names = {r["name"] for r in data["relations"]}
        assert {"jobs", "results", "stats", "config", "queues", "consumers"} <= names
        assert data["size_bytes"] == sum(r["total_bytes"] for r in data["relations"])
        assert set(data["activity"]) == {"live_tuples", "dead_tuples", "last_vacuum", "last_autovacuum",
                                         "last_analyze", "last_autoanalyze"}
        assert (data["wal_bytes"], data["checkpoint"], data["lock_wait"], data["lock_timeout"]) == (None,) * 4
        assert (rate["capacity"], rate["share"]) == (None, None)


def test_text_is_a_few_aligned_lines(cli: Callable[..., Result], db_target: str, engine: str,
                                     filled: JobStore) -> None:
    result = cli("--db", db_target, "doctor")
    assert (result.exit_code, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    labels = [line[:10].rstrip() for line in lines]
    values = {line[:10].rstrip(): line[12:] for line in lines}
    assert all(line[10:12] == "  " and line[12] != " " for line in lines), lines  # one column, aligned
    if engine == "sqlite":
        assert labels == ["database", "integrity", "size", "checkpoint", "write lock", "jobs", "retention",
                          "write rate"]
        assert values["database"] == f"{db_target} (SQLite {sqlite3.sqlite_version})"
        assert values["integrity"] == "ok (PRAGMA quick_check)"
        assert re.fullmatch(r"file [\d.]+ KiB, WAL [\d.]+ KiB \(truncated past 8\.0 MiB\)", values["size"])
        assert re.fullmatch(r"(\d+) of \1 WAL pages in the file \(passive\)", values["checkpoint"])
        assert values["write rate"].endswith(" of the ~4,487 tasks/s one file sustains")
    else:
        assert labels == ["database", "integrity", "size", "jobs table", "jobs", "retention", "write rate"]
        assert values["database"].startswith("postgresql://") and values["database"].endswith(" (PostgreSQL)")
        assert values["integrity"] == "the server answers (PostgreSQL checks its own pages)"
        # the three largest tables, then how many more
        assert re.fullmatch(r"[\d.]+ KiB with indexes and TOAST \((\w+ [\d.]+ KiB, ){3}\d+ more\)", values["size"])
        assert re.fullmatch(r"\d+ dead tuples, \d+ live; last vacuum never, autovacuum never, analyze .+",
                            values["jobs table"])
    assert values["jobs"] == "pending 2, processing 1, completed 2, failed 1, dead 0"
    assert values["retention"] == "2 completed jobs kept, 200 B of payloads (retention 86400 s)"


def damage(db: Path) -> None:
    """A file of 2,000 jobs whose page 7, the root of an index, is overwritten."""
    store = JobStore(str(db))
    store.publish_many([NewJob(queue="q", payload="x" * 200, task_id=f"t{i}") for i in range(2000)])
    store.close()  # the WAL is copied into the file
    with open(db, "r+b") as f:
        f.seek(6 * 4096)
        f.write(b"\xff" * 4096)


def test_a_damaged_file_fails_with_exit_1(cli: Callable[..., Result], db: Path) -> None:
    damage(db)
    result = cli("doctor")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert [line[:9] for line in lines] == ["database ", "integrity", "size     "]  # nothing else is read
    assert lines[1].startswith("integrity  FAILED: Page 7: btreeInitPage() returns error")
    assert lines[1].endswith(" more)")
    [error] = result.stderr.splitlines()
    assert error.startswith(f"Error: database {db} failed its integrity check (") and error.endswith(" problem(s))")

    as_json = cli("doctor", "--format", "json")
    assert as_json.exit_code == 1
    data = json.loads(as_json.stdout)
    assert (data["ok"], data["jobs"], data["rate"]) == (False, None, None)
    assert data["problems"][0].startswith("Page 7: btreeInitPage() returns error")


def test_a_file_that_is_not_a_database_is_one_line(cli: Callable[..., Result], db: Path) -> None:
    db.write_bytes(b"not a database at all, " * 100)
    result = cli("doctor")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"Error: cannot open database {db}: the file is not a SQLite database\n"


def test_a_missing_file_is_one_line_and_is_not_created(cli: Callable[..., Result], db: Path) -> None:
    result = cli("doctor", "--format", "json")
    assert (result.exit_code, result.stderr, result.stdout) == (1, f"Error: database {db} does not exist\n", "")
    assert list(db.parent.iterdir()) == []


def test_a_missing_postgresql_database_is_one_line(cli: Callable[..., Result]) -> None:
    with fresh_database():  # skips without a server; the database next to it is never made
        url = database_url(f"qt_{os.getpid()}_never_made")
        result = cli("--db", url, "doctor")
    assert (result.exit_code, result.stdout) == (1, "")
    [error] = result.stderr.splitlines()
    assert error.startswith(f"Error: cannot connect to {url}: ")
    assert error.endswith(f'database "qt_{os.getpid()}_never_made" does not exist')
