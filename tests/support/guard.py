"""What keeps one stuck test from stalling the whole run: CI waits for the suite to end, and a
suite that never ends is worse than one that fails.

pytest-timeout's alarm (pyproject: ``timeout``) fails a test that runs too long, once, by raising
in the main thread. It cannot end a hang it does not reach: a teardown stuck after the alarm, a
wait inside code that swallows BaseException, or a thread stuck in C with the GIL held, where no
Python code of any thread runs again (CPython 3.11's sys._current_frames() did that to a test
here: the frame it allocated started a collection that freed a threading.local, which waited for
the lock the call held; CI then ran out its 90 minutes). And a process a test started that
outlives the run (a worker whose stop failed) keeps the output pipe of the run open.

So the backstops need no GIL, and a passing run never reaches them:

* per test, pyproject's ``faulthandler_timeout`` with ``faulthandler_exit_on_timeout``: past it,
  faulthandler's own C thread prints every thread's stack on the real stderr and ends the process
  (an xdist worker's end fails that test; the run goes on with a new worker);
* ``exit_backstop``: the same once the session is over, for an exit that does not finish;
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

#: prctl(2): PR_SET_CHILD_SUBREAPER
_PR_SET_CHILD_SUBREAPER = 36


def exit_backstop(seconds: float) -> None:
    """Ends this process (exit 1), every thread's stack printed on stderr, if it has not exited
    `seconds` from now: faulthandler's watchdog, a C thread that needs no GIL."""
    faulthandler.dump_traceback_later(seconds, exit=True, file=os.dup(2))


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
