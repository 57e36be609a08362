"""Fixtures of the dashboard tests: a database with jobs in every state, the Flask app on it and
its test client, and the CSRF token a page hands out.

The jobs are real: run_shell messages enqueued through the CLI, moved by the store's own verbs
(claim, ack, fail) as a worker would, with a result stored through the Celery result backend.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from queuectl.app import make_app
from queuectl.cli import cli
from queuectl.dashboard import create_app
from queuectl_kombu import JobState, JobStore
from tests.support.paths import queuectl_executable
from tests.support.processes import Proc, child_env, stop_all
from tests.support.waiting import WaitTimeout, wait_for

OWNER = "test-worker"
#: What the seeded database holds: job id -> the state it is left in.
SEEDED = {
    "ok-1": JobState.COMPLETED,
    "run-1": JobState.PROCESSING,
    "retry-1": JobState.FAILED,
    "dead-1": JobState.DEAD,
    "dead-2": JobState.DEAD,
    "wait-1": JobState.PENDING,
    "xss-1": JobState.PENDING,
}
#: A command and an environment value that would run as script if rendered unescaped.
XSS_COMMAND = "echo '<script>alert(\"x\")</script>'"
XSS_ENV = "<img src=x onerror=alert(1)>"
SHELL_RESULT = {"exit_code": 0, "duration": 0.012, "command": "echo hello", "stdout": "hello\nworld\n",
                "stdout_bytes": 12, "stderr": "", "stderr_bytes": 0}


def enqueue(db: Path, *args: str) -> None:
    """`queuectl --db DB enqueue ARGS`, in this process."""
    result = CliRunner().invoke(cli, ["--db", str(db), "enqueue", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def seed(db: Path) -> None:
    """Jobs in every state (SEEDED), as a worker would have left them."""
    for key in ("ok-1", "run-1", "retry-1", "dead-1", "dead-2"):
        enqueue(db, "--command", f"echo {key}", "--id", key)
    store = JobStore(str(db))
    store.open()
    try:
        claimed = {job.task_id: job.id for job in store.claim(["celery"], 5, OWNER, 300)}
        assert list(claimed) == ["ok-1", "run-1", "retry-1", "dead-1", "dead-2"]
        assert store.ack(claimed["ok-1"], OWNER)
        assert store.fail(claimed["retry-1"], OWNER, "exit code 1", max_retries=3) is JobState.FAILED
        for key in ("dead-1", "dead-2"):
            assert store.fail(claimed[key], OWNER, f"{key} ran out of retries", max_retries=0) is JobState.DEAD
    finally:
        store.close()
    enqueue(db, "--command", "echo waiting", "--id", "wait-1", "--queue", "batch")
    enqueue(db, "--command", XSS_COMMAND, "--id", "xss-1", "--env", f"XSS={XSS_ENV}")
    app = make_app(str(db))
    try:
        app.backend.store_result("ok-1", SHELL_RESULT, "SUCCESS")
    finally:
        app.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """This test's database, seeded with jobs in every state."""
    path = tmp_path / "queue.db"
    seed(path)
    return path


@pytest.fixture
def store(db: Path) -> Iterator[JobStore]:
    """A JobStore on the test's database, to look at what the dashboard changed."""
    s = JobStore(str(db))
    s.open()
    yield s
    s.close()


@pytest.fixture
def app(db: Path) -> Iterator[Flask]:
    """The dashboard on the test's database, without auth."""
    application = create_app(str(db))
    application.testing = True
    yield application
    application.extensions["queuectl"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A browser-like client of the dashboard (it keeps the session cookie)."""
    return app.test_client()


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def row_id(store: JobStore, key: str) -> int:
    """The row id of the job `key`."""
    return store.find_job(key).id


class DashboardProc(Proc):
    """A `queuectl dashboard` subprocess (this worktree's code: PYTHONPATH is inherited), its
    URL read from the line it prints once it listens."""

    def wait_listening(self, timeout: float = 20.0) -> str:
        """The base URL, once the dashboard listens."""
        def url() -> str | None:
            if not self.alive():
                raise WaitTimeout(f"the dashboard exited with {self.popen.returncode}\n{self.tail()}")
            match = re.search(r"queuectl dashboard on (http://\S+/)", self.output())
            return match.group(1) if match else None

        found: str = wait_for(url, timeout, what="the dashboard to listen", on_fail=self.tail)
        return found


@pytest.fixture
def dashboards(tmp_path: Path) -> Iterator[Callable[..., DashboardProc]]:
    """Start `queuectl --db DB dashboard ARGS` (env: extra variables); every one started is
    stopped at teardown (SIGTERM, then SIGKILL to its group)."""
    started: list[DashboardProc] = []

    def start(db: Path, *args: str, **env: str) -> DashboardProc:
        proc = DashboardProc(f"dashboard-{len(started)}", [queuectl_executable(), "--db", str(db), "dashboard", *args],
                             env=child_env(**env), cwd=tmp_path, out=tmp_path / f"dashboard-{len(started)}.out")
        started.append(proc)
        return proc

    yield start
    stop_all(started, grace=10)
