"""The order views with a real worker: `celery -A proj worker`, started in a subprocess on the
test database.

Django's test runner gives the tests a database of their own (settings: DATABASES TEST NAME, a
file beside the real one). The queue lives in that file too, so the Celery app of this process
and the worker are pointed at it. The tests are TransactionTestCases: a TestCase never commits,
and a worker sees only what an application commits.

    python manage.py test
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from celery import states
from django.conf import settings
from django.db import connection
from django.test import TransactionTestCase
from queuectl_kombu import JobStore

from proj.celery import app

from .models import Order
from .tasks import confirm_order

T = TypeVar("T")

#: Seconds any one wait of these tests may take (a loaded CI machine starts a worker in ~3 s).
DEADLINE = 30.0


def wait_for(predicate: Callable[[], T], what: str, on_fail: Callable[[], str] = lambda: "") -> T:
    """Call `predicate` until it returns something true, and return that; fail after DEADLINE s."""
    deadline = time.monotonic() + DEADLINE
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE:g}s waiting for {what}\n{on_fail()}")
        time.sleep(0.05)
    return value


class Worker:
    """`celery -A proj worker` on the database file `database`, in its own process group."""

    def __init__(self, database: str, log: Path) -> None:
        self.name = f"orders-{uuid.uuid4().hex[:8]}@test"
        self.log = log
        argv = [sys.executable, "-m", "celery", "-A", "proj", "worker", "-l", "INFO", "-c", "1",
                "-n", self.name, "--without-mingle", "--without-gossip"]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                argv, cwd=settings.BASE_DIR, env={**os.environ, "PROJ_DATABASE": database},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the worker exited with {self.process.returncode}\n{self.output()}")
            return f"{self.name} ready." in self.output()

        wait_for(ready, "the worker to be ready", self.output)

    def stop(self) -> None:
        """A warm shutdown (SIGTERM, 15 s at most), then SIGKILL to what is left of its process
        group (pool processes)."""
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(15)


class OrderViewTests(TransactionTestCase):
    worker: Worker

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        database = str(connection.settings_dict["NAME"])  # the test database, migrated by now
        url = f"sqlite:///{database}"
        app.conf.update(broker_url=url, result_backend=url)
        # Cleanups run last first. Last of all: the queue's spool directory beside the test file
        # (Django deletes the file alone), and this process's connections to the file, closed
        # before Django deletes it (its -wal and -shm files would stay behind).
        cls.addClassCleanup(shutil.rmtree, database + "-spool", True)
        cls.addClassCleanup(JobStore.shared(database).close)
        cls.addClassCleanup(app.close)
        logs = tempfile.TemporaryDirectory()
        cls.addClassCleanup(logs.cleanup)
        cls.worker = Worker(database, Path(logs.name) / "worker.log")
        cls.addClassCleanup(cls.worker.stop)
        cls.worker.wait_ready()

    def order(self, order_id: int) -> dict[str, Any]:
        response = self.client.get(f"/orders/{order_id}/")
        self.assertEqual(response.status_code, 200)
        return response.json()

    def confirmed(self, order_id: int) -> dict[str, Any]:
        """The order once its task has finished (SUCCESS, FAILURE, ...)."""
        def finished() -> dict[str, Any] | None:
            order = self.order(order_id)
            return order if order["task"]["state"] in states.READY_STATES else None

        return wait_for(finished, f"the task of order {order_id} to finish", self.worker.output)

    def queued_task_ids(self) -> set[str]:
        """The ids of every confirm_order message committed to the queue (in any state)."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT task_id FROM jobs WHERE task_name = %s", [confirm_order.name])
            return {row[0] for row in cursor.fetchall()}

    def test_an_order_is_confirmed_by_the_worker(self) -> None:
        response = self.client.post("/orders/", {"item": "book", "quantity": "2"})
        self.assertEqual(response.status_code, 201)
        created = response.json()

        order = self.confirmed(created["id"])

        self.assertEqual(order["task"], {"id": created["task_id"], "state": "SUCCESS",
                                         "result": f"order {created['id']} confirmed: 2 x book"})
        self.assertIsNotNone(order["confirmed_at"])  # written by the task, in the worker

    def test_a_refused_order_sends_no_task(self) -> None:
        before = self.queued_task_ids()

        refused = self.client.post("/orders/", {"item": "book", "quantity": "99"})

        self.assertEqual(refused.status_code, 409)
        self.assertFalse(Order.objects.exists())
        self.assertEqual(self.queued_task_ids(), before)  # the task was sent, and rolled back

        # An order sent after it is confirmed, and is the only new message the worker ever had.
        accepted = self.client.post("/orders/", {"item": "pen", "quantity": "1"}).json()
        self.assertEqual(self.confirmed(accepted["id"])["task"]["state"], "SUCCESS")
        self.assertEqual(self.queued_task_ids() - before, {accepted["task_id"]})
