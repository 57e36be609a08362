"""Harness of the crash, load and fault tests: real SQLite files, real ``celery worker``,
producer and ``queuectl`` subprocesses, real signals, an execution log kept outside the database.

Every subprocess is started in its own session (``start_new_session=True``), so a worker's main
process and its pool children form one process group. Only processes started here are ever
signalled, by the PID / process group recorded at start; teardown sends SIGTERM to each main
process, then SIGKILL to its group after a deadline. Every wait has a deadline.

What every tier shares (waits, processes, the execution log reader) is in tests/support; this kit
holds the crash tier's own: the Rig, its kills and figures, the tmpfs mounts.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.events import Event, Layout, count_lines, parse_events
from tests.support.paths import REPO, queuectl_executable
from tests.support.processes import Proc, Worker, celery_argv, child_env, run, stop_all
from tests.support.spool import move_spool_in

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
HOST = socket.gethostname()
WORKER_FLAGS = ["--without-mingle", "--without-gossip", "--without-heartbeat"]
#: The job queue of the tests (Celery's default) and the queue of jobs held far in the future.
JOB_QUEUES = ("celery", "later")

#: Figures of this session, by test: written to .last-run.json by conftest at the end.
FIGURES: dict[str, dict[str, Any]] = {}


def record_figures(name: str, figures: dict[str, Any]) -> None:
    """Keep a test's figures for .last-run.json and print them (shown with -s)."""
    FIGURES[name] = figures
    print(f"\n[crash figures] {name}: {json.dumps(figures, sort_keys=True)}", flush=True)


LAYOUTS: tuple[Layout, ...] = (("event", "task_id", "pid", "time"), ("event", "task_id", "pid"))
"""The execution log's lines: ``event task_id pid time`` from crashapp, ``event task_id pid``
from shell jobs (see shell_job_command)."""


def shell_job_command(task_id: str, execlog: Path) -> str:
    """A run_shell command that logs its start and end (pid: the pool child, the shell's parent)."""
    return (f"echo start {task_id} $PPID >> {execlog}; "
            f"echo end {task_id} $PPID >> {execlog}")


# -- the rig: one test's database, processes and kills --------------------------------------------


@dataclass
class Kill:
    kind: str
    name: str
    time: float
    pids: list[int] = field(default_factory=list)


