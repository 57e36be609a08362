"""Celery's revokes on a queuectl broker: a revoked task ends dead ("cancelled"), never completed.

A Celery worker acknowledges the message of a task it does not run because it was revoked
(``AsyncResult.revoke()``, ``celery control revoke``, ``queuectl cancel``), and of a task it
terminated (``revoke(terminate=True)``). On RabbitMQ or Redis that ack just drops the message; in
queuectl it would complete the job's row, and a job nobody ran would show up as completed. So the
QoS asks `revoked_reason` before it writes an ack: in a worker process, an ack of a task id that
the worker holds as revoked, that did not succeed and that the worker no longer tracks (Celery
forgets a request before it acknowledges a revoke; it still tracks one it acknowledges at its
start, the early ack), is the ack of a revoke. The QoS then moves the row to dead instead
(JobStore.cancel_processing), so that ``dlq retry`` can run it again.

A worker keeps revoked ids in memory for hours, and would discard the retried job as revoked
again: ``dlq retry`` of a cancelled job stamps its message with REVIVED_HEADER, and
`forget_revoke_before_revival` (called as the message is delivered) drops a revoke that is older
than that stamp. A revoke sent after the retry still holds.

Outside a Celery worker (``celery.worker.state`` never imported: a kombu consumer, the CLI)
nothing here does anything.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from typing import Any

from .rules import CANCELLED, REVIVED_HEADER

#: The last_error of a task whose Celery ``expires`` time passed before it ran (Celery revokes it).
EXPIRED = "expired"


def _worker_state() -> Any:
    """Celery's worker state module, if this process is a Celery worker (imported it)."""
    return sys.modules.get("celery.worker.state")


def task_id_of(message: Any) -> str | None:
    """The Celery task id of a kombu message (protocol 2 header, else the correlation id)."""
    headers = getattr(message, "headers", None) or {}
    properties = getattr(message, "properties", None) or {}
    task_id = headers.get("id") or properties.get("correlation_id")
    return None if task_id is None else str(task_id)


def revoked_reason(message: Any) -> str | None:
    """Why the ack of `message` is not a completion: CANCELLED (its task was revoked), EXPIRED
    (its Celery ``expires`` time had passed), or None: a plain ack (also outside a worker)."""
    state = _worker_state()
    if state is None:
        return None
    revoked = getattr(state, "revoked", None)
    if not revoked:  # the common case: no revoke at all in this worker
        return None
    task_id = task_id_of(message)
    if task_id is None or task_id not in revoked:
        return None
    if task_id in getattr(state, "successful_requests", ()):
        return None  # it ran to its end before the revoke: completed
    if task_id in getattr(state, "requests", {}):
        return None  # still tracked: an early ack at its start (task_acks_late off)
    return EXPIRED if _expired(message) else CANCELLED


def _expired(message: Any) -> bool:
    expires = (getattr(message, "headers", None) or {}).get("expires")
    if not expires:
        return False
    try:
        when = datetime.fromisoformat(str(expires))
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when <= datetime.now(timezone.utc)


def forget_revoke_before_revival(message: dict[str, Any]) -> None:
    """Before a worker takes a message that `dlq retry` revived (REVIVED_HEADER): drop the
    revoke of its task this worker holds from before the retry, so that the task runs."""
    headers = message.get("headers") or {}
    revived_at = headers.get(REVIVED_HEADER)
    if revived_at is None:
        return
    state = _worker_state()
    revoked = getattr(state, "revoked", None)
    task_id = headers.get("id") or (message.get("properties") or {}).get("correlation_id")
    if not revoked or task_id is None or task_id not in revoked:
        return
    if _revoked_at(revoked, task_id) <= float(revived_at):
        revoked.discard(task_id)


def _revoked_at(revoked: Any, task_id: str) -> float:
    """When this worker took in the revoke of `task_id`, in epoch seconds (-inf if unknown).

    Celery's LimitedSet stamps each item with time.monotonic() in the tuple it keeps per item;
    if that ever changes, the revoke counts as older than any retry."""
    try:
        stamp = float(revoked._data[task_id][0])
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return float("-inf")
    return time.time() - (time.monotonic() - stamp)
