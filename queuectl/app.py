"""The ready Celery app: ``celery -A queuectl worker -c 4`` works with no configuration."""

from __future__ import annotations

import os

from celery import Celery

import queuectl_kombu  # noqa: F401  (registers the sqlite:// scheme)

from .settings import broker_url, default_db_path


def make_app(db_path: str | None = None) -> Celery:
    """A Celery app whose broker is the queuectl database at `db_path`."""
    path = db_path or default_db_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    celery_app = Celery("queuectl", include=["queuectl.tasks"])
    celery_app.conf.update(
        broker_url=broker_url(path),
        broker_connection_retry_on_startup=True,
        # What broker-side retries need: ack after the run, reject (not ack) a failure so the
        # broker applies max_retries and backoff, requeue when a worker process is lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
    )
    return celery_app


app = make_app()
