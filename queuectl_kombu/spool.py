"""The spool: where a SQLite file's publishes wait, each in its publisher's own file, until the
next write to the database moves them into the jobs table.

A publish to a SQLite file used to be a write transaction of its own: it waited for the file's one
write lock behind every other publisher and every worker's claim and ack, a hand-over from process
to process each time (docs/benchmarks.md, issue 19). Now a publish that finds the writers' turn
taken (JobStore.publish_or_spool) waits for nobody: it appends one line to a file only its process
writes (``<db>-spool/<name>.jobs``, opened with O_APPEND) and returns. Once ``write()`` has
returned the line is the kernel's: it outlives the publisher killed at once (SIGKILL), exactly as
a commit in WAL mode with ``synchronous=NORMAL`` does; with FULL or EXTRA each line is
fdatasync'ed as well, as those commits are.

The next write transaction of any process on the file (a worker's claim, most often: every write
looks first) reads the lines added since the offsets kept in the database's ``spool`` table,
inserts their jobs and moves the offsets on, in the same transaction: a line becomes a job exactly
once, whoever crashes when. Readers that must see every job published (a queue's size, listings,
counts) make that write first (JobStore.take_in_spool).

Each file begins with a header naming the database it belongs to (a random number its spool table
keeps): a file left by a database since deleted is not moved into a new one at the same path. Its publisher holds a shared
``flock`` on it while it may still write; a file nobody holds, read to its end, is deleted after
the commit that read it. A publisher killed inside ``write()`` can leave half a line at the end of
its file: that publish never returned, and the half line is dropped with the file. A publisher
whose file passes ROTATE_BYTES starts a new one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .exceptions import QueuectlError
from .notify import DirWatch

logger = logging.getLogger(__name__)

#: The spool directory of a database file is its path with this suffix.
SPOOL_SUFFIX = "-spool"
#: A publisher starts a new file once its file has grown past this.
ROTATE_BYTES = 4 * 1024 * 1024
#: A write moves in at most about this much of the spool (whole lines; the rest by the next
#: write): its transaction stays short, and a backlog is not read into memory at once.
TAKE_IN_BYTES = 1024 * 1024
#: A consumer that watches the directory lists it again after this long even with no event
#: (a listing that failed is never kept): the same bound as any wait for a change (MAX_WAIT).
LOOK_AGAIN = 1.0
_SUFFIX = ".jobs"
_FORMAT = 1

#: One row of a spooled publish: the fields of store.NewJob in their order, then the time it was
#: published.
Row = tuple[Any, ...]


class SpoolError(QueuectlError):
    """A publish could not be written to the spool (the disk is full, say): nothing of it was."""


class SpoolUnavailable(SpoolError):
    """The spool's directory cannot be made: publishes write the database instead."""


@dataclass(slots=True)
class Chunk:
    """What one spool file holds past its offset: the rows of its complete lines, and where the
    offset moves to."""

    name: str
    start: int
    end: int
    rows: list[Row]
    #: nobody writes it any more and it was read to its end: delete it after the commit
    finished: bool


