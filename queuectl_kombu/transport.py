"""SQLite transport for kombu: a broker in one file that loses nothing.

Messages are rows of the queuectl jobs table (queuectl_kombu/sql/schema.sql): a claim moves
them to processing under a lease, an ack completes them, a reject requeues the same row or
applies the retry policy, and a lease that is not renewed (its consumer died) expires and the
row is delivered again.

Features
========
* Type: Virtual
* Supports Direct: Yes
* Supports Topic: Yes
* Supports Fanout: Yes (exchanges and bindings are rows of the file, shared by every process)
* Supports Priority: Yes (0-9, higher first, FIFO within a priority; capped by x-max-priority)
* Supports TTL: Yes (x-message-ttl, a message's expiration, x-expires, auto-delete, exclusive)
* ETA/countdown held by the broker: a message is not delivered before its ``eta`` header

Connection String
=================

.. code-block::

    sqlite:///relative/path.db
    sqlite:////absolute/path.db

``import queuectl_kombu`` registers the ``sqlite`` scheme. Without that import, set Celery's
``broker_transport = "queuectl_kombu.transport:Transport"`` (or pass
``transport="queuectl_kombu.transport:Transport"`` to ``kombu.Connection``).

Transport Options
=================

Options left unset fall back to the config table of the database, then to the defaults.

* ``visibility_timeout``: seconds a lease lasts; live consumers renew it (default 30).
* ``max_retries``: retries after the first run before a rejected message is dead (default 3).
* ``backoff_base``: a rejected message waits ``backoff_base ** attempts`` seconds (default 2).
* ``retention``: seconds completed messages are kept; 0 deletes them on ack (default 86400).
* ``prefetch_batch``: the most messages one claim takes when no prefetch limit is set (100).
* ``polling_interval``: wake-up interval where inotify is not available (default 0.01).
* ``synchronous``: SQLite's ``synchronous`` pragma, ``NORMAL`` (default) or ``FULL``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from datetime import datetime, timezone
from queue import Empty
from typing import Any
from collections.abc import Iterable

from kombu.exceptions import ChannelError
from kombu.transport import virtual
from kombu.transport.base import to_rabbitmq_queue_arguments
from kombu.transport.virtual.exchange import TopicExchange
from kombu.utils.json import dumps, loads

from . import signals  # noqa: F401  (records task errors on their rows)
from .db import fork_guard
from .exceptions import DatabaseUnusable
from .notify import ChangeWaiter
from .settings import MAX_RETRIES_LIMIT
from .store import CONSUMER_HEARTBEAT, JobStore, NewJob

logger = logging.getLogger(__name__)

#: A message header that sets the job's own max_retries (the config table's applies otherwise).
MAX_RETRIES_HEADER = "x-max-retries"
#: A message header asking that no other job carry the same task id (DuplicateJob otherwise).
UNIQUE_HEADER = "x-unique-id"

#: Longest a consumer sleeps before it looks again even if the file did not change.
MAX_WAIT = 1.0
#: While a worker is busy, claims and ack writes are at most this far apart (each takes many rows),
#: unless ACK_BATCH acks are waiting. An idle worker claims at once.
COALESCE = 0.005
ACK_BATCH = 64
#: How often a worker tries again to write acks and rejects that failed (disk full).
RETRY_FAILED = 1.0

_stores: dict[tuple[str, str], JobStore] = {}
_stores_lock = threading.Lock()
_tags = itertools.count(1)


def store_for(path: str, synchronous: str = "NORMAL") -> JobStore:
    """The JobStore of `path` shared by every connection of this process."""
    key = (os.path.abspath(os.path.expanduser(path)), synchronous.upper())
    with _stores_lock:
        store = _stores.get(key)
        if store is None or store.db.moved():  # a new file at the path: a new store
            store = _stores[key] = JobStore(key[0], synchronous=key[1])
        return store


def database_path(virtual_host: str | None) -> str:
    """The file named by a ``sqlite:///path`` URL (kombu puts the path in virtual_host)."""
    if not virtual_host or virtual_host == "/":
        raise DatabaseUnusable(
            "the sqlite:// URL names no database file: use sqlite:///relative.db or sqlite:////abs/path.db"
        )
    return os.path.abspath(os.path.expanduser(virtual_host))


