"""The Celery app of the transactional enqueue tests: workers run it (``-A tapp``), producers
import it.

Environment:
  TAPP_DB     the queue: a SQLite file path or a postgresql:// URL (broker and result backend)
  TAPP_RAN    file: one line "<order id> <pid>" per run of orders.confirm
"""

from __future__ import annotations

import os

from celery import Celery

import queuectl_kombu  # noqa: F401  (registers the sqlite:// and postgresql:// schemes)

DB = os.environ["TAPP_DB"]
URL = DB if "://" in DB else f"sqlite:///{DB}"

app = Celery("tapp", broker=URL, backend=URL)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=4, broker_connection_retry_on_startup=True)


@app.task(name="orders.confirm")
def confirm(order_id: int) -> int:
    """What an order's confirmation e-mail would be: here, a line in TAPP_RAN."""
    fd = os.open(os.environ["TAPP_RAN"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{order_id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return order_id
