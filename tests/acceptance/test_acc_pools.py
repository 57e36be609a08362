"""Item 1: a Celery app configured only with the sqlite:// URL runs tasks under every pool;
and an app that never imports queuectl_kombu runs them when broker_transport names the class."""

from __future__ import annotations

import pytest

from queuectl_kombu import JobState


N_TASKS = 40

SEND = """
import qapp
ids = [qapp.record.delay("t-%d" % i).id for i in range({n})]
print(",".join(ids))
"""


def run_batch(harness, app: str) -> None:
    ids = harness.send(SEND.replace("qapp", app).format(n=N_TASKS)).split(",")
    assert len(set(ids)) == N_TASKS
    harness.wait_for(lambda: len(harness.events()) >= N_TASKS, 30, interval=0.1,
                     what=lambda: f"{N_TASKS} runs, have {len(harness.events())}")
    store = harness.store()
    harness.wait_for(lambda: store.counts()[JobState.COMPLETED] == N_TASKS, 15, interval=0.1,
                     what=lambda: f"{N_TASKS} completed rows, have {store.counts()}")
    runs = harness.events()
    assert sorted(e.task_id for e in runs) == sorted(ids), "each published task ran exactly once"
    assert sorted(e.tag for e in runs) == sorted(f"t-{i}" for i in range(N_TASKS))
    counts = store.counts()
    assert counts[JobState.COMPLETED] == N_TASKS and sum(counts.values()) == N_TASKS, counts
    for task_id in ids:
        rows = store.jobs_for_task(task_id)
        assert [r.state for r in rows] == [JobState.COMPLETED], rows
        assert rows[0].attempts == 1 and rows[0].lease_owner is None


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_url_only_app_runs_tasks_under_pool(harness, pool):
    concurrency = 1 if pool == "solo" else 4
    worker = harness.start_worker(pool=pool, concurrency=concurrency)
    run_batch(harness, "qapp")
    runs = harness.events()
    if pool == "prefork":
        assert all(e.pid != worker.pid and e.pgid == worker.pgid for e in runs), "ran in pool children"
    else:
        assert {e.pid for e in runs} == {worker.pid}, "threads/solo run inside the worker process"
    assert "sqlite://" in worker.output()


def test_app_without_import_uses_broker_transport(harness):
    # The app module really does not import queuectl_kombu: importing it leaves the package out.
    probe = harness.run_python(
        "import sys, qapp_noimport; print('queuectl_kombu' in sys.modules, "
        "qapp_noimport.app.conf.broker_transport)"
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["False", "queuectl_kombu.transport:Transport"]
    harness.start_worker(app="qapp_noimport", pool="prefork", concurrency=2)
    run_batch(harness, "qapp_noimport")
