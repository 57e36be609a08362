"""Wake-ups when the database changes: inotify on the WAL file, or a short poll where there is none."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import time

logger = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_CLOSE_NOWRITE = 0x00000010
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_IGNORED = 0x00008000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")
#: IN_MODIFY: the -wal file is written, by any writer, the application's connection inside
#: enqueue_in included. But SQLite writes a commit's frames first and makes the commit visible
#: after them (the WAL index header, in shared memory: no event), so a watcher that woke and
#: looked in between finds nothing and would sleep until the next commit or its timer (1 s).
#: IN_CLOSE_NOWRITE: a queuectl writer's turn ends after its COMMIT with the close of its
#: read-only descriptor of the -wal file (turns.py), an event once the commit is visible.
_MASK = IN_MODIFY | IN_CLOSE_NOWRITE | IN_CLOSE_WRITE | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.inotify_init1  # noqa: B018 - probe
    except (OSError, AttributeError):
        return None
    return libc


class ChangeWaiter:
    """Blocks until the database's WAL file is written (any process, any commit) or a timeout.

    Every commit in WAL mode writes the -wal file, so an inotify watch on it wakes a consumer
    within microseconds of a publish or an ack, and costs nothing while nothing happens. Where
    inotify is missing it falls back to sleeping `poll_interval`; callers re-check the database
    (PRAGMA data_version) after every wake-up, so a spurious wake-up is harmless.
    """

    def __init__(self, db_path: str, poll_interval: float = 0.05) -> None:
        self.wal_path = db_path + "-wal"
        self.poll_interval = poll_interval
        self._fd = -1
        self._wd = -1
        #: a spool directory (spool.py) watched too: its files' appends are publishes
        self.spool_dir: str | None = None
        self._pid = os.getpid()
        self._libc = _libc()
        if self._libc is not None:
            fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                self._watch()
        if self._fd < 0:
            logger.info("inotify is not available: polling %s every %gs", db_path, poll_interval)

    @property
    def pushes_changes(self) -> bool:
        """True when wake-ups come from the kernel (inotify) rather than from polling."""
        return self._fd >= 0 and self._wd >= 0

    def fileno(self) -> int:
        """The inotify descriptor (-1 when polling), for an event loop to watch."""
        return self._fd

    def _watch(self) -> None:
        assert self._libc is not None
        if not os.path.exists(self.wal_path):
            self._wd = -1
            return
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(self.wal_path), _MASK)
        self._wd = wd if wd >= 0 else -1
        if self.spool_dir is not None:
            self._libc.inotify_add_watch(self._fd, os.fsencode(self.spool_dir), IN_MODIFY)

    def watch_publishes(self, spool_dir: str) -> None:
        """Wake on publishes spooled too (a consumer's waiter), not only on commits: every append
        to a file of `spool_dir` is one (IN_MODIFY of the directory's files)."""
        if self.spool_dir == spool_dir:
            return
        self.spool_dir = spool_dir
        if self._libc is not None and self._fd >= 0:
            self._libc.inotify_add_watch(self._fd, os.fsencode(spool_dir), IN_MODIFY)

    def drain(self) -> None:
        """Read pending events; re-arm the watch if the WAL file went away and came back."""
        if self._fd < 0:
            return
        rearm = self._wd < 0
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                    rearm = True
                offset += _EVENT.size + length
        if rearm:
            self._watch()

    def wait(self, timeout: float) -> bool:
        """Sleep until the file changes or `timeout` seconds pass; True if woken by a change."""
        if timeout <= 0:
            return False
        if not self.pushes_changes:
            if self._fd >= 0:
                self._watch()  # the WAL file may exist by now
                if self.pushes_changes:
                    return self.wait(timeout)
            time.sleep(min(timeout, self.poll_interval))
            return False
        try:
            readable, _, _ = select.select([self._fd], [], [], timeout)
        except InterruptedError:
            return False
        if readable:
            self.drain()
            return True
        return False

    def close(self) -> None:
        """Release the inotify descriptor (only in the process that made it)."""
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = -1
        self._wd = -1


#: What changes a directory's files: written, made, renamed in or out, deleted; and the
#: directory itself going away.
_DIR_MASK = (IN_MODIFY | IN_ATTRIB | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
             | IN_DELETE_SELF | IN_MOVE_SELF)


class DirWatch:
    """Whether anything in one directory changed since the last look, for the price of one
    read(2): an inotify watch of its own (never the event loop's, whose events it would take).

    The kernel queues the event of a write before write(2) returns, so a caller that calls
    `changed()` and then looks at the files sees every write that `changed()` did not report
    the next time. One process's: a forked child must not read its parent's events (it makes
    its own watch, or looks every time).
    """

    def __init__(self, path: str) -> None:
        self._fd = -1
        self._pid = os.getpid()
        libc = _libc()
        if libc is None:
            return
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return
        if libc.inotify_add_watch(fd, os.fsencode(path), _DIR_MASK) < 0:
            os.close(fd)
            return
        self._fd = fd

    @property
    def active(self) -> bool:
        """False where there is no watch (no inotify, too many watches, the directory gone, or a
        forked child's copy): `changed()` then always says yes."""
        return self._fd >= 0 and self._pid == os.getpid()

    def changed(self) -> bool:
        """Whether an event came since the last call (all of them are read); True when inactive."""
        if not self.active:
            return True
        came = False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return came
            except InterruptedError:
                continue
            except OSError:
                self.close()
                return True
            came = True
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                    self.close()  # the directory went away: look every time from now on
                    return True
                offset += _EVENT.size + length

    def close(self) -> None:
        """Stop watching (this process's descriptor; a forked child's copy is only dropped)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1

    def __del__(self) -> None:
        # a spool dropped (its database replaced, its directory unusable) frees its inotify
        # instance, of which a user has few (fs.inotify.max_user_instances, often 128)
        self.close()
