"""The housekeeper: one thread per worker process that keeps the file in order.

It renews the leases this process holds, recovers the leases of consumers that died, refreshes
this process's consumer rows, expires queues and messages past their TTL, prunes completed jobs
past their retention and old minutes of the stats table, checkpoints the WAL (SQLite) or keeps the
planner's statistics of the jobs table fresh (PostgreSQL), and notices when the database file was
deleted or replaced under the worker.

It is also this process's checkpointer (SQLite): a write of the process that finds the WAL past
its checkpoint size wakes the thread, which checkpoints at once, off the path of the claim, ack
or result that found it (db.Database.checkpoint_in_background).
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .db import fork_guard
from .exceptions import DatabaseUnusable
from .store import CONSUMER_HEARTBEAT

logger = logging.getLogger(__name__)

#: Seconds between the kinds of work (leases are renewed every third of their length).
PRUNE_EVERY = 30.0
TOUCH_EVERY = 1.0
CHECKPOINT_EVERY = 10.0
#: While the same error fails every round (a database server that is down), it is logged again
#: this often, not every second.
REPEAT_FAILURE_EVERY = 60.0


@dataclass
class _Last:
    """When each kind of work last ran (time.monotonic)."""

    renew: float = field(default_factory=time.monotonic)
    heartbeat: float = field(default_factory=time.monotonic)
    touch: float = field(default_factory=time.monotonic)
    prune: float = field(default_factory=time.monotonic)
    checkpoint: float = field(default_factory=time.monotonic)


class Housekeeper(threading.Thread):
    """Keeps the leases of one transport alive and the file in order (a daemon thread)."""

    def __init__(self, transport: Any) -> None:
        super().__init__(name="queuectl-housekeeper", daemon=True)
        self.transport = transport
        self.store = transport.store
        self._stop_event = threading.Event()
        #: Set by this process's writes when the WAL wants a checkpoint (db.checkpoint_in_background)
        #: and by stop(): either wakes the thread before its tick.
        self._wake = threading.Event()
        self._pid = os.getpid()

    def alive(self) -> bool:
        """Running in this process (a thread does not survive fork)."""
        return self._pid == os.getpid() and self.is_alive()

    def stop(self) -> None:
        """Ask the thread to end; it does at once, or after the piece of work it is doing."""
        self._stop_event.set()
        self._wake.set()

    def run(self) -> None:
        done = self.store.db.checkpoint_in_background(self._wake)
        try:
            self._run()
        finally:
            done()
            self.store.close()

    def _run(self) -> None:
        last = _Last()
        failing: str | None = None  # the error of the rounds failing since, said once a minute
        failing_said = -math.inf
        next_tick = -math.inf
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
                if next_tick == -math.inf:
                    next_tick = time.monotonic() + max(0.05, min(1.0, lease / 4))
                woken = self._wake.wait(max(0.0, next_tick - time.monotonic()))
                if self._stop_event.is_set():
                    break
                if woken:  # a write of this process found the WAL past its checkpoint size
                    self._wake.clear()
                    # not under fork_guard: the checkpoint keeps fork() out by itself, and the
                    # event loop's claims and acks go on meanwhile
                    self.store.checkpoint()
                    last.checkpoint = time.monotonic()
                if time.monotonic() < next_tick:
                    continue
                next_tick = -math.inf
                with fork_guard():  # a pool process forked meanwhile must not inherit SQLite's locks
                    self._tick(time.monotonic(), lease, last)
                if failing is not None:
                    logger.warning("housekeeper: working again (%s)", self.store.path)
                    failing = None
            except (sqlite3.Error, DatabaseUnusable) as exc:
                # a server that is down fails every round: said when it starts, then once a minute
                if str(exc) != failing or time.monotonic() - failing_said >= REPEAT_FAILURE_EVERY:
                    logger.warning("housekeeper: %s", exc)
                    failing_said = time.monotonic()
                failing = str(exc)
                self._stop_event.wait(1.0)
            except Exception:  # pragma: no cover - keep leases alive whatever happens
                logger.exception("housekeeper failed; retrying")
                self._stop_event.wait(1.0)

    def _tick(self, now: float, lease: float, last: _Last) -> None:
        """One round: each kind of work whose time has come."""
        store, owner = self.store, self.transport.owner
        if now - last.renew >= lease / 3:
            store.renew_leases(owner, lease)
            last.renew = now
        if now - last.heartbeat >= CONSUMER_HEARTBEAT:
            store.heartbeat(owner)
            last.heartbeat = now
        store.recover_expired_leases(self._option("max_retries"))
        if now - last.touch >= TOUCH_EVERY:
            store.touch_queues(self.transport.consumed_queues())
            store.expire()
            store.keep_statistics()
            last.touch = now
        if now - last.prune >= PRUNE_EVERY:
            retention = self._option("retention")
            store.prune_completed(None if retention is None else float(retention))
            store.fold_stats()
            last.prune = now
        if now - last.checkpoint >= CHECKPOINT_EVERY or store.wal_too_large():
            store.checkpoint()
            last.checkpoint = now

    def _option(self, name: str) -> Any:
        return self.transport.client.transport_options.get(name)
