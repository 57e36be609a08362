"""Fixtures of the transactional enqueue tests: the queue on each engine with an application's
`orders` table beside it, a producer's Celery app, and real `celery -A tapp` workers."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.spool import move_spool_in
from celery import Celery

from queuectl_kombu import install_schema
from tests.support.processes import Worker, celery_argv, child_env

APPS = Path(__file__).parent / "apps"


class Queue:
    """The queue under test and the application's data beside it: a SQLite file holding both,
    or a PostgreSQL database (orders in public, the queue in the queuectl schema)."""

    def __init__(self, target: str, tmp_path: Path) -> None:
        self.target = target
        self.is_postgres = "://" in target
        self.url = target if self.is_postgres else f"sqlite:///{target}"
        self.ran_file = tmp_path / "ran.txt"
        install_schema(target)
        with self.connect() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS orders (id BIGINT PRIMARY KEY)")
            conn.commit()

    def connect(self) -> Any:
        """A new application connection (sqlite3 or psycopg, not autocommit)."""
        if self.is_postgres:
            import psycopg

            return psycopg.connect(self.target)
        return sqlite3.connect(self.target, timeout=30)

    @property
    def mark(self) -> str:
        """The placeholder of the application's driver."""
        return "%s" if self.is_postgres else "?"

    def scalar(self, statement: str) -> Any:
        if not self.is_postgres:
            move_spool_in(self.target)  # what the store's own reads do
        with self.connect() as conn:
            return conn.execute(statement).fetchone()[0]

    def jobs(self, task: str = "orders.confirm") -> int:
        """Messages of `task` committed to the queue (any state), seen by another connection."""
        table = "queuectl.jobs" if self.is_postgres else "jobs"
        return int(self.scalar(f"SELECT COUNT(*) FROM {table} WHERE task_name = '{task}' AND queue = 'celery'"))

    def task_ids(self, task: str = "orders.confirm") -> list[str]:
        """The task ids of the committed messages of `task`, sorted."""
        table = "queuectl.jobs" if self.is_postgres else "jobs"
        with self.connect() as conn:
            rows = conn.execute(f"SELECT task_id FROM {table} WHERE task_name = '{task}'").fetchall()
        return sorted(str(r[0]) for r in rows)

    def orders(self) -> set[int]:
        with self.connect() as conn:
            return {int(r[0]) for r in conn.execute("SELECT id FROM orders").fetchall()}

    def ran(self) -> list[int]:
        """The order ids orders.confirm ran for, once per run."""
        try:
            return [int(line.split()[0]) for line in self.ran_file.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    def env(self) -> dict[str, str]:
        return child_env(APPS, TAPP_DB=self.target, TAPP_RAN=str(self.ran_file))


@pytest.fixture
def queue(db_target: str, tmp_path: Path) -> Queue:
    return Queue(db_target, tmp_path)


@pytest.fixture
def producer(queue: Queue) -> Iterator[Celery]:
    """The application's Celery app (in this process) on the queue; orders.confirm is sent by
    name (producer.signature), as an application that does not import the worker's code does."""
    app = Celery("producer", broker=queue.url, backend=queue.url)
    app.conf.broker_connection_retry_on_startup = True
    yield app
    app.close()


@pytest.fixture
def start_worker(queue: Queue, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start `celery -A tapp worker` on the queue (returned once ready); stopped at the end."""
    workers: list[Worker] = []

    def start(concurrency: int = 2) -> Worker:
        name = f"tx-{uuid.uuid4().hex[:8]}@%h"
        argv = celery_argv("tapp", "worker", "-P", "prefork", "-c", str(concurrency), "--without-mingle",
                           "--without-gossip", "-l", "INFO", "-n", name)
        worker = Worker(name, argv, hostname=name.replace("%h", __import__("socket").gethostname()),
                        env=queue.env(), cwd=tmp_path, out=tmp_path / f"{name.split('@')[0]}.log", ready_timeout=60)
        workers.append(worker)
        return worker.wait_ready()  # type: ignore[return-value]

    yield start
    for worker in workers:
        worker.stop()