_writers: weakref.WeakSet[Spool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for spool in list(_writers):
        spool._forget_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Spool:
    """The spool of one database file: appending (a publisher) and reading (the store)."""

    def __init__(self, db_path: str, token: int, synchronous: str = "NORMAL") -> None:
        self.dir = db_path + SPOOL_SUFFIX
        #: the number that names the database in the files' headers (its spool table keeps it)
        self.token = token
        #: the database file's permissions, which its spool's files take (as SQLite gives them to
        #: its -wal and -shm files), and its directory with search where reading is allowed
        try:
            self.mode = os.stat(db_path).st_mode & 0o666
        except OSError:
            self.mode = 0o600
        self.dir_mode = self.mode | ((self.mode & 0o444) >> 2)
        self._warned = False
        self.fsync = synchronous.upper() in ("FULL", "EXTRA")
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        self._pid = os.getpid()
        #: name -> the offset this process last saw recorded (has_new compares sizes with it)
        self.consumed: dict[str, int] = {}
        #: the files found by the last look (sizes)
        self.listed: frozenset[str] = frozenset()
        #: whether the last read() of this process stopped at TAKE_IN_BYTES with lines left
        self.left = False
        #: a consumer's inotify watch of the directory (watch()): sizes() looks again only after
        #: a change, instead of at each of the many looks of a worker's wake-up
        self._watch: DirWatch | None = None
        self._seen: dict[str, int] | None = None
        self._seen_at = 0.0
        self._listed_whole = False
        self._look_lock = threading.Lock()
        _writers.add(self)

    # -- the publisher's side -----------------------------------------------------------------

    def append(self, rows: Sequence[Row]) -> None:
        """Append one publish (its rows: one per queue it was routed to) as one line. Returns once
        the line is written; raises SpoolError with nothing written when it cannot be."""
        # ASCII: any text (a lone surrogate in a task id included) reads back as it was written
        line = (json.dumps(rows, separators=(",", ":")) + "\n").encode("ascii")
        with self._lock:
            if self._pid != os.getpid():
                self._forget_inherited()
            if self._fd < 0:
                self._open()
            try:
                written = os.write(self._fd, line)
                while written < len(line):  # a short write: the next one says why (a full disk)
                    more = os.write(self._fd, line[written:])
                    if more <= 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    written += more
                if self.fsync:
                    os.fdatasync(self._fd)
            except OSError as exc:
                self._undo(exc)
                raise SpoolError(f"cannot write to the spool of {self.dir[:-len(SPOOL_SUFFIX)]}: {exc.strerror or exc}") from exc
            self._size += written
            if self._size >= ROTATE_BYTES:
                self._close()

    def _open(self) -> None:
        """A new file of this process: made under a temporary name, locked, then renamed, so that
        no reader sees it unlocked before its writer holds it."""
        if not self.make_dir(quiet=True):
            raise SpoolUnavailable(f"cannot make {self.dir}")
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"
        temp = os.path.join(self.dir, f".{name}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.mode)
        except OSError as exc:
            raise SpoolError(f"cannot write to the spool of {self.dir[:-len(SPOOL_SUFFIX)]}: {exc.strerror or exc}") from exc
        try:
            os.fchmod(fd, self.mode)  # whatever the umask: the database's readers read it
            fcntl.flock(fd, fcntl.LOCK_SH)
            header = (json.dumps({"spool": _FORMAT, "db": self.token}) + "\n").encode()
            if os.write(fd, header) != len(header):
                raise OSError(errno.ENOSPC, "short write")
            if self.fsync:
                os.fdatasync(fd)
            os.rename(temp, os.path.join(self.dir, name + _SUFFIX))
            if self.fsync:
                _fsync_dir(self.dir)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise SpoolError(f"cannot write to the spool of {self.dir[:-len(SPOOL_SUFFIX)]}: {exc.strerror or exc}") from exc
        self._fd, self._size, self._pid = fd, len(header), os.getpid()

    def make_dir(self, *, quiet: bool = False) -> bool:
        """Make the directory now if it is missing (its first publisher, or a consumer about to
        watch it), with the database's permissions; whether it is there."""
        if os.path.isdir(self.dir):
            return True
        try:
            os.mkdir(self.dir, self.dir_mode)
            os.chmod(self.dir, self.dir_mode)  # whatever the umask
        except FileExistsError:
            return os.path.isdir(self.dir)
        except OSError as exc:
            if not quiet:
                logger.warning("cannot make %s (%s): publishes are written to the database", self.dir,
                               exc.strerror or exc)
            return False
        return True

    def _undo(self, exc: OSError) -> None:
        """Take a partly written line back (a full disk); if that fails too, leave the file (its
        half line ends it, and is dropped with it) and write the next publish to a new one."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            self._close()

    def _close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # releases the flock: the file is finished once read
        self._fd = -1

    def _forget_inherited(self) -> None:
        """In a forked child: the parent's file stays the parent's (closing this copy of its
        descriptor keeps the lock, which the parent's copy holds); the child makes its own."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1
        self._lock = threading.Lock()
        self._pid = os.getpid()
        if self._watch is not None:
            self._watch.close()  # the parent's events are the parent's
            self._watch = None
        self._seen = None
        self._look_lock = threading.Lock()

    def watch(self) -> None:
        """Watch the directory (inotify), so that sizes() lists it again only once something in
        it changed: for a consumer, which looks at the spool several times per wake-up."""
        with self._look_lock:
            if self._watch is None and os.path.isdir(self.dir):
                self._watch = DirWatch(self.dir)

    # -- the reader's side (in a write transaction of the database) ---------------------------

    def sizes(self, *, look: bool = False) -> dict[str, int]:
        """Each spool file's size now, by name. With a watch (watch()) and no change since the
        last look, what that look found, unless `look` (a write about to move the spool in)."""
        watch = self._watch
        if watch is None or not watch.active:
            return self._list()
        with self._look_lock:
            # events first, then the listing: a write the listing misses has an event of its own;
            # and at least once every LOOK_AGAIN seconds whatever the watch says
            now = time.monotonic()
            if watch.changed() or look or self._seen is None or now - self._seen_at > LOOK_AGAIN:
                found = self._list()
                self._seen, self._seen_at = (found, now) if self._listed_whole else (None, 0.0)
                return found
            self.listed = frozenset(self._seen)
            return dict(self._seen)

    def _list(self) -> dict[str, int]:
        self._listed_whole = False  # until the directory was read to its end
        found: dict[str, int] = {}
        try:
            with os.scandir(self.dir) as entries:
                for entry in entries:
                    if entry.name.endswith(_SUFFIX):
                        with contextlib.suppress(FileNotFoundError):
                            found[entry.name] = entry.stat().st_size
            self._listed_whole = True
        except FileNotFoundError:
            self._listed_whole = True  # no directory: no publishes
        except OSError as exc:  # a directory this process may not read: another user's
            if not self._warned:
                self._warned = True
                logger.warning("cannot read the spool %s (%s): publishes spooled there are moved in by "
                               "processes that can", self.dir, exc.strerror or exc)
        self.listed = frozenset(found)
        return found

    def stamp(self) -> int:
        """A number that changes whenever a publish is spooled (or a file is read and deleted)."""
        return sum(self.sizes().values()) + len(self.consumed)

    def has_new(self) -> bool:
        """Whether some file holds more than this process last saw moved into the database."""
        return any(size > self.consumed.get(name, 0) for name, size in self.sizes().items())

    def read(self, offsets: dict[str, int]) -> Iterator[Chunk]:
        """What each file holds past its recorded offset, oldest file first (names start with
        the time they were made). Files of another database are skipped (and, once nobody writes
        them, deleted with a warning)."""
        budget = TAKE_IN_BYTES
        sizes = self.sizes(look=True)
        self.left = False
        for name in [name for name in self.consumed if name not in sizes]:
            del self.consumed[name]  # deleted by some process: forgotten here too
        for name, size in sorted(sizes.items()):
            start = offsets.get(name, 0)
            if size <= start and start:
                self.consumed[name] = start
                try:
                    if _written_by_anyone(os.path.join(self.dir, name)):
                        continue  # read to its end, and still written: nothing new yet
                except OSError:
                    continue
                # Nobody writes it now, but its writer may have added lines after `size` was
                # looked at and then closed it (a rotation, an exit): read it to its end, once
                # more, now that nothing more can come (_read_file looks at the lock first too).
            if budget <= 0:
                self.left = True
                continue  # the next write goes on from here
            try:
                chunk = self._read_file(name, start, budget)
            except PermissionError as exc:
                logger.warning("cannot read spool file %s: %s", os.path.join(self.dir, name), exc.strerror or exc)
                self.consumed[name] = size
                continue
            if chunk is not None:
                budget -= chunk.end - chunk.start
                yield chunk

    def _read_file(self, name: str, start: int, budget: int) -> Chunk | None:
        path = os.path.join(self.dir, name)
        try:
            with open(path, "rb") as f:
                # before the read: a file nobody writes now has nothing more to come after it
                finished = not _written_by_anyone(f.fileno())
                f.seek(start)
                data = f.read(budget)
                if len(data) == budget:  # more to come: up to the end of a line at least
                    more = f.read()
                    cut = more.find(b"\n")
                    data += more if cut < 0 else more[:cut + 1]
                    if cut >= 0 and cut + 1 < len(more):
                        finished = False  # read on by the next write
                        self.left = True
        except FileNotFoundError:
            return None
        end = data.rfind(b"\n") + 1
        lines = data[:end].split(b"\n")[:-1]
        if start == 0:
            if not lines:
                return Chunk(name, 0, 0, [], finished)
            try:
                header = json.loads(lines[0])
                foreign = header.get("spool") != _FORMAT or header.get("db") != self.token
            except (ValueError, AttributeError):
                foreign = True
            if foreign:
                if finished:
                    logger.warning("deleting spool file %s: it was written for another database at this path "
                                   "(%d publishes not moved in)", path, len(lines) - 1)
                    return Chunk(name, 0, len(data), [], True)
                self.consumed[name] = len(data)  # its publisher still writes it: not ours to read
                return None
            lines = lines[1:]
        rows: list[Row] = []
        for line in lines:
            try:
                rows.extend(tuple(row) for row in json.loads(line))  # type: ignore[misc]
            except (ValueError, TypeError):
                logger.warning("skipping an unreadable line in spool file %s", path)
        if finished and end < len(data):
            logger.warning("dropping a partly written publish at the end of spool file %s (its publisher "
                           "was killed while writing it: that publish did not return)", path)
        self.consumed[name] = start + end
        return Chunk(name, start, start + end, rows, finished)

    def forget(self, name: str) -> None:
        """Delete a file read to its end that nobody writes, after the commit that recorded it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, name))
        self.consumed.pop(name, None)



def _written_by_anyone(target: int | str) -> bool:
    """Whether a process still holds the file open to write (its shared flock)."""
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC) if isinstance(target, str) else os.dup(target)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # a lock we took goes with it
    return False


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_spool(db_path: str, token: int, synchronous: str) -> Spool | None:
    """The spool of the file at `db_path` (its directory is made by its first publisher, or its
    first consumer: make_dir); None where this process could not write it: publishes then write
    the database."""
    directory = db_path + SPOOL_SUFFIX
    if os.path.isdir(directory):
        usable = os.access(directory, os.W_OK | os.X_OK)
    else:
        usable = not os.path.lexists(directory) and os.access(os.path.dirname(directory) or ".", os.W_OK | os.X_OK)
    if not usable:
        logger.info("no spool for %s (%s cannot be written): publishes write the database", db_path, directory)
        return None
    return Spool(db_path, token, synchronous)
