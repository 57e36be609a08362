"""Celery signal handlers that keep a failed task's error on its job row."""

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
