"""``result_backend = "sqlite:///..."`` in a project that imports nothing of this package, in a file of its own."""

from __future__ import annotations

from pathlib import Path

from celery import Celery

from .helpers import ResultWorker
from queuectl_kombu.results import ResultStore


def test_worker_finds_the_backend_by_its_url_alone(start_worker, tmp_path: Path) -> None:
    queue = tmp_path / "queue.db"
    results = tmp_path / "results.db"  # any file: here not the broker's
    worker: ResultWorker = start_worker(
        "rapp_noimport", f"sqlite:///{queue}", "sqlite:///results.db"  # relative to the worker's cwd
    )
    client = Celery("client", broker=f"sqlite:///{queue}", backend=f"sqlite:///{results}", set_as_current=False)
    client.conf.update(broker_transport="queuectl_kombu.transport:Transport")
    report = client.send_task("rt.whoami").get(timeout=30)
    assert report == {
        "backend": "queuectl_kombu.backend:SQLiteBackend",
        "path": str(results),
        "imported_at_load": False,
    }
    assert client.send_task("rt.add", (40, 2)).get(timeout=30) == 42
    assert ResultStore(str(results)).count() == 2
    assert ResultStore(str(queue)).count() == 0  # nothing went to the broker's file
    assert f"results:     sqlite:///{results}" in worker.output()
