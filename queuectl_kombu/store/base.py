"""The common ground of JobStore's parts: the database, the clock, commits and the WAL."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Self, TypeVar

from ..db import AnyDatabase, database, open_database
from ..exceptions import DatabaseLocked
from ..rules import WAL_LIMIT_BYTES, WATCHERS, is_control_queue
from ..sql import QUERIES as Q

_R = TypeVar("_R")


def fresh(method: Callable[..., _R]) -> Callable[..., _R]:
    """A read that sees every publish made until now: the spool moved in first (SQLite)."""
    @functools.wraps(method)
    def read(self: StoreBase, *args: Any, **kwargs: Any) -> _R:
        self.take_in_spool()
        return method(self, *args, **kwargs)
    return read


logger = logging.getLogger("queuectl_kombu.store")

#: Every process checks the WAL's size after this many of its own commits.
WAL_CHECK_EVERY = 200


class StoreBase:
    """One queuectl database and the clock its statements use."""

    def __init__(
        self, path: str | AnyDatabase, *, synchronous: str = "NORMAL", clock: Callable[[], float] = time.time,
        schema: str | None = None,
    ) -> None:
        self.db = open_database(path, synchronous, schema) if isinstance(path, (str, os.PathLike)) else path
        self.path = self.db.path
        self.clock = clock

    @classmethod
    def shared(cls, path: str, *, synchronous: str = "NORMAL", schema: str | None = None) -> Self:
        """A store on the Database of `path` (a file, or a postgresql:// URL and its schema) this
        process shares (one connection per thread for the broker, the backend and the command
        line alike)."""
        return cls(database(path, synchronous, schema))

    def open(self) -> None:
        """Open this thread's connection now: checks the path and creates the schema."""
        self.db.connection()

    def close(self) -> None:
        """Close this thread's connection."""
        self.db.close()

    @contextlib.contextmanager
    def one_transaction(self) -> Iterator[None]:
        """The verbs this thread calls meanwhile commit together, in one write transaction (each in
        a savepoint of it): one turn of the file's writers instead of one each."""
        with self.db.write(durable=False, wakes=WATCHERS):
            yield

    def take_in_spool(self) -> None:
        """Move everything the spool holds into the jobs table now: for a reader about to count or
        list jobs, a backup (every write moves some in first on its own). One transaction per
        spool.TAKE_IN_BYTES, until one moves nothing. A file this process cannot write is read as
        it is."""
        if self.db.engine != "sqlite" or self.db.connection().in_transaction:  # opens the spool with the file
            return
        spool = self.db.spool
        while spool is not None and spool.has_new():
            before = dict(spool.consumed)
            try:
                with self.db.write():
                    pass
            except (sqlite3.Error, DatabaseLocked) as exc:
                logger.debug("spooled publishes of %s not moved in before a read: %s", self.path, exc)
                return
            if spool.consumed == before:
                return  # only a line still being written, or files not ours to read

    def _committed(self) -> None:
        self.db.note_commit()
        if (self.db.local_commits % WAL_CHECK_EVERY == 0 and not self.db.connection().in_transaction
                and self.wal_too_large()):
            # Publishers with no worker running would otherwise let the WAL grow without bound.
            self.checkpoint()

    def _tally(self, conn: Any, event: str, queues: Iterable[str]) -> None:
        """Count one `event` per queue name in `queues` (a name once per job) in the stats table,
        in the caller's transaction; Celery's control queues are not counted. One upsert per
        queue (most transactions touch one): no JSON to make and parse on the hot path."""
        counts: dict[str, int] = {}
        for queue in queues:
            counts[queue] = counts.get(queue, 0) + 1
        minute = int(self.clock() // 60)
        # in queue order: transactions lock the rows they count in one order (PostgreSQL: no deadlock)
        rows = [(minute, queue, event, n) for queue, n in sorted(counts.items()) if not is_control_queue(queue)]
        # at the commit: PostgreSQL sends them with it, in one round trip; SQLite runs them now
        self.db.at_commit(conn, Q["stats_add"], rows)

    def change_stamp(self) -> tuple[int, int]:
        """A value that differs whenever anyone committed since it was last taken."""
        return self.db.change_stamp()

    def work_stamp(self) -> tuple[int, int]:
        """A value that differs whenever work may have become available since it was last taken
        (SQLite: any commit; PostgreSQL: not a claim or an ack)."""
        return self.db.work_stamp()

    def checkpoint(self) -> tuple[int, int, int]:
        """Checkpoint the WAL: passive, then what was committed meanwhile in the writers' turn
        (db.Database.checkpoint's `restart`), or truncating once it has grown past
        WAL_LIMIT_BYTES."""
        return self.db.checkpoint(truncate=self.wal_too_large(), restart=True)

    def wal_too_large(self) -> bool:
        """Whether the WAL has grown past WAL_LIMIT_BYTES (busy readers kept it from restarting)."""
        return self.db.wal_size() > WAL_LIMIT_BYTES
