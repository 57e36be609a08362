"""Results expire after ``result_expires`` with no ``celery beat``: not returned, then deleted by writes."""

from __future__ import annotations

from pathlib import Path

from celery import states

import rapp
from tests.support.waiting import wait_for

from .helpers import ResultWorker
from queuectl_kombu.results import ResultStore


def test_results_expire_and_are_deleted_without_beat(start_worker, tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    url = f"sqlite:///{path}"
    conf = {"result_expires": 2, "result_backend_transport_options": {"purge_interval": 0}}
    worker: ResultWorker = start_worker("rapp", url, url, conf)
    app = rapp.make_app(url, url, conf)
    add = app.tasks["rt.add"]
    first = add.delay(1, 1)
    assert first.get(timeout=30) == 2
    store = ResultStore(str(path))
    assert store.count() == 1

    wait_for(lambda: app.AsyncResult(first.id).state == states.PENDING, 30, what="the result to expire")
    assert store.count() == 1  # expired, not returned, not deleted yet: nothing was written since

    second = add.delay(2, 2)
    assert second.get(timeout=30) == 4
    assert store.count() == 1  # the worker's write of the second result deleted the first
    assert store.get(app.backend.get_key_for_task(second.id)) is not None
    assert "backend_cleanup" not in worker.output()
