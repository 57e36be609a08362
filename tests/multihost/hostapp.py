"""The Celery app of the multi-host tests: one task that records each of its runs in a file.

Every host (a network namespace) runs ``celery -A hostapp worker`` on this module; the broker is
the test's own PostgreSQL server, reached over the host's veth link.

Environment:
  MULTIHOST_BROKER  the postgresql:// URL of the broker
  MULTIHOST_QUIET   if set, the lines logged for every message (queuectl_kombu's job changes at
                    INFO, Celery's "received" and "succeeded") are dropped; WARNING and above stay
  MULTIHOST_RUNLOG  the run log: one line per run, ``job host pid start end task_id``, each
                    written by ONE write() on an O_APPEND descriptor (the namespaces share the
                    file system, so every host appends to the same file)
"""

from __future__ import annotations

import logging
import os
import time

from celery import Celery

import queuectl_kombu  # noqa: F401  (registers the postgresql:// scheme with kombu)

#: The visibility timeout of the tests: short, so that a cut host's leases expire within a test.
VISIBILITY_TIMEOUT = 5

if os.environ.get("MULTIHOST_QUIET"):
    for _name in ("queuectl_kombu", "celery.app.trace", "celery.worker.strategy", "celery.worker.request"):
        logging.getLogger(_name).setLevel(logging.WARNING)

app = Celery("multihost")
app.conf.update(
    broker_url=os.environ.get("MULTIHOST_BROKER"),  # unset when a test imports the constants
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=True,
)

_fd: int | None = None
_fd_pid = 0


def _record(line: str) -> None:
    global _fd, _fd_pid
    if _fd is None or _fd_pid != os.getpid():
        _fd = os.open(os.environ["MULTIHOST_RUNLOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fd_pid = os.getpid()
    os.write(_fd, line.encode())


@app.task(name="multihost.run", bind=True)
def run(self, job: int, seconds: float = 0.0) -> None:
    """Sleep `seconds`, then append ``job host pid start end task_id`` to the run log."""
    start = time.time()
    if seconds:
        time.sleep(seconds)
    host = (self.request.hostname or "?").split("@", 1)[0]
    _record(f"{job} {host} {os.getpid()} {start:.6f} {time.time():.6f} {self.request.id}\n")
