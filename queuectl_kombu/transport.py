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

The parts
=========

This module is the kombu glue: a Channel (queues, consuming, delivery) and a Transport (the
connection, its store and its consumers). Around it, each in its own module:

* ``routing.py``: exchanges and bindings in the file, and where a publish goes;
* ``publishing.py``: a message's rows (ETA, task id, retries) and their insert;
* ``qos.py``: acks and rejects, buffered and written many to a transaction;
* ``loop.py``: the place in Celery's event loop (wake pipe, timers, inotify);
* ``housekeeper.py``: the thread that renews and recovers leases and keeps the file in order.
"""

from __future__ import annotations


from __future__ import annotations

import itertools
import json
import logging
import math
import os
import socket
import sqlite3
import time
import uuid
from queue import Empty
from typing import Any

from kombu.transport import virtual
from kombu.transport.base import to_rabbitmq_queue_arguments
from kombu.utils.json import loads

from . import control
from . import signals  # noqa: F401  (a failed task's error is kept on its row: record_task_error)
from .db import SCHEME, url_path
from .exceptions import DatabaseMoved, DatabaseUnusable
from .housekeeper import Housekeeper
from .jobs import ClaimedJob
from .loop import COALESCE, LoopLink
from .notify import ChangeWaiter
from .publishing import publish
from .qos import QoS
from .routing import Routing
from .rules import MAX_PRIORITY, MAX_WAIT
from .store import JobStore

logger = logging.getLogger(__name__)

_tags = itertools.count(1)


class Channel(Routing, virtual.Channel):
    """A kombu channel whose queues are rows of the jobs table and whose routes are in the file."""

    QoS = QoS
    qos: QoS
    do_restore = True
    supports_fanout = True
    max_priority = MAX_PRIORITY

    max_retries: int | None = None
    backoff_base: float | None = None
    retention: float | None = None
    prefetch_batch: int = 100

    from_transport_options = virtual.Channel.from_transport_options + (
        "max_retries",
        "backoff_base",
        "retention",
        "prefetch_batch",
    )

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self.transport = connection
        self.store = connection.store
        self._empty_stamp: tuple[int, int] | None = None
        self.next_due = math.inf
        self._no_ack_queues: set[str] = set()
        self._last_claim = -math.inf

    # -- publishing ---------------------------------------------------------------------------

    def _next_delivery_tag(self) -> str:
        """Empty at publish: a stored message gets its tag (the job id) when it is delivered."""
        return ""

    def basic_publish(self, message: dict[str, Any], exchange: str, routing_key: str, **kwargs: Any) -> None:
        """Route through the bindings in the file; every copy is inserted in one transaction."""
        self._inplace_augment_message(message, exchange, routing_key)
        queues = self._lookup(exchange, routing_key)
        if queues:
            publish(self.store, message, queues)

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        publish(self.store, message, [queue])

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any) -> None:
        publish(self.store, message, self._lookup(exchange, routing_key))

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

    def _deliverable(self, claimed: ClaimedJob) -> dict[str, Any]:
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
        self.transport.link.call_again(wait)
        return True

    def _claim(self, queues: list[str], limit: int) -> list[ClaimedJob]:
        return self.store.claim(queues, limit, self.transport.owner, self.transport.lease_seconds())

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        claimed = self._claim([queue], 1)
        if not claimed:
            raise Empty()
        self.transport.housekeeper_start()
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
            raise DatabaseMoved(self.transport.moved)  # a connection error: Celery reconnects
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
        claimed: list[ClaimedJob] = []
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
        """Consume from `queue`; starts the housekeeper of this connection."""
        self._empty_stamp = None
        if no_ack:
            self._no_ack_queues.add(queue)
        result = super().basic_consume(queue, no_ack, *args, **kwargs)
        self.store.add_consumer(queue, self.transport.owner)
        self.store.touch_queues([queue])
        self.transport.housekeeper_start()
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

    # -- acks and rejects: qos.py -------------------------------------------------------------

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        """Complete the message's row (or delete it when retention is 0)."""
        self.qos.ack_message(delivery_tag)

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        """Requeue the same row, or apply the retry policy (failed with backoff, or dead)."""
        self.qos.reject_message(delivery_tag, requeue)

    def _restore(self, message: Any) -> None:
        """Hand an unacked message back: its row returns to pending (no copy)."""
        self.qos.restore_message(message.delivery_tag)

    def _restore_at_beginning(self, message: Any) -> None:
        self._restore(message)

    def close(self) -> None:
        """Write pending acks, then close (unacked messages go back to pending)."""
        if not self.closed:
            self.qos.flush()
        super().close()


