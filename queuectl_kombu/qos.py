"""QoS: a channel's unacked messages, and the acks and rejects it buffers and writes.

On the thread of Celery's event loop, acks are gathered and written many to a transaction (the
loop flushes them: see loop.py); elsewhere they are written at once. A write that fails (disk
full, the database locked past the busy timeout) is kept and tried again; the rows stay
processing under our renewed lease meanwhile, so no one else runs them.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from typing import Any

from kombu.transport import virtual

from .revokes import revoked_reason

logger = logging.getLogger(__name__)

#: After a failed write, ERROR is logged at most this often.
LOG_FAILED_EVERY = 30.0


def job_id(delivery_tag: Any) -> int:
    """The job id in a delivery tag ("<job id>:<counter>")."""
    return int(str(delivery_tag).split(":", 1)[0])


class QoS(virtual.QoS):
    """Unacked messages of a channel; restoring one puts its row back to pending."""

    def __init__(self, channel: Any, prefetch_count: int = 0) -> None:
        super().__init__(channel, prefetch_count)
        self._acks: list[int] = []
        self._rejects: list[tuple[int, bool]] = []  # (job id, requeue) whose write failed
        self._cancels: list[tuple[int, str]] = []  # (job id, reason) whose write failed
        #: When writes began to fail (None while they succeed).
        self.failing_since: float | None = None
        self._failed_logged_at = -math.inf

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        """Expired leases are recovered by the housekeeper (housekeeper.py)."""

    def ack_message(self, delivery_tag: Any) -> None:
        """Complete the message's row (or delete it when retention is 0): buffered on the event
        loop's thread, written at once elsewhere. The ack of a task that a Celery worker
        discarded or terminated because it was revoked moves the row to dead instead (revokes.py)."""
        channel = self.channel
        reason = revoked_reason(self._delivered.get(delivery_tag))
        if reason is not None:
            self._cancel_message(delivery_tag, reason)
        elif channel.transport.on_loop_thread():
            self._acks.append(job_id(delivery_tag))
            self.ack(delivery_tag)
            self._slot_freed()
        else:
            channel.store.ack(job_id(delivery_tag), channel.transport.owner, channel.retention)
            self.ack(delivery_tag)

    def reject_message(self, delivery_tag: Any, requeue: bool) -> None:
        """Requeue the same row, or apply the retry policy (failed with backoff, or dead)."""
        on_loop = self.channel.transport.on_loop_thread()
        try:
            self._reject(job_id(delivery_tag), requeue)
        except sqlite3.OperationalError as exc:
            if not on_loop:
                raise
            self._rejects.append((job_id(delivery_tag), requeue))  # flush retries it
            self._write_failed(exc)
        self.ack(delivery_tag)
        if on_loop:
            self._slot_freed()

    def _cancel_message(self, delivery_tag: Any, reason: str) -> None:
        """The ack of a revoked task: its row ends dead with last_error `reason`."""
        on_loop = self.channel.transport.on_loop_thread()
        job = job_id(delivery_tag)
        try:
            self.channel.store.cancel_processing(job, self.channel.transport.owner, reason)
        except sqlite3.OperationalError as exc:
            if not on_loop:
                raise
            self._cancels.append((job, reason))  # flush retries it
            self._write_failed(exc)
        self.ack(delivery_tag)
        if on_loop:
            self._slot_freed()

    def restore_message(self, delivery_tag: Any) -> None:
        """Hand an unacked message back: its row returns to pending (no copy)."""
        self.channel.store.requeue(job_id(delivery_tag), self.channel.transport.owner)

    def pending_writes(self) -> int:
        """Acks, rejects and cancels waiting to be written."""
        return len(self._acks) + len(self._rejects) + len(self._cancels)

    def waiting(self) -> tuple[list[int], list[tuple[int, bool]], list[tuple[int, str]]]:
        """A copy of what waits to be written, for put_back."""
        return list(self._acks), list(self._rejects), list(self._cancels)

    def put_back(self, waiting: tuple[list[int], list[tuple[int, bool]], list[tuple[int, str]]]) -> None:
        """After a flush inside a transaction that then rolled back (Channel._claim): what it wrote
        was undone with it, so it waits to be written again, ahead of what came meanwhile."""
        acks, rejects, cancels = waiting
        self._acks[:0] = [job for job in acks if job not in self._acks]
        self._rejects[:0] = [reject for reject in rejects if reject not in self._rejects]
        self._cancels[:0] = [cancel for cancel in cancels if cancel not in self._cancels]

    def flush(self) -> None:
        """Write the gathered acks and the rejects that could not be written yet; a write that
        fails keeps them for the next flush, with an ERROR naming the file."""
        channel = self.channel
        acks, self._acks = self._acks, []
        rejects, self._rejects = self._rejects, []
        cancels, self._cancels = self._cancels, []
        try:
            if acks:
                channel.store.ack_many(acks, channel.transport.owner, channel.retention)
                acks = []
            while rejects:
                self._reject(*rejects[0])
                rejects.pop(0)
            while cancels:
                channel.store.cancel_processing(cancels[0][0], channel.transport.owner, cancels[0][1])
                cancels.pop(0)
        except sqlite3.OperationalError as exc:
            self._acks[:0] = acks
            self._rejects[:0] = rejects
            self._cancels[:0] = cancels
            self._write_failed(exc)
            return
        if self.failing_since is not None:
            logger.warning("queuectl: acks and rejects written to %s again after %.1f s",
                           channel.store.path, time.monotonic() - self.failing_since)
            self.failing_since = None

    def _reject(self, job: int, requeue: bool) -> None:
        channel = self.channel
        if requeue:
            channel.store.requeue(job, channel.transport.owner)
        else:
            channel.store.fail(job, channel.transport.owner, max_retries=channel.max_retries,
                               backoff_base=channel.backoff_base)

    def _slot_freed(self) -> None:
        """On the event loop, after an ack or reject: once half the prefetch window is free, claim
        again now. A deferred claim (Channel._claim_soon) would otherwise wait for the next write
        to the file, the ack flush COALESCE seconds later: one window per COALESCE seconds at most
        (3,200 tasks/s with Celery's 16), short of what a prefork pool of quick tasks runs."""
        prefetch = self.prefetch_count
        if prefetch:
            room = self.can_consume_max_estimate()
            if room * 2 >= prefetch > (room - 1) * 2:  # just reached half: once per window
                self.channel.transport.wake()

    def _write_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        if now - self._failed_logged_at >= LOG_FAILED_EVERY:
            self._failed_logged_at = now
            logger.error("queuectl: cannot write %d acks and %d rejects to %s (%s): kept, retried on each tick",
                         len(self._acks), len(self._rejects), self.channel.store.path, exc)