def parse_eta(value: Any) -> float | None:
    """An ``eta`` header (ISO 8601; naive means UTC) as epoch seconds, or None."""
    if not value:
        return None
    try:
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            when = datetime.fromisoformat(str(value))
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            seconds = when.timestamp()
    except (ValueError, OverflowError, TypeError):
        seconds = math.nan
    if not math.isfinite(seconds):
        logger.warning("ignoring unreadable eta header %r", value)
        return None
    return seconds


def _text_header(headers: dict[str, Any], name: str) -> str | None:
    """A header that names something (a task id or name): a string, or a ValueError."""
    value = headers.get(name)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"message header {name!r} must be a string, not {type(value).__name__}")


def _max_retries_header(value: Any) -> int | None:
    """The x-max-retries header: a whole number from 0 to 10,000, or a ValueError."""
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = -1
    if (isinstance(value, bool) or number != value and str(number) != str(value).strip()
            or not 0 <= number <= MAX_RETRIES_LIMIT):
        raise ValueError(
            f"message header {MAX_RETRIES_HEADER!r} must be a whole number from 0 to {MAX_RETRIES_LIMIT}, not {value!r}"
        )
    return number


def _job_id(delivery_tag: Any) -> int:
    return int(str(delivery_tag).split(":", 1)[0])


class QoS(virtual.QoS):
    """Unacked messages of a channel; restoring one puts its row back to pending."""

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        """Expired leases are recovered by the transport's lease keeper."""