class Transport(virtual.Transport):
    """kombu transport keeping messages in a queuectl SQLite database."""

    Channel = Channel

    polling_interval = 0.01
    default_port = None
    driver_type = "sqlite"
    driver_name = "sqlite3"

    connection_errors = virtual.Transport.connection_errors + (sqlite3.OperationalError, DatabaseMoved)
    channel_errors = virtual.Transport.channel_errors + (sqlite3.IntegrityError,)

    implements = virtual.Transport.implements.extend(
        asynchronous=True,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
        heartbeats=False,
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.synchronous = str(client.transport_options.get("synchronous", "NORMAL"))
        self._store: JobStore | None = None
        self._waiter: ChangeWaiter | None = None
        self._owner: str | None = None
        self._owner_pid = 0
        self._housekeeper: Housekeeper | None = None
        #: Set by the housekeeper when the path no longer names the file this process opened.
        self.moved: str | None = None
        #: Exclusive queues declared through this connection: deleted when it closes.
        self.exclusive_queues: set[str] = set()
        #: This transport's place in a worker's event loop.
        self.link = LoopLink(self.on_change, lambda: list(self.channels))

    @property
    def default_connection_params(self) -> dict[str, Any]:
        """No host: the file is the whole address (kombu's virtual default, 'localhost', made
        every worker log "No hostname was supplied")."""
        return {}

    @property
    def store(self) -> JobStore:
        """The store of this connection's database file (its Database shared in the process)."""
        if self._store is None:
            path = url_path(f"{SCHEME}/{self.client.virtual_host or ''}")
            self._store = JobStore.shared(path, synchronous=self.synchronous)
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

    def record_task_error(self, task_id: str, error: str) -> None:
        """Keep a failed task's error on its processing row, for the reject that follows."""
        self.store.record_error(task_id, error)

    # -- Celery's event loop (kombu's hub): used by workers, with the prefork pool's AsynPool --

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """Deliver when the WAL file changes (inotify) or a message comes due; no polling."""
        self.unregister_from_event_loop(connection, loop)
        control.install()  # a worker: `celery inspect scheduled` lists the ETA jobs held here too
        self.link.register(loop, self.waiter, float(self.polling_interval))

    def unregister_from_event_loop(self, connection: Any, loop: Any) -> None:
        """Stop watching the file and cancel this transport's timers."""
        self.link.unregister()

    def on_loop_thread(self) -> bool:
        """True when called on the thread that runs Celery's event loop for this transport."""
        return self.link.on_loop_thread()

    def wake(self) -> None:
        """Make the event loop's poll return now; its next turn delivers what it can."""
        self.link.wake()

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
        self.link.schedule_due(min((ch.next_due for ch in self.channels), default=math.inf))

    def deliver_control(self) -> None:
        """Deliver what the no-ack queues (pidbox, broadcast) hold now, before claimed tasks."""
        for channel in list(self.channels):
            if channel.consumes_without_ack():
                channel.deliver_unacked(self._deliver)

    def close_connection(self, connection: Any) -> None:
        """Close channels (handing back unacked messages), then stop the housekeeper."""
        try:
            super().close_connection(connection)
        finally:
            self.link.unregister()
            try:
                for queue in list(self.exclusive_queues):
                    self.store.delete_queue(queue)
                if self._owner is not None and self._owner_pid == os.getpid():
                    self.store.remove_owner(self._owner)
            except (sqlite3.Error, DatabaseUnusable) as exc:
                logger.warning("could not clean up after the connection: %s", exc)
            self.exclusive_queues.clear()
            if self._housekeeper is not None:
                self._housekeeper.stop()
                self._housekeeper = None
            if self._waiter is not None:
                self._waiter.close()
                self._waiter = None
            self.link.close()

    def consumed_queues(self) -> list[str]:
        """Every queue some channel of this connection consumes from."""
        return sorted({q for ch in self.channels for q in ch.consumed_queues()})

    def housekeeper_start(self) -> None:
        """Start renewing this connection's leases (once per process)."""
        if self._housekeeper is None or not self._housekeeper.alive():
            self._housekeeper = Housekeeper(self)
            self._housekeeper.start()

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
