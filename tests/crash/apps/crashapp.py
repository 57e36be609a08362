"""The Celery app of the crash, load and fault tests: queuectl's ready app on the file CRASH_DB.

It is ``queuectl.app.make_app`` (the configuration ``celery -A queuectl`` runs: acks late, reject
on worker lost, broker-side retries, results in the same file, JSON only, run_shell registered)
plus three tasks that keep an execution log OUTSIDE the database.

Environment:
  CRASH_DB       absolute path of the SQLite file (broker and results)
  CRASH_EXECLOG  execution log: ``event task_id pid time`` lines, each one O_APPEND write()
  CRASH_CONF     JSON object merged into app.conf (optional)
  CRASH_QUIET    if set, per-message INFO lines (queuectl_kombu, celery's trace) are dropped
"""

from __future__ import annotations

import json
import logging
import os
import time

from queuectl.app import make_app

_fd: int | None = None
_fd_pid = 0


class AlwaysFails(Exception):
    """Raised by crash.fail on every run."""


def log_event(event: str, task_id: str | None) -> None:
    """Append ``event task_id pid time`` to the execution log in ONE write() (O_APPEND)."""
    global _fd, _fd_pid
    if _fd is None or _fd_pid != os.getpid():
        _fd = os.open(os.environ["CRASH_EXECLOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        _fd_pid = os.getpid()
    os.write(_fd, f"{event} {task_id} {os.getpid()} {time.time():.6f}\n".encode())


if os.environ.get("CRASH_QUIET"):
    for _name in ("queuectl_kombu", "celery.app.trace", "celery.worker.strategy", "celery.worker.request"):
        logging.getLogger(_name).setLevel(logging.WARNING)

app = make_app(os.environ["CRASH_DB"])
app.conf.update(json.loads(os.environ.get("CRASH_CONF") or "{}"))
app.conf.worker_hijack_root_logger = True


@app.task(name="crash.work", bind=True)
def work(self, seconds: float = 0.0) -> str:
    """start, sleep, end: a run killed in the middle leaves a start without an end."""
    log_event("start", self.request.id)
    if seconds:
        time.sleep(seconds)
    log_event("end", self.request.id)
    return "ok"


@app.task(name="crash.fail", bind=True)
def fail(self) -> None:
    """Always fails: the broker retries it, then moves it to the dead-letter queue."""
    log_event("start", self.request.id)
    log_event("fail", self.request.id)
    raise AlwaysFails(f"always fails ({self.request.id})")


@app.task(name="crash.record", bind=True)
def record(self) -> None:
    """One line per run: the load test's task."""
    log_event("end", self.request.id)

