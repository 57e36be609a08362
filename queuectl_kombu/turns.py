"""Writers of one SQLite file take turns: an flock on its -wal file, held from BEGIN IMMEDIATE to
COMMIT, so that a writer who finds the write lock taken sleeps in the kernel and wakes as it is
released, in turn, instead of in SQLite's busy handler (sleeps of 1 to 100 ms, growing).

The turn is a courtesy, not the lock: SQLite's own lock still keeps the file consistent, and a
writer that takes no turn (the sqlite3 shell, an application's connection in enqueue_in) only
falls back on the busy handler. So it fails open: no -wal file yet, or an flock refused, and the
write goes on as it would have. A process killed in its turn loses it with its descriptors.

Why the -wal file: SQLite takes no POSIX lock on it (strace -e fcntl: none, where the database
file and -shm get dozens per commit), so a descriptor of it can be opened and closed at will.
Closing any descriptor of the database file would drop every POSIX lock this process holds on
it, SQLite's included, and -shm holds SQLite's locks too. The -wal file goes with the last
connection to the file and comes back with the next: it is opened for each turn.

The close that ends a turn comes after the COMMIT, once the commit is visible to other
connections: it is also what wakes the file's watchers (notify.py) for certain. The -wal file's
writes wake them too, but they come before the commit is visible, and a watcher quick enough to
look between the two would find nothing and sleep on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator

#: Whether this thread holds a turn (of any file).
_held = threading.local()


class TurnTaken(Exception):
    """Another writer has the turn, and the caller would rather not wait for it (a publish that
    goes to the spool instead: spool.py)."""


class WriterTurns:
    """The turn of one file's writers. The -wal file is opened for each turn and closed after it
    (a few microseconds): no descriptor outlives a write, whatever becomes of the file, and none
    is shared with a child after fork() (flock belongs to the open file description)."""

    def __init__(self, db_path: str) -> None:
        self.wal_path = db_path + "-wal"

    @contextlib.contextmanager
    def turn(self, *, wait: bool = True) -> Iterator[bool]:
        """Hold the turn meanwhile; yields whether one was had (False: no -wal file yet, or no
        flock here). The threads of one process take turns among themselves first
        (db._write_lock): two threads' flocks on two descriptors would exclude each other too.
        Without `wait`, TurnTaken when another writer holds it."""
        try:
            fd = os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            yield False
            return
        try:
            if getattr(_held, "turn", False):
                # a write to a second file inside a write to the first: waiting for a second turn
                # while holding one could deadlock with a process doing the opposite (flock has no
                # timeout, SQLite's busy handler has); the descriptor's close still wakes watchers
                yield False
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TurnTaken(self.wal_path) from None
            except OSError:
                yield False
                return
            _held.turn = True
            try:
                yield True
            finally:
                _held.turn = False
        finally:
            os.close(fd)  # which ends the turn, and wakes the file's watchers (IN_CLOSE_NOWRITE)
