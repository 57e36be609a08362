"""An app that imports nothing of this project: the transport comes from ``broker_transport``
and the result backend from its ``sqlite://`` URL alone (the ``celery.result_backends`` entry point)."""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery

import rtest_ready  # noqa: F401  (writes RTEST_READY when the worker is ready)

app = Celery("rapp_noimport")
app.conf.update(
    broker_url=os.environ["RTEST_BROKER"],
    broker_transport="queuectl_kombu.transport:Transport",
    result_backend=os.environ["RTEST_BACKEND"],
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)

#: Whether anything had imported queuectl_kombu when this module finished loading.
IMPORTED_AT_LOAD = "queuectl_kombu" in sys.modules


@app.task(name="rt.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="rt.whoami")
def whoami() -> dict[str, Any]:
    backend = app.backend
    return {
        "backend": f"{type(backend).__module__}:{type(backend).__name__}",
        "path": getattr(backend, "path", None),
        "imported_at_load": IMPORTED_AT_LOAD,
    }