class Rig:
    """Per-test state: the database, the execution log, every process started, every kill made."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = tmp / "queue.db"
        self.execlog = tmp / "exec.log"
        self.procs: list[Proc] = []
        self.kills: list[Kill] = []
        self.conf: dict[str, Any] = {}
        self.quiet = False
        self._n = 0
        self._lock = threading.Lock()
        #: QUEUECTL_CRASH_SEED replays the random choices (kill times, victims) of a run.
        self.seed = int(os.environ.get("QUEUECTL_CRASH_SEED") or random.SystemRandom().randrange(1 << 31))
        self.rng = random.Random(self.seed)

    def uniq(self, prefix: str) -> str:
        with self._lock:
            self._n += 1
            return f"{prefix}{self._n}"

    # -- environment ---------------------------------------------------------------------------

    def env(self, db: Path | None = None, quiet: bool | None = None, conf: dict[str, Any] | None = None,
            **extra: str) -> dict[str, str]:
        path = str(db or self.db)
        env = child_env(APPS, REPO, unset=["CRASH_QUIET"], CRASH_DB=path, QUEUECTL_DB=path,
                        CRASH_EXECLOG=str(self.execlog), CRASH_CONF=json.dumps(self.conf if conf is None else conf),
                        PYTHONUNBUFFERED="1")
        if self.quiet if quiet is None else quiet:
            env["CRASH_QUIET"] = "1"
        env.update(extra)
        return env

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, cls: type[Proc] = Proc,
              separate_stdout: bool = False, **options: Any) -> Proc:
        """A process in the apps folder, its output in <name>.log (stdout in <name>.stdout when
        `separate_stdout`); `options` go to `cls`."""
        proc = cls(name, argv, env=env or self.env(), cwd=APPS, out=self.tmp / f"{name}.log",
                   stdout_file=self.tmp / f"{name}.stdout" if separate_stdout else None, **options)
        with self._lock:
            self.procs.append(proc)
        return proc

    # -- workers, producers, the CLI ------------------------------------------------------------

    def worker(self, name: str | None = None, app: str = "crashapp", concurrency: int = 2,
               pool: str = "prefork", queues: Iterable[str] | None = None, loglevel: str = "INFO",
               env: dict[str, str] | None = None, wait_ready: bool = True, extra: Iterable[str] = (),
               wrapper: Iterable[str] = ()) -> Worker:
        """A celery worker; `wrapper` is put before its command line (e.g. a shell setting the umask)."""
        name = name or self.uniq("w")
        hostname = f"{name}-{os.getpid()}@{HOST}"
        argv = [*wrapper, *celery_argv(app, "worker", "-P", pool, "-c", str(concurrency), "-n", hostname,
                                       "-l", loglevel, *WORKER_FLAGS, *extra)]
        if queues:
            argv += ["-Q", ",".join(queues)]
        worker = self.spawn(name, argv, env, cls=Worker, hostname=hostname, ready_timeout=45.0)
        assert isinstance(worker, Worker)
        if wait_ready:
            worker.wait_ready()
        return worker

    def producer(self, prefix: str, count: int, rate: float = 0.0, fail_every: int = 0,
                 max_sleep: float = 0.0, seed: int = 0) -> Proc:
        argv = [sys.executable, str(APPS / "produce.py"), "--prefix", prefix, "--count", str(count),
                "--rate", str(rate), "--fail-every", str(fail_every), "--max-sleep", str(max_sleep),
                "--log", str(self.producer_log(prefix)), "--seed", str(seed)]
        return self.spawn(f"producer-{prefix}", argv, separate_stdout=True)

    def producer_log(self, prefix: str) -> Path:
        return self.tmp / f"acked-{prefix}.ids"

    def cli(self, name: str, *args: str, db: Path | None = None, env: dict[str, str] | None = None) -> Proc:
        """A `queuectl` command in the background (stdout and stderr in separate files)."""
        argv = [queuectl_executable(), "--db", str(db or self.db), *args]
        return self.spawn(name, argv, env, separate_stdout=True)

    def run_cli(self, *args: str, db: Path | None = None, timeout: float = 60.0,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """A `queuectl` command to its end (own session; killed by group if it overruns)."""
        return self.run([queuectl_executable(), "--db", str(db or self.db), *args], timeout, env)

    def run_python(self, code: str, timeout: float = 60.0, env: dict[str, str] | None = None,
                   ) -> subprocess.CompletedProcess:
        """`code` in a fresh interpreter with the apps importable (a client process)."""
        return self.run([sys.executable, "-c", code], timeout, env)

    def run(self, argv: list[str], timeout: float = 60.0, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess:
        """A command to its end in the apps folder (own session; killed by group if it overruns)."""
        return run(argv, env or self.env(), timeout, cwd=APPS)

    # -- kills ----------------------------------------------------------------------------------

    def kill(self, proc: Proc, kind: str) -> Kill:
        return self._record(Kill(kind, proc.name, time.time(), proc.kill()))

    def kill_pid(self, pid: int, kind: str, name: str) -> Kill:
        record = Kill(kind, name, time.time(), [pid])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return self._record(record)

    def _record(self, record: Kill) -> Kill:
        """Keep the kill, and append it to kills.jsonl (for a post-mortem)."""
        with self._lock:
            self.kills.append(record)
            with open(self.tmp / "kills.jsonl", "a") as f:
                f.write(json.dumps(record.__dict__) + "\n")
        return record

    def killed_pids(self) -> dict[int, list[float]]:
        """pid -> times it was SIGKILLed (directly, or as a pool child of a killed main process)."""
        out: dict[int, list[float]] = defaultdict(list)
        for k in self.kills:
            for pid in k.pids:
                out[pid].append(k.time)
        return out

    # -- the database ---------------------------------------------------------------------------

    def sql(self, statement: str, params: Any = (), db: Path | None = None) -> list[tuple]:
        """A query on a connection of its own (closed at once)."""
        move_spool_in(db or self.db)  # what the store's own reads do
        conn = sqlite3.connect(str(db or self.db), timeout=30)
        try:
            return conn.execute(statement, params).fetchall()
        finally:
            conn.close()

    def integrity(self, db: Path | None = None) -> str:
        rows = self.sql("PRAGMA integrity_check", db=db)
        return "; ".join(str(r[0]) for r in rows)

    def states(self, db: Path | None = None) -> dict[str, int]:
        """Jobs per state in the job queues (remote-control and event messages left out)."""
        marks = ",".join("?" * len(JOB_QUEUES))
        return dict(self.sql(f"SELECT state, COUNT(*) FROM jobs WHERE queue IN ({marks}) GROUP BY state",
                             JOB_QUEUES, db=db))

    def stack(self, pid: int) -> str:
        """The Python stack of one process (py-spy, when installed)."""
        spy = shutil.which("py-spy")
        if spy is None:
            return "(py-spy is not installed: no stack)"
        try:
            done = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            return "(py-spy timed out)"
        return done.stdout or done.stderr

    def stacks(self) -> str:
        """Python stacks of every live worker process (py-spy, when installed): what a stuck
        worker or pool child is waiting for."""
        out = []
        for w in self.procs:
            if isinstance(w, Worker) and w.alive():
                for pid in w.members():
                    out.append(f"--- {w.name} pid {pid}:\n{self.stack(pid)}")
        return "\n".join(out)

    def events(self) -> tuple[list[Event], list[str]]:
        """(events, malformed lines) of the execution log so far (see LAYOUTS)."""
        return parse_events(self.execlog, *LAYOUTS)

    def describe(self) -> str:
        parts = [p.tail(15) for p in self.procs if isinstance(p, Worker)][-6:]
        with contextlib.suppress(Exception):
            parts.append(f"--- jobs per state: {self.states()}")
        parts.append(f"--- execution log: {count_lines(self.execlog)} lines")
        return "\n".join(parts)

    # -- teardown -------------------------------------------------------------------------------

    def close(self, grace: float = 10.0) -> None:
        """SIGTERM every live process (warm shutdown), then SIGKILL each group after `grace` s."""
        stop_all(self.procs, grace)


# -- file systems to fill -------------------------------------------------------------------------


class Mount:
    """A small tmpfs (or read-only tmpfs) at `where`; skip the test when mounting is not permitted."""

    def __init__(self, where: Path, size: str = "4m", read_only: bool = False) -> None:
        self.where = where
        where.mkdir(parents=True, exist_ok=True)
        opts = f"size={size},mode=0700" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "queuectl-crash", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
        self.mounted = True

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.where)], check=True,
                       capture_output=True)

    def free_bytes(self) -> int:
        st = os.statvfs(self.where)
        return st.f_bavail * st.f_frsize

    def fill(self, name: str = "filler") -> Path:
        """Write a file until the file system is full (ENOSPC); returns its path."""
        path = self.where / name
        chunk = b"\0" * 4096
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                try:
                    os.write(fd, chunk)
                except OSError:
                    break
        finally:
            os.close(fd)
        return path

    def unmount(self) -> None:
        if not self.mounted:
            return
        for _ in range(50):
            if subprocess.run(["umount", str(self.where)], capture_output=True).returncode == 0:
                self.mounted = False
                return
            time.sleep(0.1)
        subprocess.run(["umount", "-l", str(self.where)], capture_output=True)
        self.mounted = False

