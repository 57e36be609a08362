"""ResultStore: Celery's result keys in a queuectl database; one method per verb, opaque values."""

from __future__ import annotations

import os

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence

from .db import AnyDatabase, database, open_database
from .notify import ChangeWaiter
from .postgres import Listener
from .rules import MAX_WAIT, SETTLE
from .sql import QUERIES as Q

logger = logging.getLogger(__name__)

#: A stored value comes back as it went in: str (JSON, YAML) or bytes (pickle, msgpack, compressed).
Value = str | bytes

#: Expired rows deleted per transaction, so a purge never holds the write lock for long.
PURGE_BATCH = 1000


def _value(value: Value | None, blob: bytes | None) -> Value | None:
    # PostgreSQL keeps a str in value (text) and bytes in blob (bytea); SQLite keeps either in value.
    return value if blob is None else bytes(blob)


def _expires_at(now: float, expires: float | None) -> float | None:
    return now + float(expires) if expires and expires > 0 else None


#: Members of a chord counter's marks that are not header parts: its size, and the parts added
#: since (a part's member is "<task id>:<index>", which never starts with char(30)).
SIZE_MARK = "\x1esize"
EXTRA_MARK = "\x1eextra"


def _part_key(key: str, member: str) -> str:
    # Sorts right after `key`, so result_delete_parts finds a counter's marks by range.
    return f"{key}\x1f{member}"


