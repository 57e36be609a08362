"""Queues, exchanges, bindings and consumers, kept in the file and shared by every process."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import InvalidValue, QueueNotFound
from ..rules import NOBODY, is_control_queue
from ..sql import QUERIES as Q
from ..states import JobState
from .base import StoreBase, fresh

logger = logging.getLogger("queuectl_kombu.store")

#: A consumer that has not refreshed its rows for this long is gone (killed): its auto-delete and
#: exclusive queues are deleted. Live consumers refresh every CONSUMER_HEARTBEAT seconds.
CONSUMER_TIMEOUT = 10.0
CONSUMER_HEARTBEAT = 2.0


@dataclass(frozen=True)
class QueueInfo:
    """One queue as `queuectl queue list` (and the dashboard) shows it."""

    name: str
    #: A paused queue is skipped by every claim of every worker; its running jobs finish.
    paused: bool
    #: Jobs per state, every state present (zero included).
    counts: dict[JobState, int] = field(default_factory=lambda: {s: 0 for s in JobState})
    #: Live consuming connections (one per worker that reads the queue).
    consumers: int = 0
    #: Whether the queue has a row of its own (declared by Celery or kombu, or paused); a queue
    #: that only holds jobs has none.
    declared: bool = True

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form: name, paused, consumers, declared and one key per state."""
        return {"name": self.name, "paused": self.paused, "consumers": self.consumers,
                "declared": self.declared, **{state.value: n for state, n in self.counts.items()}}


