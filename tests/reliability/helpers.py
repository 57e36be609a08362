"""Shared pieces of the reliability tier: throw-away database files (on the settable clock of
tests.support.clock), checks of the schema, and the counters that the closing summary reports."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterator

from hypothesis import HealthCheck, settings

from queuectl_kombu import JobStore, sql
from tests.support.clock import Clock

#: Cases run per counter name; conftest.py prints them and writes .counts/counts.json.
COUNTS: Counter[str] = Counter()

#: The tables a queuectl file holds (schema.sql and its migrations); fuzzed input must never
#: remove one nor add another.
TABLES = frozenset(
    re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)",
               sql.SCHEMA + "".join(sql.MIGRATIONS.values()) + sql.QUERIES["spool_table"], re.I)  # + SQLite's spool
)


#: Where the throw-away files go: a tmpfs when there is one. They are real SQLite files in WAL
#: mode all the same; only the fsyncs, which these tests do not examine, become cheap (a new
#: file per example costs ~12 ms there against ~80 ms on a busy disk).
SCRATCH_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK) else None


def scratch_path() -> str:
    """A new temporary directory; the caller removes it."""
    return tempfile.mkdtemp(prefix="queuectl-rel-", dir=SCRATCH_ROOT)


@contextlib.contextmanager
def scratch_dir() -> Iterator[str]:
    """A temporary directory for one hypothesis example (examples don't get pytest's tmp_path)."""
    path = scratch_path()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def fresh_store(clock: Clock | None = None) -> Iterator[JobStore]:
    """A JobStore on a new SQLite file, closed and removed afterwards."""
    with scratch_dir() as directory:
        store = JobStore(os.path.join(directory, "queue.db"), clock=clock or Clock())
        store.open()
        try:
            yield store
        finally:
            store.close()


def raw(path: str) -> sqlite3.Connection:
    """A plain sqlite3 connection beside the store's, for checks the store has no verb for."""
    return sqlite3.connect(path, isolation_level=None)


def schema_tables(path: str) -> set[str]:
    with contextlib.closing(raw(path)) as conn:
        return {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not r[0].startswith("sqlite_")
        }


def integrity(path: str) -> list[str]:
    with contextlib.closing(raw(path)) as conn:
        return [r[0] for r in conn.execute("PRAGMA integrity_check")]


def row_count(path: str, table: str = "jobs") -> int:
    assert table in TABLES, table
    with contextlib.closing(raw(path)) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def config_rows(path: str) -> dict[str, str]:
    with contextlib.closing(raw(path)) as conn:
        return {r[0]: r[1] for r in conn.execute("SELECT key, value FROM config")}


def rel_settings(**kwargs: object) -> settings:
    """Hypothesis settings of this tier: no example database (nothing written outside this
    folder, every run starts afresh), no deadline (SQLite commits vary on a busy machine)."""
    kwargs.setdefault("deadline", None)
    return settings(database=None, suppress_health_check=[HealthCheck.too_slow], **kwargs)
