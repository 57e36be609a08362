"""The configuration and tasks of the broker tests' Celery app (``bapp`` builds it from the
environment; the test process builds its client apps with ``build_app``)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from celery import Celery
from kombu import Queue
from kombu.common import Broadcast

import queuectl_kombu  # noqa: F401  (registers the sqlite:// scheme)


def log_event(event: str, task_id: str | None, tag: str, hostname: str | None = None) -> None:
    """Append ``event task_id tag hostname pid time`` to BTEST_LOG in one write()."""
    path = os.environ.get("BTEST_LOG")
    if not path:
        return
    line = f"{event} {task_id} {tag} {hostname or socket.gethostname()} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def build_app(url: str, ns: str = "", extra_queue: str | None = None, conf: dict[str, Any] | None = None,
              beat_every: float | None = None) -> Celery:
    """The app on broker `url`. `ns` prefixes every queue and exchange name (a private namespace
    on a shared Redis db); with ns="" the names are Celery's defaults (celery, celery.pidbox,
    celeryev)."""
    queues = [Queue(f"{ns}celery"), Broadcast(f"{ns}bcast")]
    if extra_queue:
        queues.append(Queue(extra_queue))
    app = Celery("bapp", broker=url, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        worker_hijack_root_logger=True,
        broker_connection_retry_on_startup=True,
        task_queues=queues,
        task_default_queue=f"{ns}celery",
        task_default_exchange=f"{ns}celery",
        task_default_routing_key=f"{ns}celery",
        task_routes={"b.bcast": {"queue": f"{ns}bcast", "exchange": f"{ns}bcast"}},
        control_exchange=f"{ns}celery",
        event_exchange=f"{ns}celeryev",
        event_queue_prefix=f"{ns}celeryev",
        # The queues of event receivers (celery events, flower) that died go within seconds.
        event_queue_expires=3.0,
        event_queue_ttl=5.0,
    )
    if beat_every:
        app.conf.beat_schedule = {
            "tick": {"task": "b.record", "schedule": beat_every, "args": ("beat",)},
        }
    app.conf.update(conf or {})
    register_tasks(app)
    return app


def register_tasks(app: Celery) -> None:
    @app.task(name="b.record", bind=True)
    def record(self, tag: str) -> str:
        log_event("run", self.request.id, tag, self.request.hostname)
        return tag

    @app.task(name="b.sleepy", bind=True)
    def sleepy(self, tag: str, seconds: float) -> str:
        log_event("start", self.request.id, tag, self.request.hostname)
        time.sleep(seconds)
        log_event("end", self.request.id, tag, self.request.hostname)
        return tag

    @app.task(name="b.fail", bind=True)
    def fail(self, tag: str) -> None:
        log_event("run", self.request.id, tag, self.request.hostname)
        raise RuntimeError(f"always fails ({tag})")

    @app.task(name="b.bcast", bind=True)
    def bcast(self, tag: str) -> str:
        log_event("bcast", self.request.id, tag, self.request.hostname)
        return tag
