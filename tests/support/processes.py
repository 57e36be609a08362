"""Subprocesses of the tests: ``celery worker`` and the other commands a test starts.

Every process is started in its own session (``start_new_session=True``): its pid is the id of a
new process group that holds it and its children (a prefork worker's pool), so the whole of it
can be SIGKILLed at once. Only processes started here are ever signalled, by the pid / process
group recorded at start. Their output goes to files, read back for readiness and diagnostics.
Teardown is a warm shutdown (SIGTERM to the main process only, as an init system does), then
SIGKILL to the whole group after a grace period. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .waiting import WaitTimeout, wait_for

# -- looking at processes ------------------------------------------------------------------------


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def pid_alive(pid: int) -> bool:
    """True if `pid` runs (a zombie counts as gone)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live, non-zombie processes of process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry))
    return members


def group_exists(pgid: int) -> bool:
    """True while any process of group `pgid` exists, zombies included until they are reaped."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of the text file at `path` (or a note that it does not exist)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


# -- starting them -------------------------------------------------------------------------------


def child_env(*pythonpath: Path | str, unset: Iterable[str] = (), **values: str) -> dict[str, str]:
    """This process's environment for a child: `pythonpath` put before the inherited PYTHONPATH,
    the variables in `unset` removed, then `values` set."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    for name in unset:
        env.pop(name, None)
    env.update(values)
    return env


def celery_argv(app: str, *args: str) -> list[str]:
    """The command line of ``celery -A <app> ARGS`` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", app, *args]


def run(argv: Sequence[str], env: dict[str, str], timeout: float, cwd: Path | str | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """Run a command to its end in its own session (stdout and stderr captured as text); SIGKILL
    its group and raise WaitTimeout if it overruns `timeout`."""
    proc = subprocess.Popen(list(argv), cwd=None if cwd is None else str(cwd), env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise WaitTimeout(f"{list(argv)[:4]} did not finish within {timeout:g}s\n"
                          f"stdout: {out}\nstderr: {err}") from None
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


class Proc:
    """A subprocess leading its own session and process group, its output in the file `out`
    (stdout in `stdout_file` instead when one is given)."""

    def __init__(self, name: str, argv: Sequence[str], *, env: dict[str, str], cwd: Path | str,
                 out: Path, stdout_file: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.out = out
        self.stdout_file = stdout_file
        err = open(out, "ab")  # noqa: SIM115 - the child keeps its own descriptor
        std = open(stdout_file, "ab") if stdout_file else err  # noqa: SIM115
        try:
            self.started = time.time()
            self.popen = subprocess.Popen(
                self.argv, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL, stdout=std, stderr=err,
                start_new_session=True,
            )
        finally:
            err.close()
            if std is not err:
                std.close()
        self.pid = self.popen.pid
        self.pgid = self.pid  # start_new_session: it leads a new session and process group
        #: When kill() SIGKILLed it (None: never).
        self.killed_at: float | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid} rc={self.popen.poll()}>"

    # -- state and output ----------------------------------------------------------------------

    def alive(self) -> bool:
        """True until the main process has exited."""
        return self.popen.poll() is None

    def output(self) -> str:
        """Everything it wrote to `out` so far."""
        try:
            return self.out.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout(self) -> str:
        """What it wrote to its stdout so far (its whole output when stdout was not separate)."""
        if self.stdout_file is None:
            return self.output()
        try:
            return self.stdout_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        """The end of its output, headed by its name, pid and exit code (for failure messages)."""
        return f"--- {self.name} (pid {self.pid}, rc {self.popen.poll()}) ---\n{tail(self.out, lines)}"

    def members(self) -> list[int]:
        """Live processes of its group (itself included while it runs)."""
        return group_members(self.pgid)

    def children(self) -> list[int]:
        """Live processes of its group other than itself (a prefork worker's pool)."""
        return [p for p in self.members() if p != self.pid]

    # -- signals and waits ---------------------------------------------------------------------

    def terminate(self) -> None:
        """SIGTERM to the main process only (a worker's warm shutdown). SIGTERM to the whole
        group would also hit pool children that may hold the pool's queue lock; billiard's main
        process can then hang for ever in _help_stuff_finish."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> list[int]:
        """SIGKILL the main process only (a worker's pool children die by PDEATHSIG); returns the
        pids that were in its group at that moment."""
        pids = self.members()
        self.killed_at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        return pids or [self.pid]

    def signal_group(self, sig: int) -> None:
        """Send `sig` to every process of its group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def kill_group(self) -> None:
        """SIGKILL the main process and every process of its group at once; reap the main process."""
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def wait(self, timeout: float) -> int:
        """Its exit code, once the main process has exited; WaitTimeout after `timeout` s."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(f"{self.name} still running after {timeout:g}s\n{self.tail()}") from None

    def wait_group_gone(self, timeout: float = 10.0, *, zombies: bool = False) -> None:
        """Until the main process has exited and no process of its group runs (or, with
        `zombies`, exists at all: its dead children reaped too)."""
        def gone() -> bool:
            if self.popen.poll() is None:
                return False
            return not group_exists(self.pgid) if zombies else not self.members()

        wait_for(gone, timeout, what=f"process group {self.pgid} of {self.name} to be gone", on_fail=self.tail)

    def finish(self, deadline: float) -> None:
        """Teardown after terminate(): wait for the main process until `deadline` (monotonic), then
        SIGKILL the whole group (pool children left behind, or a hung main process)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        self.kill_group()

    def stop(self, grace: float = 15.0) -> int | None:
        """Teardown: terminate(), then SIGKILL the group after `grace` s; returns the exit code."""
        self.terminate()
        self.finish(time.monotonic() + grace)
        return self.popen.returncode


def stop_all(procs: Iterable[Proc], grace: float = 15.0) -> None:
    """Teardown of several processes at once: SIGTERM to each, then SIGKILL to each group still
    there after `grace` s."""
    procs = list(procs)
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        proc.finish(deadline)


class Worker(Proc):
    """A ``celery worker`` (see celery_argv) known by its node name, `hostname`.

    Ready once its output has the line ``<hostname> ready.`` (a subclass may say otherwise by
    is_ready); wait_ready() waits for that at most `ready_timeout` s, failing at once if the worker
    exits, with what `on_fail` returns (its own output by default) in the message.
    """

    def __init__(self, name: str, argv: Sequence[str], *, hostname: str, ready_timeout: float = 45.0,
                 ready_interval: float = 0.05, on_fail: Callable[[], str] | None = None, **popen: Any) -> None:
        self.hostname = hostname
        self.ready_timeout = ready_timeout
        self.ready_interval = ready_interval
        self.on_fail = on_fail or self.tail
        super().__init__(name, argv, **popen)

    def is_ready(self) -> bool:
        return f"{self.hostname} ready." in self.output()

    def wait_ready(self, timeout: float | None = None, *, ready: Callable[[], bool] | None = None) -> Worker:
        """Until `ready` (is_ready by default) answers true; returns the worker."""
        check = ready or self.is_ready

        def up() -> bool:
            if not self.alive():
                raise WaitTimeout(f"worker {self.hostname} exited with {self.popen.returncode}\n{self.tail()}")
            return check()

        wait_for(up, self.ready_timeout if timeout is None else timeout, what=f"worker {self.hostname} to be ready",
                 interval=self.ready_interval, on_fail=self.on_fail)
        return self
