"""Acceptance harness: a fresh SQLite broker file per test, real ``celery worker`` subprocesses,
real producer subprocesses, real signals, and an execution log kept outside the broker.

Every worker is started in its own session (``start_new_session=True``) so that its main
process and its pool children form one process group that the harness can SIGKILL at once.
Only processes started here are ever signalled, always by the PID/PGID the harness recorded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from queuectl_kombu import JobStore

APPS_DIR = Path(__file__).resolve().parent / "apps"
WORKER_FLAGS = ["--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "INFO"]


class WaitTimeout(AssertionError):
    """A condition did not hold before its deadline."""


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    interval: float = 0.1,
    message: str | Callable[[], str] = "condition",
    describe: Callable[[], str] | None = None,
) -> Any:
    """Poll `predicate` until it returns a truthy value (returned) or raise WaitTimeout.

    `message` says what was awaited; `describe` adds context (worker log tails, DB state).
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
        except AssertionError:  # a predicate may fail the test at once (e.g. a worker died)
            raise
        except Exception as exc:  # a predicate reading a file being written may fail once
            value, last_exc = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            parts = [f"timed out after {timeout:g}s waiting for: {text}"]
            if last_exc is not None:
                parts.append(f"last predicate error: {last_exc!r}")
            if describe is not None:
                parts.append(describe())
            raise WaitTimeout("\n".join(parts))
        time.sleep(interval)


# -- execution log ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One line of the execution log: ``event task_id tag pid pgid time``."""

    event: str
    task_id: str
    tag: str
    pid: int
    pgid: int
    time: float


def read_events(path: Path, event: str | None = None) -> list[Event]:
    """Complete lines of the execution log (a line being written is ignored)."""
    try:
        data = path.read_text()
    except FileNotFoundError:
        return []
    events = []
    for line in data.splitlines(keepends=True):
        if not line.endswith("\n"):
            continue
        name, task_id, tag, pid, pgid, when = line.split()
        if event is None or name == event:
            events.append(Event(name, task_id, tag, int(pid), int(pgid), float(when)))
    return events


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


# -- processes --------------------------------------------------------------------------------


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text[-lines:])


def pgid_alive(pgid: int) -> bool:
    """True while any process of group `pgid` exists (zombies included until reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Worker:
    """One ``python -m celery -A <app> worker`` subprocess, leader of its own process group."""

    def __init__(self, harness: Harness, name: str, argv: list[str], env: dict[str, str], log: Path):
        self.harness = harness
        self.name = name
        self.argv = argv
        self.log = log
        self._log_file = open(log, "ab")
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            argv,
            cwd=str(APPS_DIR),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.pgid = self.pid  # start_new_session: the worker leads a new session and group

    def __repr__(self) -> str:
        return f"<Worker {self.name} pid={self.pid} rc={self.proc.poll()}>"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.name} (pid {self.pid}, rc {self.proc.poll()}) log tail ---\n{tail(self.log, lines)}"

    def is_ready(self) -> bool:
        return f"{self.name} ready." in self.output()

    def wait_ready(self, timeout: float = 30.0) -> Worker:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise WaitTimeout(f"worker {self.name} exited with {self.proc.returncode}\n{self.tail()}")
            return self.is_ready()

        self.harness.wait_for(ready, timeout, 0.1, f"worker {self.name} to be ready")
        return self

    def children(self) -> list[int]:
        """PIDs of the other live processes in this worker's group (the pool)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.pid:
                continue
            try:
                if os.getpgid(int(entry)) == self.pgid:
                    pids.append(int(entry))
            except OSError:
                continue
        return pids

    def terminate(self) -> None:
        """Graceful (warm) shutdown: SIGTERM to the main process only, as an init system does.

        (SIGTERM to the whole group would also hit the pool children while they may hold the
        pool's queue lock; billiard's main process can then hang forever in _help_stuff_finish.)
        """
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)

    def kill_group(self) -> None:
        """SIGKILL the main process and every child in its process group."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(
                f"worker {self.name} did not exit within {timeout:g}s\n{self.tail()}"
            ) from None

    def wait_group_gone(self, timeout: float = 10.0) -> None:
        self.proc.poll()
        self.harness.wait_for(
            lambda: self.proc.poll() is not None and not pgid_alive(self.pgid),
            timeout, 0.05, f"process group {self.pgid} of {self.name} to be gone",
        )

    def stop(self, grace: float = 15.0) -> None:
        """Teardown: SIGTERM, wait up to `grace`, then SIGKILL the whole group."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._log_file.close()


