"""The Celery app of the result backend tests: workers run it (``-A rapp``), tests build clients with it.

Environment of a worker (set by tests/results/conftest.py):
  RTEST_BROKER     broker URL (sqlite:///abs/path.db or redis://127.0.0.1:6379/14)
  RTEST_BACKEND    result backend URL (sqlite:///..., sqlite://, redis://...)
  RTEST_CONF       JSON object merged into app.conf
  RTEST_READY      file created when the worker is ready to consume
  RTEST_PUBLISHED  file: the name of every task this process publishes, one a line
  RTEST_EXECLOG    file: one line per run of a task that logs itself (event task_id tag pid)
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

from celery import Celery, group, signals
from celery.exceptions import Ignore, Reject

import rtest_ready  # noqa: F401  (writes RTEST_READY when the worker is ready)

import queuectl_kombu  # noqa: F401  (registers the sqlite:// broker scheme)

PUBLISHED: dict[str, str | None] = {"path": os.environ.get("RTEST_PUBLISHED")}


class AlwaysFails(Exception):
    """Raised by rt.fail on every run."""


def _append(path: str | None, line: str) -> None:
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


#: The test process sets "task" (a task name) and "app": the next message of that task is
#: published a second time, as a producer that retries a publish or RabbitMQ may duplicate it.
DUPLICATE: dict[str, Any] = {"task": None, "app": None}


@signals.before_task_publish.connect(weak=False)
def _publish_twice(sender: str | None = None, body: Any = None, exchange: Any = None, routing_key: Any = None,
                   headers: dict[str, Any] | None = None, properties: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
    if not DUPLICATE["task"] or (headers or {}).get("task") != DUPLICATE["task"]:
        return
    app, DUPLICATE["task"] = DUPLICATE["app"], None
    kept = {k: v for k, v in (properties or {}).items() if k in ("correlation_id", "reply_to", "priority")}
    with app.producer_or_acquire() as producer:
        producer.publish(body, exchange=exchange or "", routing_key=routing_key, headers=dict(headers or {}),
                         serializer="json", **kept)


@signals.before_task_publish.connect(weak=False)
def _record_publish(sender: str | None = None, headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    _append(PUBLISHED["path"], f"{(headers or {}).get('task') or sender}\n")


def wait_gate(path: str, timeout: float = 60.0) -> None:
    """Block until the test creates `path` (a deadline keeps a forgotten gate from hanging)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.01)


def make_app(broker: str, backend: str, conf: dict[str, Any] | None = None, name: str = "rapp") -> Celery:
    """An app with every test task registered under an explicit name."""
    app = Celery(name, broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=True,
    )
    app.conf.update(conf or {})
    register_tasks(app)
    return app


