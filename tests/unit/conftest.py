"""Fixtures for the unit tier: a JobStore on a fresh SQLite file per test, on the clock the test
moves (``clock`` and ``db_path`` come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from queuectl_kombu import JobStore
from tests.support.clock import Clock


@pytest.fixture
def store(db_path: str, clock: Clock) -> Iterator[JobStore]:
    s = JobStore(db_path, clock=clock)
    s.open()
    yield s
    s.close()
