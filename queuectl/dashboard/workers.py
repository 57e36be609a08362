"""The live workers, asked through Celery's remote control in a background thread.

A page never waits for the workers: it shows what the last question found. The thread asks only
while someone looks (a page or a live update within IDLE_AFTER seconds), so a dashboard that
nobody watches sends the workers nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..cli.remote import WorkerInfo

logger = logging.getLogger(__name__)

#: Seconds after the last look at which the watch stops asking.
IDLE_AFTER = 30.0


@dataclass(frozen=True)
class LiveWorker:
    """A worker that answered: its stats and active jobs, and the queues it consumes."""

    info: WorkerInfo
    queues: tuple[str, ...]


@dataclass(frozen=True)
class WorkerSnapshot:
    """What the last question found: the workers that answered, when, or the error it met."""

    workers: tuple[LiveWorker, ...] = ()
    asked_at: float | None = None  # epoch seconds; None: not asked yet
    error: str | None = None


class WorkerWatch:
    """Asks `ask` every `interval` seconds in a thread of its own while someone looks."""

    def __init__(self, ask: Callable[[], list[LiveWorker]], interval: float) -> None:
        self._ask = ask
        self._interval = interval
        self._snapshot = WorkerSnapshot()
        self._looked_at = 0.0
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def latest(self) -> WorkerSnapshot:
        """The last answer; wakes the watch (started on the first look)."""
        with self._lock:
            self._looked_at = time.monotonic()
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(target=self._run, name="queuectl-worker-watch", daemon=True)
                self._thread.start()
            self._wanted.set()
            return self._snapshot

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (it may be inside a question of up to twice the workers' timeout)."""
        self._stopping.set()
        self._wanted.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            if time.monotonic() - self._looked_at > IDLE_AFTER:
                self._wanted.clear()
                if time.monotonic() - self._looked_at > IDLE_AFTER:  # a look just before the clear counts
                    self._wanted.wait()  # nobody looks: sleep until someone does
                continue
            try:
                snapshot = WorkerSnapshot(tuple(self._ask()), time.time())
            except Exception as exc:  # the broker is busy or gone: show it, ask again later
                logger.warning("asking the workers failed: %s", exc)
                error = f"{type(exc).__name__}: {exc}"
                snapshot = WorkerSnapshot(self._snapshot.workers, self._snapshot.asked_at, error)
            with self._lock:
                self._snapshot = snapshot
            self._stopping.wait(self._interval)
