"""Fixtures of the result backend tests: fresh SQLite files, a settable clock, real worker subprocesses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import Clock, Worker


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "queue.db")


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start workers for one test; each is stopped at the end."""
    workers: list[Worker] = []

    def start(*args: Any, **kwargs: Any) -> Worker:
        worker = Worker(tmp_path, *args, **kwargs)
        workers.append(worker)
        return worker.wait_ready()

    yield start
    for worker in workers:
        worker.stop()