class Channel(virtual.Channel):
    """A kombu channel whose queues are rows of the jobs table and whose routes are in the file."""

    QoS = QoS
    do_restore = True
    supports_fanout = True

    max_retries: int | None = None
    backoff_base: float | None = None
    retention: float | None = None
    prefetch_batch: int = 100
    synchronous: str = "NORMAL"

    from_transport_options = virtual.Channel.from_transport_options + (
        "max_retries",
        "backoff_base",
        "retention",
        "prefetch_batch",
        "synchronous",
    )

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self.transport = connection
        self.store = connection.store
        self._empty_stamp: tuple[int, int] | None = None
        self.next_due = math.inf
        self._no_ack_queues: set[str] = set()
        self._acks: list[int] = []
        self._last_claim = -math.inf
        self._rejects: list[tuple[int, bool]] = []  # (job id, requeue) whose write failed
        self._failing_since: float | None = None
        self._failed_logged_at = -math.inf
        self._topic = TopicExchange(self)

    # -- exchanges and bindings: kept in the database, shared by every process -----------------

    def exchange_declare(
        self, exchange: str | None = None, type: str = "direct", durable: bool = False,
        auto_delete: bool = False, arguments: dict[str, Any] | None = None, nowait: bool = False,
        passive: bool = False,
    ) -> None:
        """Declare an exchange in the database (passive: fail with 404 if it is missing)."""
        type = type or "direct"
        exchange = exchange or f"amq.{type}"
        if passive:
            if self.store.exchange_type(exchange) is None:
                raise ChannelError(
                    f"NOT_FOUND - no exchange {exchange!r} in vhost {self.store.path!r}",
                    (50, 10), "Channel.exchange_declare", "404",
                )
            return
        if type not in self.exchange_types:
            raise ChannelError(f"exchange type {type!r} is not supported", (50, 10), "Channel.exchange_declare", "503")
        self.store.declare_exchange(exchange, type, durable=durable, auto_delete=auto_delete, arguments=arguments)

    def exchange_delete(self, exchange: str, if_unused: bool = False, nowait: bool = False) -> None:
        """Delete an exchange and its bindings."""
        self.store.delete_exchange(exchange)

    def queue_bind(
        self, queue: str, exchange: str | None = None, routing_key: str = "",
        arguments: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        """Bind `queue` to `exchange` in the database."""
        self.store.bind(exchange or "amq.direct", queue, routing_key or "", arguments)

    def queue_unbind(
        self, queue: str, exchange: str | None = None, routing_key: str = "",
        arguments: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        """Remove a binding from the database."""
        self.store.unbind(exchange or "amq.direct", queue, routing_key or "")

    def list_bindings(self) -> Any:
        """Every (queue, exchange, routing_key) binding."""
        return iter(self.store.all_bindings())

    def typeof(self, exchange: str, default: str = "direct") -> Any:
        """The exchange type of a declared exchange (direct when unknown)."""
        return self.exchange_types[self.store.exchange_type(exchange) or default]

    def get_table(self, exchange: str) -> list[tuple[str, Any, str]]:
        """(routing_key, pattern, queue) of the bindings of `exchange`."""
        typ = self.typeof(exchange)
        return [typ.prepare_bind(queue, exchange, rkey, None) for rkey, queue in self.store.bindings_of(exchange)]

    def _lookup(self, exchange: str, routing_key: str, default: str | None = None) -> list[str]:
        """The queues a message published to `exchange` with `routing_key` goes to."""
        if default is None:
            default = self.deadletter_queue
        if not exchange:
            return [routing_key or default] if (routing_key or default) else []
        kind, bindings = self.store.routes(exchange)  # no bindings: no queue, whatever the type
        if kind == "fanout":
            queues = {queue for _, queue in bindings}
        elif kind == "topic":
            queues = {
                queue for rkey, queue in bindings
                if self._topic._match(self._topic.key_to_pattern(rkey), routing_key)
            }
        else:
            queues = {queue for rkey, queue in bindings if rkey == routing_key}
        if not queues and default is not None:
            return [default]
        return sorted(queues)

    # -- publishing ---------------------------------------------------------------------------

    def _next_delivery_tag(self) -> str:
        """Empty at publish: a stored message gets its tag (the job id) when it is delivered."""
        return ""

    def basic_publish(self, message: dict[str, Any], exchange: str, routing_key: str, **kwargs: Any) -> None:
        """Route through the bindings in the file; every copy is inserted in one transaction."""
        self._inplace_augment_message(message, exchange, routing_key)
        queues = self._lookup(exchange, routing_key)
        if queues:
            self._put_many(queues, message)

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        self._put_many([queue], message)

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any) -> None:
        self._put_many(self._lookup(exchange, routing_key), message)

    def _put_many(self, queues: list[str], message: dict[str, Any]) -> None:
        payload = dumps(message)
        unique = bool((message.get("headers") or {}).get(UNIQUE_HEADER))
        self.store.publish_many([self._new_job(queue, message, payload) for queue in queues], unique_task_ids=unique)

    def _new_job(self, queue: str, message: dict[str, Any], payload: str) -> NewJob:
        headers = message.get("headers") or {}
        props = message.get("properties") or {}
        # A Celery task's `expires` also arrives as AMQP `expiration`: it is left to the worker,
        # which records the task as REVOKED (as with Redis) instead of the message vanishing.
        expiration = None if headers.get("task") else props.get("expiration")
        return NewJob(
            queue=queue,
            payload=payload,
            priority=self._get_message_priority(message),
            next_run_at=parse_eta(headers.get("eta")),
            task_id=_text_header(headers, "id") or _text_header(props, "correlation_id"),
            task_name=_text_header(headers, "task"),
            expires_at=None if expiration in (None, "") else time.time() + float(expiration) / 1000.0,
            max_retries=_max_retries_header(headers.get(MAX_RETRIES_HEADER)),
        )

    # -- queues -------------------------------------------------------------------------------

    def prepare_queue_arguments(self, arguments: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Queue(expires=, message_ttl=, max_priority=) as x-expires, x-message-ttl, x-max-priority."""
        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        exclusive = bool(kwargs.get("exclusive"))
        auto_delete = bool(kwargs.get("auto_delete"))
        self.store.declare_queue(queue, kwargs.get("arguments"), auto_delete=auto_delete, exclusive=exclusive)
        if exclusive:
            self.transport.exclusive_queues.add(queue)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return self.store.has_queue(queue)

    def _size(self, queue: str) -> int:
        return self.store.queue_size(queue)

    def _purge(self, queue: str) -> int:
        return self.store.purge(queue)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self.store.delete_queue(queue)

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any) -> None:
        """Delete a queue, its waiting messages and its bindings."""
        if if_empty and self._size(queue):
            return
        self.store.delete_queue(queue)

    # -- consuming ----------------------------------------------------------------------------

    def _deliverable(self, claimed: Any) -> dict[str, Any]:
        payload = claimed.payload
        # kombu's loads passes an object_hook (a new decoder each call, the hook called for every
        # object) for the {"__type__": ...} objects its dumps makes; a message without one
        # decodes the same with the plain decoder.
        message = loads(payload) if '"__type__"' in payload else json.loads(payload)
        props = message.setdefault("properties", {})
        props["delivery_tag"] = f"{claimed.id}:{next(_tags)}"
        info = props.setdefault("delivery_info", {})
        info["redelivered"] = claimed.deliveries > 1  # any delivery after the first
        return message

    def _claim_soon(self, room: int | None) -> bool:
        """Whether to put a claim off for a moment (the event loop will call again): only while
        messages are held (the pool has work), the window is mostly full, and we claimed less
        than COALESCE seconds ago. Each claim then takes several messages, not one per ack."""
        if room is None or not self.transport.on_loop_thread():
            return False
        held = (self.qos.prefetch_count or 0) - room
        wait = COALESCE - (time.monotonic() - self._last_claim)
        if held <= 0 or room * 2 >= (self.qos.prefetch_count or 0) or wait <= 0:
            return False
        self.transport.call_again(wait)
        return True

    def _claim(self, queues: list[str], limit: int) -> list[Any]:
        return self.store.claim(queues, limit, self.transport.owner, self.transport.lease_seconds())

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        claimed = self._claim([queue], 1)
        if not claimed:
            raise Empty()
        self.transport.keeper_start()
        return self._deliverable(claimed[0])

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """Get one message; with no_ack it leaves the queue at once."""
        self.store.touch_queues([queue])
        if not no_ack:
            return super().basic_get(queue, no_ack=False, **kwargs)
        taken = self.store.take([queue], 1)
        return self.Message(self._deliverable(taken[0]), channel=self) if taken else None

    def drain_events(self, timeout: float | None = None, callback: Any = None) -> int:
        """Deliver one message (kombu's contract for ``Connection.drain_events``)."""
        return self.deliver(callback or self.connection._deliver, 1)

    def deliver(self, callback: Any, most: int) -> int:
        """Claim up to `most` messages (no more than the prefetch window) in one transaction and
        hand them to `callback`; raises Empty when there are none."""
        if self.transport.moved:
            raise sqlite3.OperationalError(self.transport.moved)  # a connection error: Celery reconnects
        if not self._consumers:
            raise Empty()
        stamp = self.store.change_stamp()
        if stamp == self._empty_stamp and time.time() < self.next_due:
            raise Empty()  # nothing was committed and nothing came due since the last empty claim
        taken = self.deliver_unacked(callback, most)  # control and broadcast first
        acked = [q for q in self._active_queues if q not in self._no_ack_queues]
        room = self.qos.can_consume_max_estimate()
        limit = min(most - taken, self.prefetch_batch if room is None else room)
        if acked and limit > 0 and not taken and self._claim_soon(room):
            raise Empty()  # a claim a moment later (call_again) takes more messages at once
        claimed: list[Any] = []
        if acked and limit > 0:
            self._last_claim = time.monotonic()
            claimed = self._claim(acked, limit)
        elif acked and not taken and room == 0:
            raise Empty()  # the prefetch window is full: an ack will wake us
        if not taken and not claimed:
            self._empty_stamp = stamp
            due = self.store.next_due(list(self._active_queues))
            self.next_due = math.inf if due is None else due
            raise Empty()
        self._empty_stamp = None
        self.next_due = math.inf
        if claimed:
            # A control message (a revoke) committed while we claimed may have been published
            # before some of the tasks we claimed: it is handed over first.
            self.transport.deliver_control()
        for job in claimed:
            callback(self._deliverable(job), job.queue)
        return taken + len(claimed)

    def deliver_unacked(self, callback: Any, most: int | None = None) -> int:
        """Deliver up to `most` ready messages of this channel's no-ack queues (control and
        broadcast: they leave the queue as they are delivered); how many."""
        unacked = [q for q in self._active_queues if q in self._no_ack_queues]
        taken = self.store.take(unacked, self.prefetch_batch if most is None else most) if unacked else []
        for job in taken:
            callback(self._deliverable(job), job.queue)
        return len(taken)

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        """Consume from `queue`; starts the lease keeper of this connection."""
        self._empty_stamp = None
        if no_ack:
            self._no_ack_queues.add(queue)
        result = super().basic_consume(queue, no_ack, *args, **kwargs)
        self.store.add_consumer(queue, self.transport.owner)
        self.store.touch_queues([queue])
        self.transport.keeper_start()
        return result

    def basic_cancel(self, consumer_tag: str) -> Any:
        """Stop consuming; an auto-delete queue is deleted with its last consumer (any process)."""
        queue = self._tag_to_queue.get(consumer_tag)
        result = super().basic_cancel(consumer_tag)
        if queue is not None and queue not in self._active_queues:
            self._no_ack_queues.discard(queue)
            self.store.remove_consumer(queue, self.transport.owner)
        return result

    def consumed_queues(self) -> list[str]:
        """The queues this channel consumes from."""
        return list(self._active_queues)

    def consumes_without_ack(self) -> bool:
        """Whether some queue of this channel is consumed with no_ack (control, broadcast, events)."""
        return bool(self._no_ack_queues)

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        """Complete the message's row (or delete it when retention is 0).

        On the event loop's thread, acks are gathered and written in one transaction (at most
        COALESCE seconds later: see Transport.flush_acks); elsewhere they are written at once.
        """
        job_id = _job_id(delivery_tag)
        if self.transport.on_loop_thread():
            self._acks.append(job_id)
            self.qos.ack(delivery_tag)
            self._slot_freed()
        else:
            self.store.ack(job_id, self.transport.owner, self.retention)
            self.qos.ack(delivery_tag)

    def _slot_freed(self) -> None:
        """On the event loop, after an ack or reject: once half the prefetch window is free, claim
        again now. A deferred claim (_claim_soon) would otherwise wait for the next write to the
        file, the ack flush COALESCE seconds later: one window per COALESCE seconds at most
        (3,200 tasks/s with Celery's 16), short of what a prefork pool of quick tasks runs."""
        prefetch = self.qos.prefetch_count
        if prefetch:
            room = self.qos.can_consume_max_estimate()
            if room * 2 >= prefetch > (room - 1) * 2:  # just reached half: once per window
                self.transport.wake()

    def flush_acks(self) -> None:
        """Write the gathered acks and the rejects that could not be written yet.

        A write that fails (disk full, database locked for longer than the busy timeout) keeps
        them for the next tick, with an ERROR naming the file; the rows stay processing under
        our renewed lease meanwhile, so no one else runs them.
        """
        acks, self._acks = self._acks, []
        rejects, self._rejects = self._rejects, []
        try:
            if acks:
                self.store.ack_many(acks, self.transport.owner, self.retention)
                acks = []
            while rejects:
                self._reject(*rejects[0])
                rejects.pop(0)
        except sqlite3.OperationalError as exc:
            self._acks[:0] = acks
            self._rejects[:0] = rejects
            self._write_failed(exc)
            return
        if self._failing_since is not None:
            logger.warning("queuectl: acks and rejects written to %s again after %.1f s",
                           self.store.path, time.monotonic() - self._failing_since)
            self._failing_since = None

    def _write_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failed_logged_at >= 30.0:
            self._failed_logged_at = now
            logger.error("queuectl: cannot write %d acks and %d rejects to %s (%s): kept, retried on each tick",
                         len(self._acks), len(self._rejects), self.store.path, exc)

    def has_pending_writes(self) -> bool:
        """Acks or rejects wait to be written."""
        return bool(self._acks or self._rejects)

    def close(self) -> None:
        """Write pending acks, then close (unacked messages go back to pending)."""
        if not self.closed:
            self.flush_acks()
        super().close()

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        """Requeue the same row, or apply the retry policy (failed with backoff, or dead)."""
        job_id = _job_id(delivery_tag)
        try:
            self._reject(job_id, requeue)
        except sqlite3.OperationalError as exc:
            if not self.transport.on_loop_thread():
                raise
            self._rejects.append((job_id, requeue))  # flush_acks retries it
            self._write_failed(exc)
        self.qos.ack(delivery_tag)
        if self.transport.on_loop_thread():
            self._slot_freed()

    def _reject(self, job_id: int, requeue: bool) -> None:
        if requeue:
            self.store.requeue(job_id, self.transport.owner)
        else:
            self.store.fail(
                job_id, self.transport.owner, max_retries=self.max_retries, backoff_base=self.backoff_base
            )

    def _restore(self, message: Any) -> None:
        """Hand an unacked message back: its row returns to pending (no copy)."""
        self.store.requeue(_job_id(message.delivery_tag), self.transport.owner)

    def _restore_at_beginning(self, message: Any) -> None:
        self._restore(message)


class Transport(virtual.Transport):
    """kombu transport keeping messages in a queuectl SQLite database."""

    Channel = Channel

    polling_interval = 0.01
    default_port = None
    driver_type = "sqlite"
    driver_name = "sqlite3"

    connection_errors = virtual.Transport.connection_errors + (sqlite3.OperationalError,)
    channel_errors = virtual.Transport.channel_errors + (sqlite3.IntegrityError,)

    implements = virtual.Transport.implements.extend(
        asynchronous=True,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
        heartbeats=False,
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        options = client.transport_options
        self.path = database_path(client.virtual_host) if client.virtual_host not in (None, "", "/") else None
        self.synchronous = str(options.get("synchronous", "NORMAL"))
        self._store: JobStore | None = None
        self._waiter: ChangeWaiter | None = None
        self._owner: str | None = None
        self._owner_pid = 0
        self._keeper: LeaseKeeper | None = None
        #: Set by the lease keeper when the path no longer names the file this process opened.
        self.moved: str | None = None
        #: Exclusive queues declared through this connection: deleted when it closes.
        self.exclusive_queues: set[str] = set()
        self._loop: Any = None
        self._loop_thread: int | None = None
        self._timers: list[Any] = []
        self._due_timer: Any = None
        self._due_at = math.inf
        self._again_timer: Any = None
        self._last_flush = -math.inf
        #: A pipe on the event loop that makes its poll return (see call_again).
        self._wake_fds: tuple[int, int] | None = None

    @property
    def default_connection_params(self) -> dict[str, Any]:
        """No host: the file is the whole address (kombu's virtual default, 'localhost', made
        every worker log "No hostname was supplied")."""
        return {}

    @property
    def store(self) -> JobStore:
        """The store of this connection's database file."""
        if self._store is None:
            self._store = store_for(database_path(self.client.virtual_host), self.synchronous)
        return self._store

    @property
    def owner(self) -> str:
        """This consumer's lease owner name: host, pid and a random part."""
        if self._owner is None or self._owner_pid != os.getpid():
            self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            self._owner_pid = os.getpid()
        return self._owner

    @property
    def waiter(self) -> ChangeWaiter:
        """Wakes this process's consumer when the database changes."""
        if self._waiter is None:
            self._waiter = ChangeWaiter(self.store.path, poll_interval=float(self.polling_interval))
        return self._waiter

    def establish_connection(self) -> Transport:
        """Open the database now, so a bad path fails here with a clear message."""
        self.store.open()
        return super().establish_connection()

    # -- Celery's event loop (kombu's hub): used by workers, with the prefork pool's AsynPool --

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """Deliver when the WAL file changes (inotify) or a message comes due; no polling."""
        self.unregister_from_event_loop(connection, loop)
        from . import control

        control.install()  # a worker: `celery inspect scheduled` lists the ETA jobs held here too
        self._loop = loop
        self._loop_thread = threading.get_ident()
        loop.on_tick.add(self.flush_acks)
        if self._wake_fds is None:
            self._wake_fds = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        loop.add_reader(self._wake_fds[0], self._on_wake)
        waiter = self.waiter
        if waiter.uses_inotify:
            loop.add_reader(waiter.fileno(), self.on_change)
            interval = MAX_WAIT
        else:
            interval = float(self.polling_interval)
        self._timers.append(loop.call_repeatedly(interval, self.on_change))
        loop.call_soon(self.on_change)

    def unregister_from_event_loop(self, connection: Any, loop: Any) -> None:
        """Stop watching the file and cancel this transport's timers."""
        if self._loop is not None and self._waiter is not None and self._waiter.fileno() >= 0:
            self._loop.remove_reader(self._waiter.fileno())
        if self._loop is not None and self._wake_fds is not None:
            self._loop.remove_reader(self._wake_fds[0])
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._due_timer is not None:
            self._due_timer.cancel()
            self._due_timer = None
        if self._again_timer is not None:
            self._again_timer.cancel()
            self._again_timer = None
        self._last_flush = -math.inf
        self.flush_acks()
        if self._loop is not None:
            self._loop.on_tick.discard(self.flush_acks)
        self._loop = None
        self._loop_thread = None

    def on_loop_thread(self) -> bool:
        """True when called on the thread that runs Celery's event loop for this transport."""
        return self._loop is not None and self._loop_thread == threading.get_ident()

    def flush_acks(self) -> None:
        """Write the acks every channel gathered on the event loop (runs before each wait).

        At most one write every COALESCE seconds unless ACK_BATCH acks are waiting: under load
        each transaction then completes many rows (a timer writes the rest)."""
        pending = sum(len(ch._acks) + len(ch._rejects) for ch in self.channels)
        if not pending:
            return
        failing = any(ch._failing_since is not None for ch in self.channels)
        # writes that fail (disk full) are tried again once a second, not at every turn
        wait = (RETRY_FAILED if failing else COALESCE) - (time.monotonic() - self._last_flush)
        if (failing or pending < ACK_BATCH) and wait > 0 and self._loop is not None:
            self.call_again(wait, on_tick=True)
            return
        self._last_flush = time.monotonic()
        for channel in self.channels:
            if channel.has_pending_writes():
                channel.flush_acks()

    def call_again(self, delay: float, *, on_tick: bool = False) -> None:
        """Run flush_acks and on_change again in `delay` seconds (one timer at a time).

        The hub computes its poll timeout before it runs on_tick (where flush_acks runs), so a
        timer added there (`on_tick`) would wait for the next event or for the 1 s timer: with
        no other descriptor busy (a threads pool) every prefetch window stalled ~1 s. The wake
        pipe makes the poll return at once and the next turn of the loop sees the new timer.
        """
        if self._loop is None or self._again_timer is not None:
            return
        self._again_timer = self._loop.call_later(delay, self._again)
        if on_tick:
            self.wake()

    def wake(self) -> None:
        """Make the event loop's poll return now; its next turn delivers what it can."""
        if self._loop is not None and self._wake_fds is not None:
            with contextlib.suppress(BlockingIOError):  # full: the loop wakes anyway
                os.write(self._wake_fds[1], b"\0")

    def _on_wake(self) -> None:
        """The wake pipe: empty it and deliver (a timer set by call_again fires on its own)."""
        if self._wake_fds is not None:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_fds[0], 4096):
                    pass
        self.on_change()

    def _again(self) -> None:
        self._again_timer = None
        self.flush_acks()
        self.on_change()

    def on_change(self) -> None:
        """The database may have changed (or a timer fired): deliver whatever is ready."""
        if self._waiter is not None:
            self._waiter.drain()
        # Control and broadcast messages (no-ack queues: pidbox, events) before tasks: a revoke
        # published just before its task is handled before the task is (Redis leaves it to a race).
        for channel in sorted(self.channels, key=lambda ch: not ch.consumes_without_ack()):
            try:
                channel.deliver(self._deliver, channel.prefetch_batch)
            except Empty:
                pass
        self._schedule_due()

    def deliver_control(self) -> None:
        """Deliver what the no-ack queues (pidbox, broadcast) hold now, before claimed tasks."""
        for channel in list(self.channels):
            if channel.consumes_without_ack():
                channel.deliver_unacked(self._deliver)

    def _schedule_due(self) -> None:
        due = min((ch.next_due for ch in self.channels), default=math.inf)
        if self._loop is None or due == self._due_at:
            return
        if self._due_timer is not None:
            self._due_timer.cancel()
            self._due_timer = None
        self._due_at = due
        if due != math.inf:
            self._due_timer = self._loop.call_later(max(0.0, due - time.time()) + 0.001, self._on_due)

    def _on_due(self) -> None:
        self._due_timer = None
        self._due_at = math.inf
        self.on_change()

    def close_connection(self, connection: Any) -> None:
        """Close channels (handing back unacked messages), then stop the lease keeper."""
        try:
            super().close_connection(connection)
        finally:
            if self._loop is not None:
                self.unregister_from_event_loop(connection, self._loop)
            try:
                for queue in list(self.exclusive_queues):
                    self.store.delete_queue(queue)
                if self._owner is not None and self._owner_pid == os.getpid():
                    self.store.remove_owner(self._owner)
            except (sqlite3.Error, DatabaseUnusable) as exc:
                logger.warning("could not clean up after the connection: %s", exc)
            self.exclusive_queues.clear()
            if self._keeper is not None:
                self._keeper.stop()
                self._keeper = None
            if self._waiter is not None:
                self._waiter.close()
                self._waiter = None
            if self._wake_fds is not None and self._loop is None:
                for fd in self._wake_fds:
                    os.close(fd)
                self._wake_fds = None

    def consumed_queues(self) -> list[str]:
        """Every queue some channel of this connection consumes from."""
        return sorted({q for ch in self.channels for q in ch.consumed_queues()})

    def keeper_start(self) -> None:
        """Start renewing this connection's leases (once per process)."""
        if self._keeper is None or not self._keeper.alive():
            self._keeper = LeaseKeeper(self)
            self._keeper.start()

    def lease_seconds(self) -> float:
        """The visibility timeout: transport option, else config table, else the default."""
        option = self.client.transport_options.get("visibility_timeout")
        if option is not None:
            return float(option)
        return float(self.store.settings()["visibility_timeout"])

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver what is ready; otherwise sleep until the file changes or a message comes due."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = self.waiter
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            wait = MAX_WAIT
            now = time.monotonic()
            if deadline is not None:
                if now >= deadline:
                    raise socket.timeout()
                wait = min(wait, deadline - now)
            due = min((ch.next_due for ch in self.channels), default=math.inf)
            wait = max(0.0, min(wait, due - time.time()))
            if wait > 0:
                waiter.wait(wait)


class LeaseKeeper(threading.Thread):
    """Renews the leases a live consumer holds, and recovers leases whose owner died.

    Also prunes completed jobs past their retention time and checkpoints the WAL.
    """

    PRUNE_EVERY = 30.0
    TOUCH_EVERY = 1.0
    CHECKPOINT_EVERY = 10.0

    def __init__(self, transport: Transport) -> None:
        super().__init__(name="queuectl-lease-keeper", daemon=True)
        self.transport = transport
        self.store = transport.store
        self._stop_event = threading.Event()
        self._pid = os.getpid()

    def alive(self) -> bool:
        """Running in this process (a thread does not survive fork)."""
        return self._pid == os.getpid() and self.is_alive()

    def stop(self) -> None:
        """Ask the thread to end; it does within one tick."""
        self._stop_event.set()

    def run(self) -> None:
        last_renew = last_prune = last_checkpoint = last_touch = last_heartbeat = time.monotonic()
        while not self._stop_event.is_set():
            try:
                moved = self.store.db.moved()
                if moved:
                    logger.critical(
                        "queuectl: database %s %s while this worker had it open: reconnecting to the "
                        "file now at that path (what the old file held is no longer served)",
                        self.store.path, moved,
                    )
                    self.transport.moved = f"database {self.store.path} {moved}"
                    break
                with fork_guard():
                    lease = self.transport.lease_seconds()
                tick = max(0.05, min(1.0, lease / 4))
                if self._stop_event.wait(tick):
                    break
                now = time.monotonic()
                with fork_guard():  # a pool process forked meanwhile must not inherit SQLite's locks
                    last_renew, last_heartbeat, last_touch, last_prune, last_checkpoint = self._tick(
                        now, lease, last_renew, last_heartbeat, last_touch, last_prune, last_checkpoint
                    )
            except (sqlite3.Error, DatabaseUnusable) as exc:
                logger.warning("lease keeper: %s", exc)
                self._stop_event.wait(1.0)
            except Exception:  # pragma: no cover - keep leases alive whatever happens
                logger.exception("lease keeper failed; retrying")
                self._stop_event.wait(1.0)
        self.store.close()

    def _tick(
        self, now: float, lease: float, last_renew: float, last_heartbeat: float, last_touch: float,
        last_prune: float, last_checkpoint: float,
    ) -> tuple[float, float, float, float, float]:
        """One round of housekeeping; returns the new times of each kind of work."""
        if now - last_renew >= lease / 3:
            self.store.renew_leases(self.transport.owner, lease)
            last_renew = now
        if now - last_heartbeat >= CONSUMER_HEARTBEAT:
            self.store.heartbeat(self.transport.owner)
            last_heartbeat = now
        self.store.recover_expired_leases(self._option("max_retries"))
        if now - last_touch >= self.TOUCH_EVERY:
            self.store.touch_queues(self.transport.consumed_queues())
            self.store.expire()
            last_touch = now
        if now - last_prune >= self.PRUNE_EVERY:
            self.store.prune_completed(self._retention())
            last_prune = now
        if now - last_checkpoint >= self.CHECKPOINT_EVERY or self.store.wal_too_large():
            self.store.checkpoint()
            last_checkpoint = now
        return last_renew, last_heartbeat, last_touch, last_prune, last_checkpoint

    def _retention(self) -> float | None:
        option = self._option("retention")
        return None if option is None else float(option)

    def _option(self, name: str) -> Any:
        return self.transport.client.transport_options.get(name)
