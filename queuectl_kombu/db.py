"""SQLite connections: path checks, pragmas, schema, write transactions, one connection per thread and process."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator

from . import sql
from .exceptions import DatabaseUnusable

logger = logging.getLogger(__name__)

MIN_SQLITE = (3, 35, 0)  # UPDATE ... RETURNING

#: Held around every write transaction and checkpoint of this process, and taken by fork():
#: SQLite keeps its lock state per process, so a child forked while another thread of the parent
#: is inside a transaction would believe that lock held forever ("database is locked").
_write_lock = threading.RLock()


def _before_fork() -> None:
    _write_lock.acquire()


def _after_fork_in_parent() -> None:
    _write_lock.release()


def _after_fork_in_child() -> None:
    global _write_lock
    _write_lock = threading.RLock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def fork_guard() -> Iterator[None]:
    """Keep fork() out while the calling thread uses SQLite: a child forked while another thread is
    inside SQLite (even a read) inherits its locked mutexes and hangs. Background threads (the lease
    keeper) hold it around each piece of work; re-entrant."""
    with _write_lock:
        yield

#: Connections inherited through fork(). Closing one in the child could checkpoint or delete the
#: parent's WAL, so they are kept referenced here and never touched again.
_abandoned: list[sqlite3.Connection] = []


def check_path(path: str) -> None:
    """Raise DatabaseUnusable, naming the path, unless `path` can hold a queuectl database."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise DatabaseUnusable(
            f"SQLite {sqlite3.sqlite_version} is too old: queuectl needs 3.35 or newer"
        )
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise DatabaseUnusable(f"cannot open database {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise DatabaseUnusable(f"cannot open database {path}: it is a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DatabaseUnusable(
            f"cannot open database {path}: directory {directory} is not writable "
            "(SQLite keeps its -wal and -shm files beside the database)"
        )
    if os.path.exists(path):
        # The mode bit too: root passes os.access, but a file made read-only means read-only.
        if not os.access(path, os.R_OK | os.W_OK) or not os.stat(path).st_mode & stat.S_IWUSR:
            raise DatabaseUnusable(f"cannot open database {path}: the file is read-only")
    # The header is not read here: closing any descriptor of the file would drop every POSIX
    # lock this process's SQLite connections hold on it, and another process could then take
    # itself for the last connection and delete the WAL. SQLite reports a non-database instead.


def _create_private(path: str) -> None:
    """Create the database file readable and writable by its owner only (SQLite gives its
    -wal and -shm files the same mode)."""
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        os.close(fd)


def _warn_if_shared(path: str) -> None:
    """Whoever can write the file can run commands through it: say so loudly."""
    with contextlib.suppress(OSError):
        mode = os.stat(path).st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            logger.warning(
                "database %s is writable by %s: anyone who can write it can run commands on the "
                "workers (chmod 600 %s)", path, "everyone" if mode & stat.S_IWOTH else "its group", path,
            )


def _enable_wal(conn: sqlite3.Connection, timeout: float = 30.0) -> str:
    """Switch to WAL; retried, because the switch is refused at once ("database is locked") while
    another connection opens a brand-new file, whatever the busy timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
        if mode.lower() == "wal":
            return mode
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def _open(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=30.0, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        mode = _enable_wal(conn)
        if mode.lower() != "wal":
            raise DatabaseUnusable(f"cannot open database {path}: WAL mode refused ({mode})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA journal_size_limit = 8388608")
        conn.execute("PRAGMA temp_store = MEMORY")
    except sqlite3.DatabaseError as exc:
        conn.close()
        if "not a database" in str(exc):
            raise DatabaseUnusable(f"cannot open database {path}: the file is not a SQLite database") from exc
        raise DatabaseUnusable(f"cannot open database {path}: {exc}") from exc
    return conn


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Create the schema in a new file, or bring an older file up to date, in one transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == sql.SCHEMA_VERSION:
        present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        if sql.SCHEMA_OBJECTS <= present:
            return
        # A file made by a pre-release build of this same version: the schema's statements are
        # all IF NOT EXISTS, so applying them again adds only what is missing.
        with _write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in sql.statements(sql.SCHEMA):
                    conn.execute(statement)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        logger.warning("added the missing tables and indexes of schema version %d to %s", version, path)
        return
    if version > sql.SCHEMA_VERSION:
        raise DatabaseUnusable(
            f"database {path} has schema version {version}; this queuectl knows up to "
            f"{sql.SCHEMA_VERSION}: upgrade queuectl"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
        if version == 0:
            if conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                raise DatabaseUnusable(f"cannot open database {path}: it holds tables that are not queuectl's")
            steps = [(sql.SCHEMA_VERSION, sql.SCHEMA)]
        else:
            steps = [(v, sql.MIGRATIONS[v]) for v in range(version + 1, sql.SCHEMA_VERSION + 1)]
        for target, script in steps:
            for statement in sql.statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(target)}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    if version == 0:
        logger.info("created the queuectl schema (version %d) in %s", sql.SCHEMA_VERSION, path)
    else:
        logger.warning("migrated %s from schema version %d to %d", path, version, sql.SCHEMA_VERSION)


class Database:
    """One SQLite file; hands each thread of each process its own connection."""

    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise DatabaseUnusable(f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = os.path.abspath(os.path.expanduser(path))
        self.synchronous = synchronous.upper()
        self._local = threading.local()
        self._pid = os.getpid()
        self._ready = False
        self._lock = threading.Lock()
        #: (device, inode) of the file first opened: see moved()
        self._identity: tuple[int, int] | None = None

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema created) on first use."""
        if self._pid != os.getpid():
            self._after_fork()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _connect(self) -> sqlite3.Connection:
        check_path(self.path)
        if not os.path.exists(self.path):
            _create_private(self.path)
        with fork_guard():
            conn = _open(self.path, self.synchronous)
        if self._identity is None:
            with contextlib.suppress(OSError):
                st = os.stat(self.path)
                self._identity = (st.st_dev, st.st_ino)
        _warn_if_shared(self.path)
        if not self._ready:
            with self._lock:
                try:
                    _migrate(conn, self.path)
                except sqlite3.DatabaseError as exc:
                    conn.close()
                    raise DatabaseUnusable(f"cannot open database {self.path}: {exc}") from exc
                self._ready = True
        return conn

    def _after_fork(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            _abandoned.append(conn)
        self._local = threading.local()
        self._pid = os.getpid()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction: BEGIN IMMEDIATE, COMMIT, or ROLLBACK on error.

        Inside another write of the same thread (a publish that declares a queue on its way),
        a savepoint: its work commits or rolls back with the outer transaction.
        """
        conn = self.connection()
        with _write_lock:
            if conn.in_transaction:
                conn.execute("SAVEPOINT nested")
                try:
                    yield conn
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK TO nested")
                        conn.execute("RELEASE nested")
                    raise
                conn.execute("RELEASE nested")
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def moved(self) -> str | None:
        """What happened to the file this object opened, if the path no longer names it
        ("was deleted", "was replaced by another file"), else None. SQLite keeps using the inode
        it opened: a deleted or replaced database would otherwise be served in silence."""
        if self._identity is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "was deleted"
        except OSError:
            return None
        if (st.st_dev, st.st_ino) != self._identity:
            return "was replaced by another file"
        return None

    def data_version(self) -> int:
        """Changes whenever another connection, in any process, commits to the file."""
        return self.connection().execute("PRAGMA data_version").fetchone()[0]

    def checkpoint(self, truncate: bool = False) -> tuple[int, int, int]:
        """Checkpoint the WAL; returns (busy, wal pages, checkpointed pages).

        PASSIVE never waits. TRUNCATE waits (busy timeout) for readers of old snapshots and for
        the writer, copies everything and empties the WAL file: the cure for a WAL that readers
        of many processes keep from ever restarting.
        """
        conn = self.connection()
        if not truncate:
            with _write_lock:
                row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return (row[0], row[1], row[2])
        # Under load another connection's automatic checkpoint often holds the checkpointer lock,
        # and then TRUNCATE answers busy at once (no busy handler for that lock): try again.
        deadline = time.monotonic() + 5.0
        while True:
            with _write_lock:
                row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if row[0] == 0 or time.monotonic() > deadline:
                return (row[0], row[1], row[2])
            time.sleep(0.002)

    def wal_size(self) -> int:
        """Bytes in the -wal file (0 when there is none); stat only, the file is never opened."""
        try:
            return os.stat(self.path + "-wal").st_size
        except OSError:
            return 0

    def close(self) -> None:
        """Close this thread's connection (in the process that opened it)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._pid == os.getpid():
            conn.close()
        self._local = threading.local()
