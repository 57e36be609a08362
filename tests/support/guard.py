"""What keeps one stuck test from stalling the whole run: CI waits for the suite to end, and a
suite that never ends is worse than one that fails.

pytest-timeout's alarm (pyproject: ``timeout``) fails a test that runs too long, once, by raising
in the main thread. It cannot end a hang it does not reach: a teardown stuck after the alarm, a
wait inside code that swallows BaseException, an interpreter exit that joins a thread or a child
for ever. And a process a test started that outlives the run (a worker whose stop failed) keeps
the output pipe of the run open, so the run does not end for whoever reads it.

Three backstops, none of which a passing run ever reaches:

* ``Backstop``: a timer per test, armed for longer than the alarm. When it fires, the test's
  process prints every thread's stack on the real stderr and exits at once (an xdist worker's
  exit fails that test and the run goes on with a new worker).
* ``exit_backstop``: the same once the session is over, for an exit that does not finish.
* ``Reaper``: the main pytest process becomes the subreaper of everything the tests start, so a
  process orphaned by its test is re-parented to it, not to init; at the end, whatever is left
  is named on stderr and SIGKILLed, by its pid (with its process group when it leads one).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import os
import signal
import sys
import threading
from typing import Any

#: prctl(2): PR_SET_CHILD_SUBREAPER
_PR_SET_CHILD_SUBREAPER = 36


def _real_stderr(config: Any) -> Any:
    """sys.stderr with pytest's capture suspended (the terminal, or an xdist worker's stderr)."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        with contextlib.suppress(Exception):
            capman.suspend_global_capture(in_=True)
    return sys.stderr


def _abandon(config: Any, why: str, status: int) -> None:
    err = _real_stderr(config)
    with contextlib.suppress(Exception):
        err.write(f"\n+++ {why}: every thread's stack, then exit {status} +++\n")
        err.flush()
        faulthandler.dump_traceback(file=err, all_threads=True)
        err.flush()
    os._exit(status)


class Backstop:
    """A daemon timer that ends this process after `seconds` unless cancelled."""

    def __init__(self, config: Any, seconds: float, why: str, status: int = 70) -> None:
        self._timer = threading.Timer(seconds, _abandon, args=(config, why, status))
        self._timer.daemon = True
        self._timer.name = "test-backstop"

    def __enter__(self) -> Backstop:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def exit_backstop(config: Any, seconds: float, status: int) -> None:
    """Ends this process with `status` if it has not exited `seconds` from now (a daemon timer:
    it runs while the interpreter waits for non-daemon threads and atexit handlers)."""
    Backstop(config, seconds, f"pytest did not exit within {seconds:g}s of the session's end", status).__enter__()


class Reaper:
    """The subreaper of this process's descendants (Linux); see the module's docstring."""

    def __init__(self) -> None:
        self.active = False
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            self.active = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0

    @staticmethod
    def _children() -> list[tuple[int, int, str]]:
        """(pid, pgid, command line) of this process's live children."""
        me = os.getpid()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                fields = stat[stat.rindex(")") + 2:].split()
                if fields[0] == "Z" or int(fields[1]) != me:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except (OSError, ValueError):
                continue
            found.append((int(entry), int(fields[2]), cmd))
        return found

    def reap(self) -> list[str]:
        """SIGKILL every live child left (and the group it leads); reap the dead. Returns what
        was killed, one line each."""
        if not self.active:
            return []
        killed = []
        for pid, pgid, cmd in self._children():
            killed.append(f"pid {pid}: {cmd[:200]}")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if pgid == pid:
                    os.killpg(pgid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        return killed