def register_tasks(app: Celery) -> None:
    """The tasks of the tests."""

    @app.task(name="rt.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="rt.mul", shared=False)
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="rt.tsum", shared=False)
    def tsum(values: list[Any]) -> int:
        return sum(_flatten(values))

    @app.task(name="rt.echo", shared=False)
    def echo(value: Any) -> Any:
        return value

    @app.task(name="rt.noop", shared=False)
    def noop() -> None:
        return None

    @app.task(name="rt.count", shared=False)
    def count(values: list[Any]) -> int:
        return len(values)

    @app.task(name="rt.fail", shared=False)
    def fail(*args: Any) -> None:
        raise AlwaysFails("always fails")

    @app.task(name="rt.on_error", shared=False)
    def on_error(task_id: str) -> str:
        return f"failed:{task_id}"

    @app.task(name="rt.gated", bind=True, shared=False)
    def gated(self: Any, gate: str, value: Any = "opened") -> Any:
        wait_gate(gate)
        with open(f"{gate}.passed", "w"):  # the task is returning: its result store comes next
            pass
        return value

    @app.task(name="rt.progress", bind=True, shared=False)
    def progress(self: Any, gate: str) -> str:
        self.update_state(state="PROGRESS", meta={"done": 1})
        wait_gate(gate)
        return "progressed"

    @app.task(name="rt.retry_gated", bind=True, track_started=False, max_retries=3, shared=False)
    def retry_gated(self: Any, gate: str) -> int:
        if self.request.retries == 0:
            raise self.retry(exc=AlwaysFails("first run"), countdown=0)
        wait_gate(gate)
        return self.request.retries

    @app.task(name="rt.spawn", bind=True, shared=False)
    def spawn(self: Any, n: int) -> int:
        for i in range(n):
            add.delay(i, i)
        return n

    @app.task(name="rt.ignored", ignore_result=True, shared=False)
    def ignored() -> str:
        return "not stored"

    @app.task(name="rt.logged", bind=True, shared=False)
    def logged(self: Any, tag: str, value: Any = None) -> Any:
        """Records each run (``run <task id> <tag>`` in RTEST_EXECLOG), returns `value`."""
        _append(os.environ.get("RTEST_EXECLOG"), f"run {self.request.id} {tag}\n")
        return value

    @app.task(name="rt.reject_first", bind=True, acks_late=True, shared=False)
    def reject_first(self: Any) -> str:
        """The idempotence idiom: requeue on the first delivery, run on a redelivery."""
        _append(os.environ.get("RTEST_EXECLOG"), f"run {self.request.id} reject_first\n")
        if not self.request.delivery_info.get("redelivered"):
            raise Reject("first delivery", requeue=True)
        return "redelivered"

    @app.task(name="rt.replaced", bind=True, shared=False)
    def replaced(self: Any, kind: str, x: int) -> Any:
        """Replaces itself: with a chain (add 1, then double) or a group (x and x + 1)."""
        if kind == "chain":
            return self.replace(add.si(x, 1) | mul.s(2))
        return self.replace(group(add.si(x, 0), add.si(x, 1)))

    @app.task(name="rt.retry_once", bind=True, max_retries=3, shared=False)
    def retry_once(self: Any) -> int:
        if self.request.retries == 0:
            raise self.retry(countdown=1)
        return self.request.retries

    @app.task(name="rt.stamps", bind=True, shared=False)
    def stamps(self: Any) -> dict[str, Any]:
        """The stamps this task was published with."""
        stamps = getattr(self.request, "stamps", None) or {}
        return {h: stamps.get(h) for h in sorted(self.request.stamped_headers or [])}

    @app.task(name="rt.redelivered", bind=True, acks_late=True, shared=False)
    def redelivered(self: Any, marker: str) -> str:
        """First run: store SUCCESS, then the whole worker dies before the ack (see below).

        Later runs of the same message (redelivered when the lease expires) fail.
        """
        _append(os.environ.get("RTEST_EXECLOG"), f"run {self.request.id} {os.getpid()}\n")
        if os.path.exists(marker):
            raise AlwaysFails("second run of a task that already succeeded")
        with open(marker, "w"):
            pass
        return "first"


def _flatten(values: Any) -> list[Any]:
    if isinstance(values, (list, tuple)):
        out: list[Any] = []
        for v in values:
            out.extend(_flatten(v))
        return out
    return [values]


@signals.task_postrun.connect(weak=False)
def _die_after_first_success(sender: Any = None, state: str | None = None, **kwargs: Any) -> None:
    # rt.redelivered: its SUCCESS is stored; kill the worker's whole process group before the
    # main process acks, as a power cut or an OOM kill would.
    if sender is not None and sender.name == "rt.redelivered" and state == "SUCCESS":
        os.killpg(os.getpgid(0), signal.SIGKILL)


if "RTEST_BROKER" in os.environ:  # imported by a worker
    app = make_app(
        os.environ["RTEST_BROKER"],
        os.environ["RTEST_BACKEND"],
        json.loads(os.environ.get("RTEST_CONF") or "{}"),
    )