class Topology(StoreBase):
    """Declared queues with their arguments, exchanges, bindings and who consumes what."""

    def declare_queue(
        self, name: str, arguments: dict[str, Any] | None = None, *, auto_delete: bool = False,
        exclusive: bool = False,
    ) -> None:
        """Record a queue with its x-expires, x-message-ttl and x-max-priority (a redeclare is a use)."""
        args = arguments or {}
        with self.db.write() as conn:
            conn.execute(
                Q["declare_queue"],
                {
                    "name": name,
                    "arguments": json.dumps(args, default=str),
                    "auto_delete": int(auto_delete),
                    "exclusive": int(exclusive),
                    "expires": _millis(args.get("x-expires")),
                    "message_ttl": _millis(args.get("x-message-ttl")),
                    "max_priority": _int_or_none(args.get("x-max-priority")),
                    "now": self.clock(),
                },
            )
        self._committed()

    def has_queue(self, name: str) -> bool:
        """Whether a queue of that name was declared."""
        return self.db.connection().execute(Q["has_queue"], {"name": name}).fetchone() is not None

    @fresh
    def list_queues(self) -> list[dict[str, Any]]:
        """Declared queues with their settings and the number of messages waiting."""
        return [dict(r) for r in self.db.connection().execute(Q["list_queues"])]

    @fresh
    def queue_size(self, queue: str) -> int:
        """Jobs waiting in `queue` (pending, or failed and waiting for a retry; not expired)."""
        row = self.db.connection().execute(Q["queue_size"], {"queue": queue, "now": self.clock()}).fetchone()
        return int(row[0])

    # -- pause and resume -----------------------------------------------------------------------

    def pause_queue(self, name: str) -> bool:
        """Pause a queue: from the commit on, no claim of any worker takes its jobs (jobs already
        claimed finish), and publishing to it goes on. The flag is in the file: it outlives
        worker restarts. Returns False if it was paused already.

        Raises QueueNotFound for a queue that was never declared and holds no job, and
        InvalidValue for Celery's control queues (remote control must keep working)."""
        return self._set_paused(name, True)

    def resume_queue(self, name: str) -> bool:
        """Resume a paused queue: workers that consume it take its jobs again at once (the
        commit wakes them). Returns False if it was not paused."""
        return self._set_paused(name, False)

    def _set_paused(self, name: str, paused: bool) -> bool:
        if is_control_queue(name):
            raise InvalidValue(f"{name!r} is a queue of Celery's remote control or events: it cannot be paused")
        now = self.clock()
        with self.db.write() as conn:
            changed = bool(conn.execute(Q["set_paused"], {"name": name, "paused": int(paused)}).fetchall())
            if not changed and conn.execute(Q["has_queue"], {"name": name}).fetchone() is None:
                if conn.execute(Q["queue_has_jobs"], {"queue": name}).fetchone() is None:
                    raise QueueNotFound(f"no queue named {name!r}")
                if paused:
                    conn.execute(Q["insert_paused_queue"], {"name": name, "now": now})
                    changed = True
        self._committed()
        if changed:
            logger.info("queue %s %s", name, "paused" if paused else "resumed")
        return changed

    def is_paused(self, name: str) -> bool:
        """Whether claims skip this queue."""
        return name in self.paused_queues()

    def paused_queues(self) -> list[str]:
        """The names of the paused queues, sorted."""
        return [str(r[0]) for r in self.db.connection().execute(Q["paused_queues"])]

    @fresh
    def queue_overview(self) -> list[QueueInfo]:
        """Every queue that is declared or holds jobs (Celery's control queues left out), by name:
        its jobs per state, live consumers, and whether it is paused. One grouped count of the
        jobs and one read of the queues table."""
        conn = self.db.connection()
        counts: dict[str, dict[JobState, int]] = {}
        for queue, state, n in conn.execute(Q["count_by_queue_state"]):
            counts.setdefault(queue, {s: 0 for s in JobState})[JobState(state)] = n
        rows = {r[0]: r for r in conn.execute(Q["queue_rows"], {"cutoff": self.clock() - CONSUMER_TIMEOUT})}
        result = []
        for name in sorted(set(counts) | set(rows)):
            if is_control_queue(name):
                continue
            row = rows.get(name)
            result.append(QueueInfo(
                name=name,
                paused=bool(row is not None and row["paused"]),
                counts=counts.get(name) or {s: 0 for s in JobState},
                consumers=0 if row is None else int(row["consumers"]),
                declared=row is not None,
            ))
        return result

    def touch_queues(self, names: Sequence[str]) -> None:
        """Mark queues as in use, so that their x-expires does not run out while consumed."""
        if names:
            with self.db.write(durable=False, wakes=NOBODY) as conn:
                conn.execute(Q["touch_queues"], {"names": json.dumps(list(names)), "now": self.clock()})

    def purge(self, queue: str) -> int:
        """Delete the jobs waiting in `queue`; returns how many."""
        with self.db.write() as conn:
            n = conn.execute(Q["delete_queue_jobs"], {"name": queue}).rowcount
        self._committed()
        if n:
            logger.info("purged %d jobs from queue %s", n, queue)
        return n

    def delete_queue(self, queue: str) -> int:
        """Delete a queue with its waiting jobs and its bindings; returns the jobs deleted."""
        with self.db.write() as conn:
            n = self._delete_queue(conn, queue)
        self._committed()
        return n

    @staticmethod
    def _delete_queue(conn: Any, queue: str) -> int:
        n = conn.execute(Q["delete_queue_jobs"], {"name": queue}).rowcount
        conn.execute(Q["delete_queue_bindings"], {"name": queue})
        conn.execute(Q["delete_queue_consumers"], {"name": queue})
        conn.execute(Q["delete_queue"], {"name": queue})
        return int(n)

    def add_consumer(self, queue: str, owner: str) -> None:
        """Record that `owner` consumes `queue`."""
        with self.db.write(durable=False, wakes=NOBODY) as conn:
            conn.execute(Q["add_consumer"], {"queue": queue, "owner": owner, "now": self.clock()})
        self._committed()

    def remove_consumer(self, queue: str, owner: str) -> bool:
        """`owner` stops consuming `queue`; an auto-delete queue left without live consumers is
        deleted with its messages. Returns True when the queue was deleted."""
        now = self.clock()
        with self.db.write(durable=False) as conn:
            conn.execute(Q["remove_consumer"], {"queue": queue, "owner": owner})
            info = conn.execute(Q["get_queue"], {"name": queue}).fetchone()
            live = conn.execute(Q["live_consumers"], {"queue": queue, "cutoff": now - CONSUMER_TIMEOUT}).fetchone()[0]
            deleted = bool(info is not None and info["auto_delete"] and not live)
            if deleted:
                self._delete_queue(conn, queue)
        self._committed()
        if deleted:
            logger.info("queue %s deleted with its last consumer (auto-delete)", queue)
        return deleted

    def remove_owner(self, owner: str) -> None:
        """Forget every consumer row of a closing connection."""
        with self.db.write(durable=False) as conn:
            conn.execute(Q["remove_owner"], {"owner": owner})
        self._committed()

    def forget_consumers(self) -> int:
        """Delete every consumer row (a backup's snapshot, where none of them is alive); returns
        how many there were."""
        with self.db.write() as conn:
            n = int(conn.execute(Q["delete_consumers"]).rowcount)
        self._committed()
        if n:
            logger.info("forgot %d consumer rows", n)
        return n

    def heartbeat(self, owner: str) -> None:
        """A live connection refreshes its consumer rows."""
        with self.db.write(durable=False, wakes=NOBODY) as conn:
            conn.execute(Q["heartbeat_consumers"], {"owner": owner, "now": self.clock()})

    def expire(self) -> tuple[list[str], int]:
        """Delete queues unused past their x-expires, auto-delete and exclusive queues whose
        consumers are all gone, and messages past their TTL."""
        now = self.clock()
        params = {"now": now, "cutoff": now - CONSUMER_TIMEOUT}
        conn = self.db.connection()
        queues = [r[0] for r in conn.execute(Q["expired_queues"], params)]
        orphans = [r[0] for r in conn.execute(Q["orphaned_queues"], params)]
        stale = conn.execute(Q["has_expired_messages"], params).fetchone() is not None
        if not queues and not orphans and not stale:
            return [], 0
        with self.db.write(durable=False) as conn:
            # Look again inside the transaction: a consumer may have come back since.
            queues = [r[0] for r in conn.execute(Q["expired_queues"], params)]
            orphans = [r[0] for r in conn.execute(Q["orphaned_queues"], params) if r[0] not in queues]
            for queue in queues + orphans:
                self._delete_queue(conn, queue)
            conn.execute(Q["delete_stale_consumers"], params)
            n = conn.execute(Q["delete_expired_messages"], params).rowcount
        self._committed()
        for queue in queues:
            logger.info("queue %s expired (unused past its x-expires) and was deleted", queue)
        for queue in orphans:
            logger.warning("queue %s deleted: its consumers are gone (auto-delete or exclusive)", queue)
        if n:
            logger.info("%d messages expired (message TTL) and were deleted", n)
        return queues + orphans, n

    def declare_exchange(
        self, name: str, type: str, *, durable: bool = True, auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Record an exchange (the first declaration wins)."""
        with self.db.write() as conn:
            conn.execute(
                Q["declare_exchange"],
                {
                    "name": name, "type": type, "durable": int(durable), "auto_delete": int(auto_delete),
                    "arguments": json.dumps(arguments or {}, default=str),
                },
            )
        self._committed()

    def exchange_type(self, name: str) -> str | None:
        """The type of a declared exchange, or None."""
        row = self.db.connection().execute(Q["exchange_type"], {"name": name}).fetchone()
        return None if row is None else str(row[0])

    def delete_exchange(self, name: str) -> None:
        """Forget an exchange and its bindings."""
        with self.db.write() as conn:
            conn.execute(Q["delete_exchange_bindings"], {"name": name})
            conn.execute(Q["delete_exchange"], {"name": name})
        self._committed()

    def bind(self, exchange: str, queue: str, routing_key: str, arguments: dict[str, Any] | None = None) -> None:
        """Bind a queue to an exchange (idempotent)."""
        with self.db.write() as conn:
            conn.execute(
                Q["bind"],
                {
                    "exchange": exchange, "queue": queue, "routing_key": routing_key,
                    "arguments": json.dumps(arguments or {}, default=str),
                },
            )
        self._committed()

    def unbind(self, exchange: str, queue: str, routing_key: str) -> None:
        """Remove one binding."""
        with self.db.write() as conn:
            conn.execute(Q["unbind"], {"exchange": exchange, "queue": queue, "routing_key": routing_key})
        self._committed()

    def bindings_of(self, exchange: str) -> list[tuple[str, str]]:
        """(routing_key, queue) of every binding of an exchange."""
        return [(r[0], r[1]) for r in self.db.connection().execute(Q["bindings_of_exchange"], {"exchange": exchange})]

    def routes(self, exchange: str) -> tuple[str | None, list[tuple[str, str]]]:
        """The exchange's type (None if undeclared or unbound) and (routing_key, queue) of each
        binding, in one read: what a publish needs."""
        rows = self.db.connection().execute(Q["routes_of_exchange"], {"exchange": exchange}).fetchall()
        return (rows[0][0] if rows else None), [(r[1], r[2]) for r in rows]

    def all_bindings(self) -> list[tuple[str, str, str]]:
        """(queue, exchange, routing_key) of every binding."""
        return [(r[0], r[1], r[2]) for r in self.db.connection().execute(Q["all_bindings"])]


def _millis(value: Any) -> float | None:
    """AMQP milliseconds (x-expires, x-message-ttl, expiration) as seconds."""
    if value is None or value == "":
        return None
    try:
        return float(value) / 1000.0
    except (TypeError, ValueError):
        return None


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
