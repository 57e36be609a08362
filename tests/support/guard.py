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
  (an xdist worker's end fails that test and, with pyproject's ``--max-worker-restart 0``, the
  run: a replaced worker left a ``--dist loadfile`` run waiting for good);
* ``exit_backstop``: the same once the session is over, for an exit that does not finish;
* ``Reaper``: everything the tests start carries a token of the run in its environment; at the
  end, whatever still runs with it is named on stderr and SIGKILLed, by its pid (with its process
  group when it leads one).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import time

from .processes import stat_fields


def exit_backstop(seconds: float) -> None:
    """Ends this process (exit 1), every thread's stack printed on stderr, if it has not exited
    `seconds` from now: faulthandler's watchdog, a C thread that needs no GIL."""
    faulthandler.dump_traceback_later(seconds, exit=True, file=os.dup(2))


class Reaper:
    """Marks this process's environment with a token of its own, which every process the tests
    start inherits (xdist workers, celery workers and their pools, commands), and at the end
    finds whatever still runs with it. No subreaper: a process made one would be handed every
    orphan of the run (a SIGKILLed worker's pool processes) and keep them as zombies that the
    tests wait to see gone."""

    VARIABLE = "QUEUECTL_TEST_RUN"

    def __init__(self) -> None:
        self.token = f"{os.getpid()}-{time.time_ns()}"
        os.environ[self.VARIABLE] = self.token

    def leftovers(self) -> list[tuple[int, int, str]]:
        """(pid, pgid, command line) of the live processes that carry this run's token, this
        one aside."""
        mark = b"\0" + f"{self.VARIABLE}={self.token}".encode() + b"\0"
        me = os.getpid()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if mark not in b"\0" + f.read() + b"\0":
                        continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            fields = stat_fields(int(entry))
            if fields is not None and fields[0] != "Z":
                found.append((int(entry), int(fields[2]), cmd))
        return found

    def reap(self) -> list[str]:
        """SIGKILL every process left that carries the token (by its pid, and the group it leads);
        returns what was killed, one line each."""
        killed = []
        for pid, pgid, cmd in self.leftovers():
            killed.append(f"pid {pid}: {cmd[:200]}")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if pgid == pid:
                    os.killpg(pgid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
        return killed
