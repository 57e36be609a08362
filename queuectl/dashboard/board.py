"""What every request of one dashboard shares: the database, its Celery app, the worker watch."""

from __future__ import annotations

from celery import Celery
from flask import current_app

from queuectl_kombu import JobStore

from ..cli.context import CliState
from ..cli.remote import live_workers, worker_queues
from .overview import OverviewReader
from .workers import LiveWorker, WorkerWatch

#: Longest wait for the workers' answers to one question of the watch (seconds).
WORKER_TIMEOUT = 1.0


class Board:
    """The database of one dashboard (opened, and created if missing, at start), its Celery app,
    the reader of its overview and the background watch of the live workers."""

    def __init__(self, db_path: str, worker_interval: float) -> None:
        self.state = CliState(db_path)
        self.store: JobStore = self.state.jobstore()
        self.celery: Celery = self.state.celery()
        self.overview = OverviewReader(self.store)
        self.workers = WorkerWatch(self._ask_workers, worker_interval)

    def _ask_workers(self) -> list[LiveWorker]:
        """Every worker that answers, with its queues and active jobs (three broadcasts)."""
        workers = live_workers(self.celery, WORKER_TIMEOUT)
        queues = worker_queues(self.celery, WORKER_TIMEOUT, len(workers)) if workers else {}
        return [LiveWorker(w, tuple(queues.get(w.name, ()))) for w in workers]

    def close(self) -> None:
        """Stop the watch, then release the connections."""
        self.workers.stop()
        self.state.close()


def board() -> Board:
    """The Board of the app serving this request."""
    found: Board = current_app.extensions["queuectl"]
    return found