class ResultStore:
    """Keys to values with expiry times and counters, in the results table of one file."""

    def __init__(
        self,
        path: str | AnyDatabase,
        *,
        synchronous: str = "NORMAL",
        clock: Callable[[], float] = time.time,
        purge_interval: float = 60.0,
        poll_interval: float = 0.01,
    ) -> None:
        self.db = open_database(path, synchronous) if isinstance(path, (str, os.PathLike)) else path
        self.path = self.db.path
        self.clock = clock
        #: Seconds between purges of expired rows by this process's writes (0: every write).
        self.purge_interval = purge_interval
        #: How often a waiter looks at the file where inotify is not available.
        self.poll_interval = poll_interval
        self._next_purge = 0.0

    # -- connection ---------------------------------------------------------------------------

    def open(self) -> None:
        """Open this thread's connection now: checks the path and creates the schema."""
        self.db.connection()

    def close(self) -> None:
        """Close this thread's connection and its change waiter."""
        self.db.close()

    # -- reading ------------------------------------------------------------------------------

    def get(self, key: str) -> Value | None:
        """The value of a live key, or None."""
        row = self.db.connection().execute(Q["result_get"], {"key": key, "now": self.clock()}).fetchone()
        return None if row is None else _value(row[0], row[1])

    def mget(self, keys: Sequence[str]) -> list[Value | None]:
        """The values of `keys` in the same order (None where a key is missing or expired)."""
        if not keys:
            return []
        rows = self.db.connection().execute(
            Q["result_mget"], {"keys": json.dumps(list(keys)), "now": self.clock()}
        )
        found = {row[0]: _value(row[1], row[2]) for row in rows}
        return [found.get(key) for key in keys]

    def count(self) -> int:
        """Rows in the results table, expired ones included."""
        return int(self.db.connection().execute(Q["result_count"]).fetchone()[0])

    # -- writing ------------------------------------------------------------------------------

    def set(self, key: str, value: Value, expires: float | None = None) -> None:
        """Store a value that lives `expires` seconds (None or 0: until deleted)."""
        now = self.clock()
        params = {"key": key, "value": value, "expires_at": _expires_at(now, expires), "now": now}
        with self.db.write(durable=False) as conn:
            conn.execute(Q["result_set"], params)
            self._purge_now_and_then(conn, now)

    def store_task_result(self, key: str, value: Value, state: str, expires: float | None = None) -> bool:
        """Store a task's state and meta; False (nothing stored) when the key already holds a SUCCESS."""
        now = self.clock()
        params = {
            "key": key, "value": value, "state": state, "expires_at": _expires_at(now, expires), "now": now,
        }
        with self.db.write(durable=False) as conn:
            stored = conn.execute(Q["result_store_task"], params).rowcount > 0
            self._purge_now_and_then(conn, now)
        return stored

    def delete(self, key: str) -> None:
        """Forget a key (nothing happens if it is missing)."""
        with self.db.write(durable=False) as conn:
            conn.execute(Q["result_delete"], {"key": key})

    def incr(self, key: str, expires: float | None = None) -> int:
        """Add one to a counter and return it; a new counter lives `expires` seconds."""
        now = self.clock()
        params = {"key": key, "expires_at": _expires_at(now, expires), "now": now}
        with self.db.write(durable=False) as conn:
            counter = int(conn.execute(Q["result_incr"], params).fetchone()[0])
        return counter

    def count_chord_part(
        self, key: str, member: str, expires: float | None = None
    ) -> tuple[int, int | None]:
        """Count `member` toward chord counter `key` once, and read the chord's size, in one transaction.

        Returns (count, size): count is 0 when `member` was counted before or the chord is
        finished; size is None while Celery has not set it yet (set_chord_size).
        """
        now = self.clock()
        expires_at = _expires_at(now, expires)
        with self.db.write(durable=False) as conn:
            if conn.execute(Q["result_counter_done"], {"key": key, "now": now}).fetchone():
                return 0, None
            mark = {"part_key": _part_key(key, member), "expires_at": expires_at, "now": now}
            if not conn.execute(Q["result_mark_part"], mark).rowcount:
                return 0, None
            params = {"key": key, "expires_at": expires_at, "now": now}
            counter = int(conn.execute(Q["result_incr"], params).fetchone()[0])
            size = self._chord_size(conn, key, now)
        return counter, size

    def set_chord_size(self, key: str, size: int, expires: float | None = None) -> None:
        """Record how many parts chord counter `key` waits for (tasks added later count on top)."""
        now = self.clock()
        params = {"key": _part_key(key, SIZE_MARK), "counter": int(size),
                  "expires_at": _expires_at(now, expires), "now": now}
        with self.db.write(durable=False) as conn:
            conn.execute(Q["result_set_counter"], params)

    def grow_chord(self, key: str, expires: float | None = None) -> None:
        """One more part for chord counter `key` (Celery's Task.add_to_chord)."""
        now = self.clock()
        params = {"key": _part_key(key, EXTRA_MARK), "expires_at": _expires_at(now, expires), "now": now}
        with self.db.write(durable=False) as conn:
            conn.execute(Q["result_incr"], params)

    def chord_size(self, key: str) -> int | None:
        """The parts chord counter `key` waits for, or None while it is not known."""
        return self._chord_size(self.db.connection(), key, self.clock())

    @staticmethod
    def _chord_size(conn: sqlite3.Connection, key: str, now: float) -> int | None:
        size_key = _part_key(key, SIZE_MARK)
        rows = dict(conn.execute(
            Q["result_chord_size"], {"size_key": size_key, "extra_key": _part_key(key, EXTRA_MARK), "now": now}
        ).fetchall())
        if size_key not in rows:
            return None
        return int(sum(rows.values()))

    def claim_counter(self, key: str, expires: float | None = None) -> bool:
        """Finish chord counter `key` if no one has: True for the one caller that should send the body."""
        now = self.clock()
        params = {"key": key, "expires_at": _expires_at(now, expires), "now": now}
        with self.db.write(durable=False) as conn:
            won = conn.execute(Q["result_claim_counter"], params).rowcount > 0
            if won:
                conn.execute(Q["result_delete_parts"], {"key": key})
        return won

    def finish_counter(self, key: str, expires: float | None = None) -> None:
        """Mark a counter finished for `expires` seconds (it counts nothing more) and drop its part marks."""
        now = self.clock()
        params = {"key": key, "expires_at": _expires_at(now, expires), "now": now}
        with self.db.write(durable=False) as conn:
            conn.execute(Q["result_finish_counter"], params)
            conn.execute(Q["result_delete_parts"], {"key": key})

    def reset_counter(self, key: str) -> None:
        """Forget a counter, finished or not, and its part marks."""
        with self.db.write(durable=False) as conn:
            conn.execute(Q["result_delete"], {"key": key})
            conn.execute(Q["result_delete_parts"], {"key": key})

    def expire(self, key: str, expires: float | None) -> bool:
        """Make a live key expire `expires` seconds from now (None or 0: never); False if it is gone."""
        now = self.clock()
        params = {"key": key, "expires_at": _expires_at(now, expires), "now": now}
        with self.db.write(durable=False) as conn:
            changed = conn.execute(Q["result_expire"], params).rowcount
        return changed > 0

    def purge_expired(self) -> int:
        """Delete every expired row, in short transactions; returns how many."""
        total = 0
        while True:
            with self.db.write(durable=False) as conn:
                params = {"now": self.clock(), "limit": PURGE_BATCH}
                n = conn.execute(Q["result_purge_expired"], params).rowcount
            total += n
            if n < PURGE_BATCH:
                break
        self._next_purge = self.clock() + self.purge_interval
        if total:
            logger.info("deleted %d expired results from %s", total, self.path)
        return total

    def _purge_now_and_then(self, conn: sqlite3.Connection, now: float) -> None:
        # Within the caller's transaction: one commit, and a bounded batch keeps it short.
        if now < self._next_purge:
            return
        self._next_purge = now + self.purge_interval
        n = conn.execute(Q["result_purge_expired"], {"now": now, "limit": PURGE_BATCH}).rowcount
        if n:
            logger.info("deleted %d expired results from %s", n, self.path)

    # -- waiting ------------------------------------------------------------------------------

    def change_stamp(self) -> int:
        """A value that changes whenever another connection, in any process, commits to the file."""
        return self.db.data_version()

    def wait_for_change(self, stamp: int, timeout: float | None = None) -> bool:
        """Block until someone commits after `stamp` was taken; False when `timeout` seconds pass first.

        Wakes on the inotify event of the commit (no polling interval), then confirms it with
        PRAGMA data_version; spurious wake-ups are absorbed here.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = self._waiter()
        settle = False
        while True:
            if self.db.data_version() != stamp:
                return True
            wait = SETTLE if settle else MAX_WAIT
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                wait = min(wait, remaining)
            settle = waiter.wait(wait)

    def _waiter(self) -> ChangeWaiter | Listener:
        # This thread's (db.thread_waiter): on PostgreSQL the one whose notifications
        # change_stamp counts, listening from before the stamp was taken.
        return self.db.thread_waiter(self.poll_interval)


def result_store(
    path: str, synchronous: str = "NORMAL", *, purge_interval: float = 60.0, poll_interval: float = 0.01,
    schema: str | None = None,
) -> ResultStore:
    """A ResultStore on the Database of `path` this process shares with its broker and its other
    stores (queuectl_kombu.db.database): one connection per thread for the whole file."""
    return ResultStore(database(path, synchronous, schema), purge_interval=purge_interval, poll_interval=poll_interval)
