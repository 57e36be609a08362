"""Fixtures for the unit tier: a fresh SQLite file per test and a clock the test moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from queuectl_kombu import JobStore


class Clock:
    """A settable clock for the store: tests move time instead of sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "queue.db")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_path: str, clock: Clock) -> JobStore:
    s = JobStore(db_path, clock=clock)
    s.open()
    yield s
    s.close()
