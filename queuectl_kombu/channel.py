"""Channel: the kombu channel of a queuectl file. Its queues are rows of the jobs table; it
publishes through routing.py and publishing.py, claims and delivers, and leaves acks and rejects
to its QoS (qos.py). Transport (transport.py) holds the connection these channels share."""

from __future__ import annotations

import itertools
import json
import math
import time
from queue import Empty
from typing import TYPE_CHECKING, Any

from kombu.transport import virtual
from kombu.transport.base import to_rabbitmq_queue_arguments
from kombu.utils.json import loads

from .exceptions import DatabaseMoved
from .jobs import ClaimedJob
from .loop import COALESCE
from .publishing import publish_message
from .qos import QoS
from .revokes import forget_revoke_before_revival
from .routing import Routing
from .rules import MAX_PRIORITY, REVIVED_HEADER

if TYPE_CHECKING:
    from .transport import Transport

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
        """Route through the bindings in the file; every copy is inserted in one transaction or, when
        another writer has the file's turn, written in one line of the spool
        (publishing.publish_message)."""
        self._inplace_augment_message(message, exchange, routing_key)
        publish_message(self.store, message, self._lookup(exchange, routing_key))

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        publish_message(self.store, message, [queue])

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any) -> None:
        publish_message(self.store, message, self._lookup(exchange, routing_key))

    # -- queues -------------------------------------------------------------------------------

    def prepare_queue_arguments(self, arguments: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Queue(expires=, message_ttl=, max_priority=) as x-expires, x-message-ttl, x-max-priority."""
        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        exclusive = bool(kwargs.get("exclusive"))
        auto_delete = bool(kwargs.get("auto_delete"))
        self.store.declare_queue(queue, kwargs.get("arguments"), auto_delete=auto_delete, exclusive=exclusive)
        self._declared()
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
        if REVIVED_HEADER in payload:
            forget_revoke_before_revival(message)  # a cancelled job that dlq retry revived
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
        """Claim; on the event loop of a SQLite worker, in one transaction with the acks waiting
        to be written (their flush would be a transaction of its own a moment later: each takes
        the file's turn from the publishers)."""
        owner, lease = self.transport.owner, self.transport.lease_seconds()
        if self.qos.pending_writes() and self.store.db.engine == "sqlite" and self.transport.on_loop_thread():
            waiting = self.qos.waiting()
            try:
                with self.store.one_transaction():
                    self.qos.flush()
                    return self.store.claim(queues, limit, owner, lease)
            except BaseException:
                self.qos.put_back(waiting)  # rolled back with the claim: to be written again
                raise
        return self.store.claim(queues, limit, owner, lease)

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

    def will_claim(self) -> bool:
        """Whether this channel's next deliver claims (it consumes with acks and has room)."""
        return (any(q not in self._no_ack_queues for q in self._active_queues)
                and self.qos.can_consume_max_estimate() != 0)

    def deliver(self, callback: Any, most: int, *, claim_follows: bool = False) -> int:
        """Claim up to `most` messages (no more than the prefetch window) in one transaction and
        hand them to `callback`; raises Empty when there are none. `claim_follows`: a claim of
        this transport comes in the same round (Transport.on_change), and moves in what the spool
        holds (SQLite): the take of the control queues needs no write of its own for that; what the
        spool brought them is handed over after the claim (Transport.deliver_control)."""
        if self.transport.moved:
            raise DatabaseMoved(self.transport.moved)  # a connection error: Celery reconnects
        if not self._consumers:
            raise Empty()
        stamp = self.store.work_stamp()
        if stamp == self._empty_stamp and time.time() < self.next_due:
            raise Empty()  # nothing was committed and nothing came due since the last empty claim
        acked = [q for q in self._active_queues if q not in self._no_ack_queues]
        room = self.qos.can_consume_max_estimate()
        claim_follows = claim_follows or (bool(acked) and room != 0)
        taken = self.deliver_unacked(callback, most, spool=not claim_follows)  # control and broadcast first
        limit = min(most - taken, self.prefetch_batch if room is None else room)
        if acked and limit > 0 and not taken and self._claim_soon(room):
            raise Empty()  # a claim a moment later (call_again) takes more messages at once
        claimed: list[ClaimedJob] = []
        if acked and limit > 0:
            self._last_claim = time.monotonic()
            spool = self.store.db.spool
            spooled = claim_follows and spool is not None and spool.has_new()  # the claim moves it in
            claimed = self._claim(acked, limit)
            if not claimed and spooled:
                self.transport.deliver_control()  # what moving the spool in brought the control queues
        elif acked and not taken and room == 0:
            raise Empty()  # the prefetch window is full: an ack will wake us
        if not taken and (not claimed or (len(claimed) < limit and not self.store.spool_left())):
            # Nothing (more) was due when the claim looked: it saw every commit made before
            # `stamp` was taken, and after. Until the stamp changes a look would find nothing,
            # so a worker's wake-up by its own claim's commit costs no look.
            self._empty_stamp = stamp
            due = self.store.next_due(list(self._active_queues))
            self.next_due = math.inf if due is None else due
            if not claimed:
                raise Empty()
        else:
            self._empty_stamp = None
            self.next_due = math.inf
        if claimed:
            # A control message (a revoke) committed while we claimed may have been published
            # before some of the tasks we claimed: it is handed over first.
            self.transport.deliver_control()
        for job in claimed:
            callback(self._deliverable(job), job.queue)
        return taken + len(claimed)

    def nothing_new(self) -> bool:
        """Whether this channel's last look found nothing and no work may have come since (the
        work stamp is the same and nothing came due): a look now would find nothing either."""
        return (self._empty_stamp is not None and time.time() < self.next_due
                and self.store.work_stamp() == self._empty_stamp)

    def deliver_unacked(self, callback: Any, most: int | None = None, *, spool: bool = True) -> int:
        """Deliver up to `most` ready messages of this channel's no-ack queues (control and
        broadcast: they leave the queue as they are delivered); how many. `spool`: as
        JobStore.take."""
        unacked = [q for q in self._active_queues if q in self._no_ack_queues]
        taken = (self.store.take(unacked, self.prefetch_batch if most is None else most, spool=spool)
                 if unacked else [])
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
