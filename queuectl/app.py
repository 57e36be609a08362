"""The ready Celery app: ``celery -A queuectl worker -c 4`` works with no configuration."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

import queuectl_kombu  # noqa: F401  (registers the sqlite:// scheme)

from .settings import broker_url, data_dir_db_path, default_db_path, normalize_db


def make_app(db_path: str | None = None) -> Celery:
    """A Celery app whose broker and result backend are the queuectl database at `db_path` (a
    file path or a postgresql:// URL).

    Without `db_path`: QUEUECTL_DB, else the per-user data file, whose directory is made when
    the app is finalized (a directory named explicitly must exist: a typo is an error).
    """
    path = normalize_db(db_path) if db_path else default_db_path()
    url = broker_url(path)
    celery_app = Celery("queuectl", include=["queuectl.tasks"])
    celery_app.conf.update(
        broker_url=url,
        result_backend=url,  # the entry points `sqlite` and `postgresql` of queuectl_kombu.backend
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
        result_accept_content=["json"],
        event_serializer="json",
    )
    if path == data_dir_db_path():

        def make_data_dir(sender: Any = None, **kwargs: Any) -> None:
            os.makedirs(os.path.dirname(path), exist_ok=True)

        celery_app.on_after_finalize.connect(make_data_dir, weak=False)
    return celery_app


app = make_app()