class Harness:
    """Per-test state: the broker file, the execution log, and the processes started."""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest):
        self.tmp = tmp_path
        self.db = tmp_path / "broker.db"
        self.execlog = tmp_path / "exec.log"
        self.request = request
        self.workers: list[Worker] = []
        self.producers: list[subprocess.Popen] = []
        self.conf: dict[str, Any] = {}
        self._n = 0
        self._lock = threading.Lock()

    # -- environment --------------------------------------------------------------------------

    def env(self, conf: dict[str, Any] | None = None, quiet: bool = False, db: Path | str | None = None,
            extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(APPS_DIR)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        env["QTEST_DB"] = str(db if db is not None else self.db)
        env["QTEST_EXECLOG"] = str(self.execlog)
        env["QTEST_CONF"] = json.dumps(self.conf if conf is None else conf)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("QUEUECTL_DB", None)
        if quiet:
            env["QTEST_QUIET"] = "1"
        if extra:
            env.update(extra)
        return env

    def store(self) -> JobStore:
        return JobStore(str(self.db))

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
        argv = [sys.executable, "-m", "celery", "-A", app, "worker", "-P", pool, "-c", str(concurrency),
                "-n", f"{name}@%h", *WORKER_FLAGS]
        argv[argv.index("-l") + 1] = loglevel
        if queues:
            argv += ["-Q", ",".join(queues)]
        if prefetch_multiplier is not None:
            argv += ["--prefetch-multiplier", str(prefetch_multiplier)]
        argv += list(extra_args)
        worker = Worker(self, f"{name}@{os.uname().nodename}", argv,
                        self.env(conf, quiet, db, env_extra), self.tmp / f"{name}.log")
        with self._lock:
            self.workers.append(worker)
        if wait_ready:
            worker.wait_ready()
        return worker

    # -- producers ----------------------------------------------------------------------------

    def start_producer(self, count: int, prefix: str, app: str = "qapp", quiet: bool = True,
                       max_backlog: int = 0) -> subprocess.Popen:
        out = open(self.tmp / f"producer-{prefix}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, str(APPS_DIR / "produce.py"), app, str(count), prefix,
             "--max-backlog", str(max_backlog)],
            cwd=str(APPS_DIR), env=self.env(quiet=quiet), stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        out.close()
        proc.prefix = prefix  # type: ignore[attr-defined]
        self.producers.append(proc)
        return proc

    def wait_producers(self, procs: list[subprocess.Popen], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                rc = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise WaitTimeout(f"producer {proc.prefix} still running after {timeout:g}s\n"
                                  + self.describe()) from None
            log = tail(self.tmp / f"producer-{proc.prefix}.log", 20)
            assert rc == 0, f"producer {proc.prefix} exited with {rc}:\n{log}"

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

    def wait_for(self, predicate: Callable[[], Any], timeout: float, interval: float = 0.1,
                 message: str | Callable[[], str] = "condition") -> Any:
        return wait_for(predicate, timeout, interval, message, self.describe)

    # -- teardown -----------------------------------------------------------------------------

    def close(self, reaper: Reaper | None = None) -> None:
        """SIGKILL producers still running; SIGTERM every live worker (warm shutdown) and hand
        them to `reaper`, which SIGKILLs each one's process group after a grace period. Without a
        reaper, wait here."""
        for proc in self.producers:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
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
        still = []
        for deadline, worker in self.pending:
            if block:
                try:
                    worker.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            if worker.proc.poll() is not None or time.monotonic() >= deadline:
                worker.stop(grace=0)  # SIGKILL the group: pool children left behind, or a hung main
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
    yield h
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(h.describe())
    h.close(reaper)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def job_states(store: JobStore) -> dict[str, int]:
    return {str(k): v for k, v in store.counts().items() if v}
