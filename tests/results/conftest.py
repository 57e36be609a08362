"""Fixtures of the result backend tests: real worker subprocesses (``clock`` and ``db_path``, a
settable clock and a fresh SQLite file, come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import ResultWorker


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., ResultWorker]]:
    """Start workers for one test (returned once ready); each is stopped at the end."""
    workers: list[ResultWorker] = []

    def start(*args: Any, **kwargs: Any) -> ResultWorker:
        worker = ResultWorker(tmp_path, *args, **kwargs)
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()
