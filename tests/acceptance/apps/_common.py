"""Shared pieces of the acceptance apps. Imports nothing from queuectl_kombu on purpose:
qapp_noimport must reach the transport only through ``broker_transport``.

Environment (set by the test harness for each worker / producer process):
  QTEST_DB       absolute path of the SQLite broker file, or a postgresql:// URL
  QTEST_EXECLOG  execution log: one line per task event, written with O_APPEND
  QTEST_CONF     JSON object merged into app.conf (transport options, acks_late, ...)
  QTEST_QUIET    if set, per-message INFO lines (queuectl_kombu, celery task trace) are dropped
"""

from __future__ import annotations

import json
import logging
import os
import time

_fd: int | None = None
_fd_pid = 0


class AlwaysFails(Exception):
    """Raised by acc.fail on every run."""


def log_event(event: str, task_id: str | None, tag: str) -> None:
    """Append ``event task_id tag pid pgid time`` to the execution log in one write()."""
    global _fd, _fd_pid
    if _fd is None or _fd_pid != os.getpid():
        _fd = os.open(os.environ["QTEST_EXECLOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        _fd_pid = os.getpid()
    line = f"{event} {task_id} {tag} {os.getpid()} {os.getpgid(0)} {time.time():.6f}\n"
    os.write(_fd, line.encode())


def conf_from_env() -> dict:
    conf = json.loads(os.environ.get("QTEST_CONF") or "{}")
    conf.setdefault("worker_hijack_root_logger", True)
    return conf


def broker_url() -> str:
    """QTEST_DB as a broker URL: a postgresql:// URL as it is, a file path as sqlite:///path."""
    db = os.environ["QTEST_DB"]
    return db if db.startswith("postgresql://") else "sqlite:///" + os.path.abspath(db)


def setup_logging() -> None:
    """With QTEST_QUIET, per-message INFO lines are dropped (bulk tests), the rest (e.g. the
    worker's "ready." line the harness waits for) stays at the worker's -l level."""
    if os.environ.get("QTEST_QUIET"):
        for name in ("queuectl_kombu", "celery.app.trace", "celery.worker.strategy", "celery.worker.request"):
            logging.getLogger(name).setLevel(logging.WARNING)


def register_tasks(app) -> dict:
    """The tasks every acceptance app has; names are explicit so apps are interchangeable."""

    @app.task(name="acc.record", bind=True)
    def record(self, tag: str) -> str:
        log_event("run", self.request.id, tag)
        return tag

    @app.task(name="acc.sleepy", bind=True)
    def sleepy(self, tag: str, seconds: float) -> str:
        log_event("start", self.request.id, tag)
        time.sleep(seconds)
        log_event("end", self.request.id, tag)
        return tag

    @app.task(name="acc.fail", bind=True)
    def fail(self, tag: str) -> None:
        log_event("run", self.request.id, tag)
        raise AlwaysFails(f"always fails ({tag})")

    @app.task(name="acc.gate", bind=True)
    def gate(self, tag: str, path: str, timeout: float = 120.0) -> str:
        """Runs until the file at `path` exists (at most `timeout` s): a task a test keeps running
        for as long as it needs, and that returns at once where the file already exists."""
        log_event("start", self.request.id, tag)
        deadline = time.monotonic() + timeout
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        log_event("run", self.request.id, tag)
        return tag

    return {"record": record, "sleepy": sleepy, "fail": fail, "gate": gate}
