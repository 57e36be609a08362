"""Harness of the crash, load and fault tests: real SQLite files, real ``celery worker``,
producer and ``queuectl`` subprocesses, real signals, an execution log kept outside the database.

Every subprocess is started in its own session (``start_new_session=True``), so a worker's main
process and its pool children form one process group. Only processes started here are ever
signalled, by the PID / process group recorded at start; teardown sends SIGTERM to each main
process, then SIGKILL to its group after a deadline. Every wait has a deadline.

Standalone on purpose: nothing is imported from the other test folders.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
REPO = HERE.parents[1]
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


class WaitTimeout(AssertionError):
    """A condition did not hold before its deadline."""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05,
             on_fail: Callable[[], str] | None = None) -> Any:
    """Call `predicate` until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{on_fail()}" if on_fail else ""
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


def queuectl_executable() -> str:
    """The console script of this interpreter (not a pyenv shim: that adds a second of start-up)."""
    beside = Path(sys.executable).parent / "queuectl"
    if beside.exists():
        return str(beside)
    found = shutil.which("queuectl")
    if not found:
        pytest.skip("the queuectl console script is not installed (pip install -e .)")
    return found


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


# -- processes ------------------------------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    """Live, non-zombie processes of process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            members.append(pid)
    return members


def pid_alive(pid: int) -> bool:
    """True if `pid` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


class Proc:
    """A subprocess in its own session (leader of a new process group), its output in a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], out: Path, cwd: Path = APPS,
                 stdout_file: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.out = out
        self.stdout_file = stdout_file
        err = open(out, "ab")  # noqa: SIM115 - the child keeps its own descriptor
        std = open(stdout_file, "ab") if stdout_file else err  # noqa: SIM115
        try:
            self.started = time.time()
            self.popen = subprocess.Popen(
                argv, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL, stdout=std,
                stderr=err, start_new_session=True,
            )
        finally:
            err.close()
            if std is not err:
                std.close()
        self.pid = self.popen.pid
        self.killed_at: float | None = None

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.pid} rc={self.popen.poll()}>"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.out.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout(self) -> str:
        if self.stdout_file is None:
            return self.output()
        try:
            return self.stdout_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return f"--- {self.name} (pid {self.pid}, rc {self.popen.poll()}) ---\n{tail(self.out, lines)}"

    def members(self) -> list[int]:
        return group_members(self.pid)

    def kill(self) -> list[int]:
        """SIGKILL the leader only (its pool children die by PDEATHSIG); returns the pids that
        were in the group at that moment."""
        pids = self.members()
        self.killed_at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        return pids or [self.pid]

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(f"{self.name} still running after {timeout:g}s\n{self.tail()}") from None

    def wait_group_gone(self, timeout: float = 10.0) -> None:
        wait_for(lambda: self.popen.poll() is not None and not self.members(), timeout,
                 f"process group {self.pid} of {self.name} to be gone", on_fail=self.tail)

    def terminate(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def finish(self, deadline: float) -> None:
        """Teardown after terminate(): wait until `deadline` (monotonic), then SIGKILL the group."""
        try:
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        self.kill_group()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


class Worker(Proc):
    """``python -m celery -A <app> worker``; the hostname is unique per worker."""

    hostname = ""

    def is_ready(self) -> bool:
        return f"{self.hostname} ready." in self.output()

    def wait_ready(self, timeout: float = 45.0) -> Worker:
        def ready() -> bool:
            if not self.alive():
                raise WaitTimeout(f"worker {self.hostname} exited with {self.popen.returncode}\n{self.tail()}")
            return self.is_ready()

        wait_for(ready, timeout, f"worker {self.hostname} to be ready", on_fail=self.tail)
        return self

    def children(self) -> list[int]:
        return [p for p in self.members() if p != self.pid]


# -- the execution log ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """``event task_id pid [time]`` (shell jobs write no time)."""

    event: str
    task_id: str
    pid: int
    time: float | None


def read_events(path: Path) -> tuple[list[Event], list[str]]:
    """(events, malformed lines). A last line without its newline is still being written: skipped."""
    try:
        data = path.read_text()
    except FileNotFoundError:
        return [], []
    events: list[Event] = []
    bad: list[str] = []
    for line in data.splitlines(keepends=True):
        if not line.endswith("\n"):
            continue
        parts = line.split()
        try:
            if len(parts) == 4:
                events.append(Event(parts[0], parts[1], int(parts[2]), float(parts[3])))
            elif len(parts) == 3:
                events.append(Event(parts[0], parts[1], int(parts[2]), None))
            else:
                bad.append(line)
        except ValueError:
            bad.append(line)
    return events, bad


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


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
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(APPS), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        path = str(db or self.db)
        env["CRASH_DB"] = path
        env["QUEUECTL_DB"] = path
        env["CRASH_EXECLOG"] = str(self.execlog)
        env["CRASH_CONF"] = json.dumps(self.conf if conf is None else conf)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("CRASH_QUIET", None)
        if self.quiet if quiet is None else quiet:
            env["CRASH_QUIET"] = "1"
        env.update(extra)
        return env

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, cls: type[Proc] = Proc,
              cwd: Path = APPS, separate_stdout: bool = False) -> Proc:
        out = self.tmp / f"{name}.log"
        proc = cls(name, argv, env or self.env(), out, cwd,
                   stdout_file=self.tmp / f"{name}.stdout" if separate_stdout else None)
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
        argv = [*wrapper, sys.executable, "-m", "celery", "-A", app, "worker", "-P", pool, "-c", str(concurrency),
                "-n", hostname, "-l", loglevel, *WORKER_FLAGS, *extra]
        if queues:
            argv += ["-Q", ",".join(queues)]
        worker = self.spawn(name, argv, env, cls=Worker)
        assert isinstance(worker, Worker)
        worker.hostname = hostname
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
        argv = [queuectl_executable(), "--db", str(db or self.db), *args]
        return run(argv, env or self.env(), timeout)

    def run_python(self, code: str, timeout: float = 60.0, env: dict[str, str] | None = None,
                   ) -> subprocess.CompletedProcess:
        """`code` in a fresh interpreter with the apps importable (a client process)."""
        return run([sys.executable, "-c", code], env or self.env(), timeout)

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

    def describe(self) -> str:
        parts = [p.tail(15) for p in self.procs if isinstance(p, Worker)][-6:]
        with contextlib.suppress(Exception):
            parts.append(f"--- jobs per state: {self.states()}")
        parts.append(f"--- execution log: {count_lines(self.execlog)} lines")
        return "\n".join(parts)

    # -- teardown -------------------------------------------------------------------------------

    def close(self, grace: float = 10.0) -> None:
        """SIGTERM every live process (warm shutdown), then SIGKILL each group after `grace` s."""
        for proc in self.procs:
            proc.terminate()
        deadline = time.monotonic() + grace
        for proc in self.procs:
            proc.finish(deadline)


def run(argv: list[str], env: dict[str, str], timeout: float, cwd: Path = APPS) -> subprocess.CompletedProcess:
    """Run a command to its end in its own session; SIGKILL its group if it overruns."""
    proc = subprocess.Popen(argv, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise WaitTimeout(f"{argv[:4]} did not finish within {timeout:g}s\nstdout: {out}\nstderr: {err}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


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

