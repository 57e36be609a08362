"""Celery signal handlers that keep a failed task's error on its job row, and end a terminated task
that was acknowledged at its start dead rather than completed."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

logger = logging.getLogger(__name__)


def _describe(exception: BaseException | None) -> str:
    if exception is None:
        return "failed"
    text = f"{type(exception).__name__}: {exception}"
    return text if len(text) <= 4000 else text[:3997] + "..."


@signals.task_failure.connect(weak=False)
def keep_error(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
               **kwargs: Any) -> None:
    """Store the exception of a failed task on its processing row (the reject that follows keeps
    it), when the app's broker is a queuectl transport (one with record_task_error)."""
    if sender is None or task_id is None:
        return
    try:
        with sender.app.connection_for_write() as conn:
            record = getattr(conn.transport, "record_task_error", None)
            if record is not None:
                record(task_id, _describe(exception))
    except Exception as exc:  # never turn a task failure into a second failure
        logger.warning("could not record the error of task %s: %s", task_id, exc)


@signals.task_revoked.connect(weak=False)
def bury_terminated(sender: Any = None, request: Any = None, terminated: bool = False, **kwargs: Any) -> None:
    """A task terminated by a revoke (``revoke(terminate=True)``) after its worker acknowledged it
    at its start (``task_acks_late`` off) left a completed row behind: it ends dead, "cancelled"
    (with late acks the row is dead already: revokes.py)."""
    task_id = getattr(request, "id", None)
    if not terminated or sender is None or task_id is None:
        return
    try:
        with sender.app.connection_for_write() as conn:
            bury = getattr(conn.transport, "record_task_terminated", None)
            if bury is not None:
                bury(str(task_id))
    except Exception as exc:  # never turn a revoke into a failure of the worker
        logger.warning("could not mark the terminated task %s cancelled: %s", task_id, exc)
