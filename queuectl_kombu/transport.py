"""The queuectl transport for kombu: a broker in one SQLite file, or in a PostgreSQL database,
that loses nothing.

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
    postgresql://user:password@host:5432/dbname   (docs/postgresql.md; postgres:// too)

``import queuectl_kombu`` registers the ``sqlite``, ``postgresql`` and ``postgres`` schemes. Without that import, set Celery's
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
* ``schema``: PostgreSQL's schema of the queuectl tables (default ``queuectl``).

The parts
=========

This module holds the Transport: the connection, its store, its consumers and its place in a
worker's event loop. Around it, each in its own module:

* ``channel.py``: the Channel (queues, consuming, delivery);
* ``routing.py``: exchanges and bindings in the file, and where a publish goes;
* ``publishing.py``: a message's rows (ETA, task id, retries) and their insert;
* ``qos.py``: acks and rejects, buffered and written many to a transaction;
* ``loop.py``: the place in Celery's event loop (wake pipe, timers, inotify);
* ``housekeeper.py``: the thread that renews and recovers leases and keeps the file in order.
"""

from __future__ import annotations

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

from . import control
from . import signals  # noqa: F401  (a failed task's error is kept on its row: record_task_error)
from .channel import Channel
from .exceptions import DatabaseMoved, DatabaseUnusable
from .housekeeper import Housekeeper
from .loop import LoopLink
from .notify import ChangeWaiter
from .paths import SCHEME, url_path
from .postgres import Listener, is_postgres_url
from .postgres import mask as masked_url
from .rules import MAX_WAIT
from .store import JobStore

logger = logging.getLogger(__name__)


class Transport(virtual.Transport):
    """kombu transport keeping messages in a queuectl SQLite database."""

    Channel = Channel

    polling_interval = 0.01
    default_port = None
    #: kombu hands the URL over whole (sqlite:// paths and postgresql:// URLs are ours to read).
    can_parse_url = True
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
        self._waiter: ChangeWaiter | Listener | None = None
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
        """The store of this connection's database (its Database shared in the process)."""
        if self._store is None:
            url = self.url()
            if is_postgres_url(url):
                schema = self.client.transport_options.get("schema")
                self._store = JobStore.shared(url, schema=str(schema) if schema else None)
            else:
                self._store = JobStore.shared(url_path(url), synchronous=self.synchronous)
        return self._store

    def url(self) -> str:
        """The URL the connection was given (kombu hands it over whole: can_parse_url), or a
        sqlite:// URL of its virtual host when it was given parts."""
        host = self.client.hostname
        if isinstance(host, str) and "://" in host:
            return host
        return f"{SCHEME}/{self.client.virtual_host or ''}"

    @classmethod
    def as_uri(cls, uri: str, include_password: bool = False, mask: str = "**") -> str:
        """The URL as the user wrote it, for the worker's banner and logs (a password masked)."""
        if include_password or not is_postgres_url(uri):
            return uri
        return masked_url(uri, mask)

    @property
    def owner(self) -> str:
        """This consumer's lease owner name: host, pid and a random part."""
        if self._owner is None or self._owner_pid != os.getpid():
            self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            self._owner_pid = os.getpid()
        return self._owner

    @property
    def waiter(self) -> ChangeWaiter | Listener:
        """Wakes the calling thread when the database changes: that thread's waiter, whose
        wake-ups are the ones its change stamps count (PostgreSQL). Never another thread's: a
        pooled connection moves between threads, and a Listener's connection is one thread's."""
        waiter = self.store.db.thread_waiter(float(self.polling_interval))
        spool = self.store.db.spool
        if spool is not None and isinstance(waiter, ChangeWaiter) and waiter.spool_dir != spool.dir and spool.make_dir():
            waiter.watch_publishes(spool.dir)  # a consumer: woken by publishes spooled as well
            spool.watch()  # and its many looks at the spool per wake-up cost a read(2) each
        return waiter

    def establish_connection(self) -> Transport:
        """Open the database now, so a bad path or server fails here with a clear message."""
        self.store.open()
        return super().establish_connection()

    def record_task_error(self, task_id: str, error: str) -> None:
        """Keep a failed task's error on its processing row, for the reject that follows."""
        self.store.record_error(task_id, error)

    def record_task_terminated(self, task_id: str) -> None:
        """A task terminated by a revoke after an early ack: its completed row ends dead, "cancelled"."""
        self.store.cancel_completed(task_id)

    # -- Celery's event loop (kombu's hub): used by workers, with the prefork pool's AsynPool --

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """Deliver when the WAL file changes (inotify) or a message comes due; no polling."""
        self.unregister_from_event_loop(connection, loop)
        control.install()  # a worker: `celery inspect scheduled` lists the ETA jobs held here too
        self._waiter = self.waiter  # the event loop's thread's: on_change runs there
        self.link.register(loop, self._waiter, float(self.polling_interval))

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
            self.link.watch(self._waiter)
        # Control and broadcast messages (no-ack queues: pidbox, events) before tasks: a revoke
        # published just before its task is handled before the task is (Redis leaves it to a race).
        channels = sorted(self.channels, key=lambda ch: not ch.consumes_without_ack())
        claim_follows = any(channel.will_claim() for channel in channels)
        for channel in channels:
            try:
                channel.deliver(self._deliver, channel.prefetch_batch, claim_follows=claim_follows)
            except Empty:
                pass
        self.link.schedule_due(min((ch.next_due for ch in self.channels), default=math.inf))

    def deliver_control(self) -> None:
        """Deliver what the no-ack queues (pidbox, broadcast) hold now, before claimed tasks."""
        for channel in list(self.channels):
            if channel.consumes_without_ack() and not (self.store.db.exact_stamps and channel.nothing_new()):
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
            self._waiter = None  # the thread's waiter: closed with the thread's connection
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
