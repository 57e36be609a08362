"""The transport's place in Celery's event loop (kombu's hub, in a worker): a wake pipe, timers,
the inotify descriptor, and the coalesced flush of acks. No polling on a fixed sleep: the loop
wakes when the file changes, when a message comes due, or when a flush or a claim was put off.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .notify import ChangeWaiter
from .postgres import Listener
from .rules import MAX_WAIT

#: While a worker is busy, claims and ack writes are at most this far apart (each takes many rows),
#: unless ACK_BATCH acks are waiting. An idle worker claims at once.
COALESCE = 0.005
ACK_BATCH = 64
#: How often a worker tries again to write acks and rejects that failed (disk full).
RETRY_FAILED = 1.0


class LoopLink:
    """Ties one transport to one event loop: `on_change` runs whenever something may be
    deliverable, `channels` gives the channels whose acks are flushed before each wait."""

    def __init__(self, on_change: Callable[[], None], channels: Callable[[], list[Any]]) -> None:
        self.on_change = on_change
        self.channels = channels
        self.loop: Any = None
        self._thread: int | None = None
        self._timers: list[Any] = []
        self._waiter_fd = -1
        #: Whether the waiter pushes changes (inotify, LISTEN): its descriptor is watched, with the
        #: waiter's generation (a Listener's connection; the same number may name a new socket).
        self._pushed = False
        self._waiter_generation: int | None = None
        self._due_timer: Any = None
        self._due_at = math.inf
        self._again_timer: Any = None
        self._last_flush = -math.inf
        #: A pipe on the event loop that makes its poll return (see call_again).
        self._wake_fds: tuple[int, int] | None = None

    def register(self, loop: Any, waiter: ChangeWaiter | Listener, polling_interval: float) -> None:
        """Deliver when the database changes (inotify on SQLite's WAL file, a notification on
        PostgreSQL's LISTEN connection) or a message comes due."""
        self.loop = loop
        self._thread = threading.get_ident()
        loop.on_tick.add(self.flush_acks)
        if self._wake_fds is None:
            self._wake_fds = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        loop.add_reader(self._wake_fds[0], self._on_wake)
        self._pushed = waiter.pushes_changes
        if waiter.pushes_changes:
            self._waiter_fd = -1
            self._waiter_generation = None
            self.watch(waiter)
            interval = MAX_WAIT
        else:
            interval = polling_interval
        self._timers.append(loop.call_repeatedly(interval, self.on_change))
        loop.call_soon(self.on_change)

    def watch(self, waiter: ChangeWaiter | Listener) -> None:
        """Watch the waiter's descriptor again if it changed (a Listener that reconnected)."""
        fd, generation = waiter.fileno(), getattr(waiter, "generation", None)
        if self.loop is None or not self._pushed or (fd, generation) == (self._waiter_fd, self._waiter_generation):
            return
        if self._waiter_fd >= 0:
            with contextlib.suppress(KeyError, ValueError, OSError):  # closed with its old socket
                self.loop.remove_reader(self._waiter_fd)
        self._waiter_fd, self._waiter_generation = fd, generation  # fd -1: no connection, the 1 s timer looks
        if fd >= 0:
            self.loop.add_reader(fd, self.on_change)

    def unregister(self) -> None:
        """Stop watching the file, cancel the timers, write what acks wait."""
        loop = self.loop
        if loop is not None and self._waiter_fd >= 0:
            loop.remove_reader(self._waiter_fd)
        self._waiter_fd = -1
        if loop is not None and self._wake_fds is not None:
            loop.remove_reader(self._wake_fds[0])
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for timer in (self._due_timer, self._again_timer):
            if timer is not None:
                timer.cancel()
        self._due_timer = self._again_timer = None
        self._due_at = math.inf
        self._last_flush = -math.inf
        self.flush_acks()
        if loop is not None:
            loop.on_tick.discard(self.flush_acks)
        self.loop = None
        self._thread = None

    def close(self) -> None:
        """Close the wake pipe (once unregistered)."""
        if self._wake_fds is not None and self.loop is None:
            for fd in self._wake_fds:
                os.close(fd)
            self._wake_fds = None

    def on_loop_thread(self) -> bool:
        """True when called on the thread that runs the event loop."""
        return self.loop is not None and self._thread == threading.get_ident()

    def flush_acks(self) -> None:
        """Write the acks every channel gathered on the event loop (runs before each wait).

        At most one write every COALESCE seconds unless ACK_BATCH acks are waiting: under load
        each transaction then completes many rows (a timer writes the rest)."""
        channels = self.channels()
        pending = sum(ch.qos.pending_writes() for ch in channels)
        if not pending:
            return
        failing = any(ch.qos.failing_since is not None for ch in channels)
        # writes that fail (disk full) are tried again once a second, not at every turn
        wait = (RETRY_FAILED if failing else COALESCE) - (time.monotonic() - self._last_flush)
        if (failing or pending < ACK_BATCH) and wait > 0 and self.loop is not None:
            self.call_again(wait, on_tick=True)
            return
        self._last_flush = time.monotonic()
        for channel in channels:
            if channel.qos.pending_writes():
                channel.qos.flush()

    def call_again(self, delay: float, *, on_tick: bool = False) -> None:
        """Run flush_acks and on_change again in `delay` seconds (one timer at a time).

        The hub computes its poll timeout before it runs on_tick (where flush_acks runs), so a
        timer added there (`on_tick`) would wait for the next event or for the 1 s timer: with
        no other descriptor busy (a threads pool) every prefetch window stalled ~1 s. The wake
        pipe makes the poll return at once and the next turn of the loop sees the new timer.
        """
        if self.loop is None or self._again_timer is not None:
            return
        self._again_timer = self.loop.call_later(delay, self._again)
        if on_tick:
            self.wake()

    def wake(self) -> None:
        """Make the event loop's poll return now; its next turn delivers what it can."""
        if self.loop is not None and self._wake_fds is not None:
            with contextlib.suppress(BlockingIOError):  # full: the loop wakes anyway
                os.write(self._wake_fds[1], b"\0")

    def schedule_due(self, due: float) -> None:
        """Run on_change when the earliest waiting message comes due (epoch seconds; inf: none)."""
        if self.loop is None or due == self._due_at:
            return
        if self._due_timer is not None:
            self._due_timer.cancel()
            self._due_timer = None
        self._due_at = due
        if due != math.inf:
            self._due_timer = self.loop.call_later(max(0.0, due - time.time()) + 0.001, self._on_due)

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

    def _on_due(self) -> None:
        self._due_timer = None
        self._due_at = math.inf
        self.on_change()
