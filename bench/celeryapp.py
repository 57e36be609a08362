"""The Celery app of the benchmark: the workers run it (``-A bench.celeryapp``), run.py publishes with it.

A worker takes its broker and settings from BENCH_* variables set by bench/worker.py. Tasks record
their timings by appending one line to BENCH_RECORD (a file opened O_APPEND by each process), so
no measurement goes through the broker under test.
"""

from __future__ import annotations

import os
import time

from celery import Celery, signals

import queuectl_kombu  # noqa: F401  (registers the sqlite:// scheme)
from queuectl.shell import check_outcome, run_command

QUEUE = "queuectl-bench"


def make_app(broker_url: str, result_backend: str | None = None, acks_late: bool = False) -> Celery:
    """An app on `broker_url`: Celery defaults except the queue name, JSON and ignored results."""
    app = Celery("bench", broker=broker_url, backend=result_backend or None, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
        task_ignore_result=True,  # no result is stored, except by bench.result (roundtrip)
        task_acks_late=acks_late,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    return app


_record_fd: int | None = None
_record_pid = 0


def record(line: str) -> None:
    """Append one line to BENCH_RECORD (one write; O_APPEND keeps lines of processes whole)."""
    global _record_fd, _record_pid
    if _record_fd is None or _record_pid != os.getpid():
        _record_fd = os.open(os.environ["BENCH_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _record_pid = os.getpid()
    os.write(_record_fd, line.encode())


if "BENCH_BROKER" in os.environ:  # imported by a worker
    app = make_app(
        os.environ["BENCH_BROKER"],
        os.environ.get("BENCH_BACKEND") or None,
        acks_late=os.environ.get("BENCH_ACKS_LATE") == "1",
    )

    @app.task(name="bench.noop")
    def noop(i: int) -> None:
        """Does nothing; records `i start end`."""
        start = time.time()
        record(f"{i} {start!r} {time.time()!r}\n")

    @app.task(name="bench.stamp")
    def stamp(i: int, sent: float) -> None:
        """Records `i sent start`: the publish time it was given and when it started."""
        record(f"{i} {sent!r} {time.time()!r}\n")

    @app.task(name="bench.shell")
    def shell(i: int) -> None:
        """What queuectl.run_shell does for a job of `true` (queuectl.shell's run_command and
        check_outcome: its own session, a reader thread per pipe), then records `i start end`."""
        start = time.time()
        check_outcome(run_command("true"))
        record(f"{i} {start!r} {time.time()!r}\n")

    @app.task(name="bench.now", ignore_result=False)
    def now() -> float:
        """Returns when it started (epoch seconds), through the result backend: the round trip's
        phases (roundtrip-phases)."""
        return time.time()

    @app.task(name="bench.result", ignore_result=False)
    def result(i: int) -> int:
        """Returns `i`, stored by the app's result backend (the only task that stores its result)."""
        return i

    @signals.worker_ready.connect(weak=False)
    def _ready(**kwargs: object) -> None:
        with open(os.environ["BENCH_READY"], "w") as f:
            f.write(str(os.getpid()))
