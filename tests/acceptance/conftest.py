"""Acceptance harness: a fresh SQLite broker file per test, real ``celery worker`` subprocesses,
real producer subprocesses, real signals, and an execution log kept outside the broker.

Every worker is started in its own session (tests.support.processes) so that its main process
and its pool children form one process group that the harness can SIGKILL at once. Only
processes started here are ever signalled, always by the PID/PGID the harness recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from queuectl_kombu import JobStore
from tests.support.events import Event, Layout, count_lines, read_events
from tests.support.processes import Proc, Worker, celery_argv, child_env, tail
from tests.support.waiting import WaitTimeout, wait_for

APPS_DIR = Path(__file__).resolve().parent / "apps"
WORKER_FLAGS = ["--without-mingle", "--without-gossip", "--without-heartbeat"]
#: A line of the execution log (apps/_common.py).
LAYOUT: Layout = ("event", "task_id", "tag", "pid", "pgid", "time")


class Harness:
    """Per-test state: the broker file, the execution log, and the processes started."""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest):
        self.tmp = tmp_path
        self.db = tmp_path / "broker.db"
        self.execlog = tmp_path / "exec.log"
        self.request = request
        self.workers: list[Worker] = []
        self.producers: list[Proc] = []
        self.conf: dict[str, Any] = {}
        self._n = 0
        self._lock = threading.Lock()

    # -- environment --------------------------------------------------------------------------

    def env(self, conf: dict[str, Any] | None = None, quiet: bool = False, db: Path | str | None = None,
            extra: dict[str, str] | None = None) -> dict[str, str]:
        env = child_env(APPS_DIR, unset=["QUEUECTL_DB"], QTEST_DB=str(db if db is not None else self.db),
                        QTEST_EXECLOG=str(self.execlog), QTEST_CONF=json.dumps(self.conf if conf is None else conf),
                        PYTHONUNBUFFERED="1")
        if quiet:
            env["QTEST_QUIET"] = "1"
        if extra:
            env.update(extra)
        return env

    def store(self) -> JobStore:
        return JobStore(str(self.db))

    def events(self, event: str | None = None) -> list[Event]:
        """Complete lines of the execution log (those of `event` only, if given)."""
        return read_events(self.execlog, LAYOUT, event=event)

    # -- workers ------------------------------------------------------------------------------

    def start_worker(
        self,
        app: str = "qapp",
        pool: str = "prefork",
        concurrency: int = 1,
        queues: Iterable[str] | None = None,
        prefetch_multiplier: int | None = None,
        conf: dict[str, Any] | None = None,
        quiet: bool = False,
        db: Path | str | None = None,
        extra_args: Iterable[str] = (),
        wait_ready: bool = True,
        loglevel: str = "INFO",
        name: str | None = None,
        env_extra: dict[str, str] | None = None,
    ) -> Worker:
        with self._lock:
            self._n += 1
            name = name or f"w{self._n}"
        argv = celery_argv(app, "worker", "-P", pool, "-c", str(concurrency), "-n", f"{name}@%h", *WORKER_FLAGS,
                           "-l", loglevel)
        if queues:
            argv += ["-Q", ",".join(queues)]
        if prefetch_multiplier is not None:
            argv += ["--prefetch-multiplier", str(prefetch_multiplier)]
        argv += list(extra_args)
        worker = Worker(name, argv, hostname=f"{name}@{os.uname().nodename}", env=self.env(conf, quiet, db, env_extra),
                        cwd=APPS_DIR, out=self.tmp / f"{name}.log", ready_timeout=30.0, ready_interval=0.1,
                        on_fail=self.describe)
        with self._lock:
            self.workers.append(worker)
        if wait_ready:
            worker.wait_ready()
        return worker

    # -- producers ----------------------------------------------------------------------------

    def start_producer(self, count: int, prefix: str, app: str = "qapp", quiet: bool = True,
                       max_backlog: int = 0) -> Proc:
        proc = Proc(f"producer-{prefix}",
                    [sys.executable, str(APPS_DIR / "produce.py"), app, str(count), prefix,
                     "--max-backlog", str(max_backlog)],
                    env=self.env(quiet=quiet), cwd=APPS_DIR, out=self.tmp / f"producer-{prefix}.log")
        self.producers.append(proc)
        return proc

    def wait_producers(self, procs: list[Proc], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                rc = proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise WaitTimeout(f"{proc.name} still running after {timeout:g}s\n" + self.describe()) from None
            assert rc == 0, f"{proc.name} exited with {rc}:\n{tail(proc.out, 20)}"

    # -- python snippets run as a client ------------------------------------------------------

    def run_python(self, code: str, timeout: float = 60.0, conf: dict[str, Any] | None = None,
                   **popen: Any) -> subprocess.CompletedProcess:
        """Run `code` in a fresh interpreter with the apps importable (a client process)."""
        return subprocess.run(
            [sys.executable, "-c", code], cwd=str(APPS_DIR), env=self.env(conf), capture_output=True,
            text=True, timeout=timeout, **popen,
        )

    def send(self, code: str, conf: dict[str, Any] | None = None) -> str:
        """Publish from a separate client process; `code` ends with an expression whose value is printed."""
        proc = self.run_python(code, conf=conf)
        assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout.strip().splitlines()[-1]

    # -- diagnostics --------------------------------------------------------------------------

    def describe(self) -> str:
        parts = [w.tail() for w in self.workers]
        try:
            store = JobStore(str(self.db))
            parts.append(f"--- job counts: { {str(k): v for k, v in store.counts().items()} }")
            store.close()
        except Exception as exc:  # the DB may not exist in bad-path tests
            parts.append(f"--- job counts unavailable: {exc!r}")
        parts.append(f"--- execution log: {count_lines(self.execlog)} lines; tail:\n{tail(self.execlog, 10)}")
        return "\n".join(parts)

    def wait_for(self, predicate: Callable[[], Any], timeout: float, *, what: str | Callable[[], str],
                 interval: float = 0.1) -> Any:
        """tests.support's wait_for with this test's diagnostics; a predicate that raises (reading a
        file being written) counts as not yet."""
        return wait_for(predicate, timeout, what=what, interval=interval, on_fail=self.describe,
                        retry_on=(Exception,))

    # -- teardown -----------------------------------------------------------------------------

    def close(self, reaper: Reaper | None = None) -> None:
        """SIGKILL producers still running; SIGTERM every live worker (warm shutdown) and hand
        them to `reaper`, which SIGKILLs each one's process group after a grace period. Without a
        reaper, wait here."""
        for proc in self.producers:
            if proc.alive():
                proc.kill_group()
        for worker in self.workers:
            worker.terminate()
        local = reaper or Reaper()
        local.add(self.workers)
        if reaper is None:
            local.reap(block=True)


class Reaper:
    """Finishes the shutdown of workers SIGTERMed at teardown while the next tests run: a prefork
    worker's warm shutdown takes ~2 s (billiard joins its pool), and up to 30 s when the pool
    was busy. After GRACE seconds the worker's whole process group is SIGKILLed."""

    GRACE = 5.0

    def __init__(self) -> None:
        self.pending: list[tuple[float, Worker]] = []

    def add(self, workers: Iterable[Worker]) -> None:
        deadline = time.monotonic() + self.GRACE
        self.pending.extend((deadline, w) for w in workers)
        self.reap(block=False)

    def reap(self, block: bool) -> None:
        """Finish (SIGKILL the group of: pool children left behind, or a hung main process) each
        worker that has exited or whose grace is over; with `block`, every one, waiting for each
        until its deadline."""
        still = []
        for deadline, worker in self.pending:
            if block or not worker.alive() or time.monotonic() >= deadline:
                worker.finish(deadline)
            else:
                still.append((deadline, worker))
        self.pending = still


@pytest.fixture(scope="session")
def reaper():
    r = Reaper()
    yield r
    r.reap(block=True)


@pytest.fixture
def harness(tmp_path: Path, request: pytest.FixtureRequest, reaper: Reaper):
    h = Harness(tmp_path, request)
    if "engine" in request.fixturenames and request.getfixturevalue("engine") == "postgresql":
        h.db = request.getfixturevalue("pg_url")  # type: ignore[assignment]  (a URL, not a Path)
    yield h
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(h.describe())
    h.close(reaper)


def job_states(store: JobStore) -> dict[str, int]:
    return {str(k): v for k, v in store.counts().items() if v}
