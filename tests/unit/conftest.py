"""Fixtures for the unit tier: a JobStore on a fresh SQLite file, then a PostgreSQL database, per test, on the clock the test
moves (``clock`` and ``db_path`` come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from queuectl_kombu import JobStore
from tests.support.clock import Clock


@pytest.fixture
def store(db_target: str, clock: Clock) -> Iterator[JobStore]:
    """A JobStore on each engine in turn (tests/conftest.py: db_target)."""
    s = JobStore(db_target, clock=clock)
    s.open()
    yield s
    s.close()


@pytest.fixture
def sqlite_store(db_path: str) -> Iterator[JobStore]:
    """A JobStore on a fresh SQLite file, for what only a SQLite file has (its spool, its WAL)."""
    s = JobStore(db_path)
    s.open()
    yield s
    s.close()
