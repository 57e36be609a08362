"""A task redelivered after its SUCCESS was stored cannot overwrite that SUCCESS.

The first run stores SUCCESS and the whole worker is SIGKILLed before the ack (acks_late); the
lease expires, a second worker runs the same message again, and that run fails.
"""

from __future__ import annotations

from pathlib import Path

from celery import states

import rapp
from tests.support.waiting import wait_for

from .helpers import ResultWorker
from queuectl_kombu import JobStore


def test_redelivered_task_keeps_the_stored_success(start_worker, tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    url = f"sqlite:///{path}"
    conf = {"task_track_started": True, "broker_transport_options": {"visibility_timeout": 1}}
    first_worker: ResultWorker = start_worker("rapp", url, url, conf)
    app = rapp.make_app(url, url, conf)
    marker = tmp_path / "ran-once"
    result = app.tasks["rt.redelivered"].delay(str(marker))

    wait_for(lambda: first_worker.popen.poll() is not None, 30, what="the first worker to be killed")
    assert result.get(timeout=10) == "first"
    jobs = JobStore(str(path)).jobs_for_task(result.id)
    assert [job.state.value for job in jobs] == ["processing"]  # never acked

    second_worker: ResultWorker = start_worker("rapp", url, url, conf, env={"RTEST_EXECLOG": str(first_worker.execlog)})
    wait_for(lambda: first_worker.execlog.exists() and len(first_worker.execlog.read_text().splitlines()) == 2,
               30, what="the second run")
    wait_for(lambda: JobStore(str(path)).jobs_for_task(result.id)[0].state.value != "processing",
               30, what="the redelivered message to be settled")
    assert "AlwaysFails" in second_worker.output()  # the second run did fail ...
    fresh = app.AsyncResult(result.id)
    assert (fresh.state, fresh.result) == (states.SUCCESS, "first")  # ... and its FAILURE was not stored
    assert "kept the stored SUCCESS" in second_worker.output()
