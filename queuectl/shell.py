"""Running one shell command: its own process group (killed on a timeout, and with the pool process
that runs it when Celery terminates the task), a timeout, and the tails of its output."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import IO, Any

#: Bytes kept of each of stdout and stderr: the last ones, where errors usually are.
OUTPUT_LIMIT = 64 * 1024
#: Bytes of stderr quoted in the message of a failure (the whole tail is in the outcome).
MESSAGE_STDERR_LIMIT = 2000
#: Seconds to wait for the output pipes to close once the shell has exited.
PIPE_GRACE = 1.0


@dataclass(frozen=True)
class CommandOutcome:
    """What one run of a command produced (JSON-able through as_dict)."""

    command: str
    exit_code: int | None
    duration: float
    stdout: str
    stderr: str
    stdout_bytes: int
    stderr_bytes: int
    timed_out: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The outcome as a JSON-able dict (the run_shell task's result)."""
        return asdict(self)


class CommandFailed(Exception):
    """The command exited with a non-zero code (or could not start)."""

    def __init__(self, message: str, outcome: dict[str, Any] | None = None) -> None:
        super().__init__(message, outcome)

    @property
    def message(self) -> str:
        """The one-line reason, with the exit code and the stderr tail."""
        return str(self.args[0])

    @property
    def outcome(self) -> dict[str, Any] | None:
        """The run's outcome (exit code, duration, output tails), when it ran."""
        return self.args[1] if len(self.args) > 1 else None

    def __str__(self) -> str:
        return self.message


class CommandTimedOut(CommandFailed):
    """The command ran past its timeout; its whole process group was killed."""


class _Tail(threading.Thread):
    """Reads a pipe to its end, keeping only the last `limit` bytes."""

    def __init__(self, pipe: IO[bytes], limit: int) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def run(self) -> None:
        fd = self.pipe.fileno()
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.total += len(chunk)
                self.data += chunk
                if len(self.data) > 2 * self.limit:  # trim now and then, not on every read
                    del self.data[: len(self.data) - self.limit]
        except OSError:
            pass

    def text(self) -> str:
        """The kept tail, decoded (a character cut at the start shows as U+FFFD)."""
        return bytes(self.data[-self.limit :]).decode("utf-8", errors="replace")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@contextlib.contextmanager
def _group_dies_with_us(pgid: int) -> Iterator[None]:
    """While the command runs: a SIGTERM to this process kills the command's process group
    first, then this process as SIGTERM would have.

    The command runs in a session of its own (so that a timeout can kill all of it), which a
    signal to this process does not reach. Celery terminates a task (``revoke(terminate=True)``,
    ``queuectl cancel``) by sending SIGTERM to the prefork pool process that runs it; without this
    the command would run on, orphaned. Only where SIGTERM has its default action and on the main
    thread (a prefork pool process): a solo worker's own SIGTERM handler (warm shutdown) is left
    alone, and threads cannot take signals.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        _kill_group(pgid)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # die of it, as Celery expects of a terminated pool process

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_command(
    command: str,
    *,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    limit: int = OUTPUT_LIMIT,
) -> CommandOutcome:
    """Run `command` through ``/bin/sh -c`` in a new session; on timeout kill its process group.

    `env` is added to this process's environment. Raises OSError if the shell cannot start
    (a missing `cwd`, for example).
    """
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    started = time.monotonic()
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # the command and its children form one group we can kill
    )
    assert proc.stdout is not None and proc.stderr is not None
    readers = [_Tail(proc.stdout, limit), _Tail(proc.stderr, limit)]
    for reader in readers:
        reader.start()
    timed_out = False
    try:
        with _group_dies_with_us(proc.pid):
            proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc.pid)
        proc.wait()
    except BaseException:  # the worker is going away: leave no orphan group behind
        _kill_group(proc.pid)
        proc.wait()
        raise
    finally:
        duration = time.monotonic() - started
    for reader in readers:
        reader.join(PIPE_GRACE)
    if any(reader.is_alive() for reader in readers):
        # Background children of a finished command still hold its output pipes open.
        _kill_group(proc.pid)
        for reader in readers:
            reader.join()
    proc.stdout.close()
    proc.stderr.close()
    return CommandOutcome(
        command=command,
        exit_code=proc.returncode,
        duration=round(duration, 6),
        stdout=readers[0].text(),
        stderr=readers[1].text(),
        stdout_bytes=readers[0].total,
        stderr_bytes=readers[1].total,
        timed_out=timed_out,
    )


def check_outcome(outcome: CommandOutcome, timeout: float | None = None) -> dict[str, Any]:
    """The outcome as a dict if the command succeeded; else raise CommandFailed or CommandTimedOut."""
    result = outcome.as_dict()
    tail = outcome.stderr[-MESSAGE_STDERR_LIMIT:].strip()
    suffix = f"; stderr: {tail}" if tail else ""
    if outcome.timed_out:
        raise CommandTimedOut(
            f"command timed out after {timeout:g}s and its process group was killed{suffix}", result
        )
    if outcome.exit_code != 0:
        raise CommandFailed(f"command exited with code {outcome.exit_code}{suffix}", result)
    return result
