"""Fixtures of the CLI tests: a fresh database path per test, the CLI in-process (CliRunner) and as
the installed `queuectl` command, and teardown of every worker a test started.

Workers are started by `queuectl worker start` in their own session; teardown sends SIGTERM to the
main process, then SIGKILL to its process group. Only processes a test started are signalled, by
the pid it recorded. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from queuectl.cli import cli as cli_group
from queuectl.cli.remote import pid_running
from queuectl_kombu import JobStore
from tests.support.paths import queuectl_executable
from tests.support.waiting import WaitTimeout, wait_for


def snapshot(path: Path) -> str | None:
    """Every row of the database as SQL text (None when the file does not exist), but the spool's
    (queuectl_kombu/spool.py: its offsets, and the number a backup's copy gets of its own; see
    spool_number); opens it read-only."""
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return "\n".join(line for line in conn.iterdump() if not line.startswith('INSERT INTO "spool"'))
    finally:
        conn.close()


def spool_number(path: Path) -> int:
    """The number that names the file in its spool's files."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT position FROM spool WHERE name = ''").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where this test's database lives (not created: the CLI creates it)."""
    return tmp_path / "queue.db"


@pytest.fixture
def cli_env(tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment of the CLI: QUEUECTL_DB is this test's file; no user data directory is touched."""
    monkeypatch.setenv("QUEUECTL_DB", str(db))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    env = dict(os.environ, QUEUECTL_DB=str(db), XDG_DATA_HOME=str(tmp_path / "xdg"), PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Callable[..., Result]:
    """Run the CLI in this process: cli("list", "--format", "json") -> click Result."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli_group, list(args), input=input, catch_exceptions=False, prog_name="queuectl")

    return invoke


@pytest.fixture
def store(db: Path, cli: Callable[..., Result]) -> Iterator[JobStore]:
    """A JobStore on the test's database (creating it)."""
    s = JobStore(str(db))
    s.open()
    yield s
    s.close()


class Processes:
    """The `queuectl` command as subprocesses, and every worker they started, stopped at teardown."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.env = env
        self.tmp = tmp_path
        self.exe = queuectl_executable()
        self.worker_pids: list[int] = []
        self.foreground: list[subprocess.Popen[bytes]] = []

    def run(self, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        """Run `queuectl ARGS` to its end."""
        return subprocess.run(
            [self.exe, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def json(self, *args: str) -> Any:
        """Run a command with --format json and parse its stdout."""
        proc = self.run(*args, "--format", "json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def start_detached(self, *args: str) -> tuple[int, subprocess.CompletedProcess[str]]:
        """`queuectl worker start --detach ARGS`; returns the worker's pid (recorded for teardown)."""
        proc = self.run("worker", "start", "--detach", *args)
        match = re.search(r"pid (\d+)", proc.stderr)
        if match:
            self.worker_pids.append(int(match.group(1)))
        assert proc.returncode == 0, proc.stderr
        assert match, proc.stderr
        return int(match.group(1)), proc

    def start_foreground(self, *args: str) -> subprocess.Popen[bytes]:
        """`queuectl worker start ARGS` in the foreground, its output in worker.out."""
        with open(self.tmp / "worker.out", "ab") as out:
            proc = subprocess.Popen(
                [self.exe, "worker", "start", *args], env=self.env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.foreground.append(proc)
        self.worker_pids.append(proc.pid)
        return proc

    def stop_all(self) -> None:
        """Teardown: SIGTERM each worker's main process, then SIGKILL its whole group."""
        for pid in self.worker_pids:
            if pid_running(pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        with contextlib.suppress(WaitTimeout):  # then SIGKILL, below
            wait_for(lambda: not any(pid_running(p) for p in self.worker_pids), 15,
                     what="the workers' warm shutdown", interval=0.1)
        for pid in self.worker_pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self.foreground:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def procs(cli_env: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    """The queuectl command as subprocesses on this test's database; workers stopped at teardown."""
    p = Processes(cli_env, tmp_path)
    yield p
    p.stop_all()
