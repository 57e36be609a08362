"""Fixtures of the example's tests: a database file of their own, and a real worker on it.

The database is chosen before the application's modules are imported (they read
ORDERS_DATABASE when imported), so the tests never touch orders.db.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

HERE = Path(__file__).parent
T = TypeVar("T")

#: Seconds any one wait of these tests may take (a loaded CI machine starts a worker in ~3 s).
DEADLINE = 30.0


directory_key = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[directory_key] = tempfile.mkdtemp(prefix="orders-test-")
    os.environ["ORDERS_DATABASE"] = os.path.join(config.stash[directory_key], "orders.db")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(config.stash[directory_key], ignore_errors=True)


def wait_for(predicate: Callable[[], T], what: str, on_fail: Callable[[], str] = lambda: "") -> T:
    """Call `predicate` until it returns something true, and return that; fail after DEADLINE s."""
    deadline = time.monotonic() + DEADLINE
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE:g}s waiting for {what}\n{on_fail()}")
        time.sleep(0.05)
    return value


class Worker:
    """`celery -A tasks worker` on the test database, in its own process group."""

    def __init__(self, log: Path) -> None:
        self.name = f"orders-{uuid.uuid4().hex[:8]}@test"
        self.log = log
        argv = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-l", "INFO", "-c", "1",
                "-n", self.name, "--without-mingle", "--without-gossip"]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(argv, cwd=HERE, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the worker exited with {self.process.returncode}\n{self.output()}")
            return f"{self.name} ready." in self.output()

        wait_for(ready, "the worker to be ready", self.output)

    def stop(self) -> None:
        """A warm shutdown (SIGTERM, 15 s at most), then SIGKILL to what is left of its process
        group (pool processes)."""
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(15)


@pytest.fixture(scope="session")
def database() -> None:
    """The orders table and the queue's tables in the test file: `flask --app app init-db`."""
    from app import app

    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="session")
def worker(database: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    worker = Worker(tmp_path_factory.mktemp("worker") / "worker.log")
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()
