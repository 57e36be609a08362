"""Item 5: broker-side retries of a rejected task: 1 + max_retries runs, backoff_base ** attempts
between them, then dead with its error; the config table applies to the next failure while the
worker runs."""

from __future__ import annotations

import pytest

from queuectl_kombu import JobState


RETRY_CONF = {
    "task_acks_late": True,
    "task_acks_on_failure_or_timeout": False,  # a failure is rejected: the broker retries it
    "worker_prefetch_multiplier": 1,
    # no max_retries / backoff_base here: the config table decides
}

SEND_FAIL = "import qapp\nprint(qapp.fail.delay({tag!r}).id)"


def assert_gap(gap: float, expected: float) -> None:
    assert 0.9 * expected <= gap < expected + 1.5, f"gap {gap:.2f}s, expected about {expected:g}s"


def run_times(harness, task_id: str) -> list[float]:
    return [e.time for e in harness.events("run") if e.task_id == task_id]


def start_failing_task(harness, tag: str):
    """max_retries 2 and backoff_base 2 in the file, a worker, and a task that always fails:
    (store, worker, task id)."""
    store = harness.store()
    store.set_config("max_retries", 2)
    store.set_config("backoff_base", 2)
    harness.conf = RETRY_CONF
    worker = harness.start_worker(pool="prefork", concurrency=2)
    return store, worker, harness.send(SEND_FAIL.format(tag=tag))


def test_failing_task_retries_with_backoff_then_dead(harness):
    store, worker, task_id = start_failing_task(harness, "doomed")

    harness.wait_for(lambda: store.jobs_for_task(task_id)[0].state is JobState.DEAD, 30, interval=0.05,
                     what=lambda: f"the row to be dead; runs so far {len(run_times(harness, task_id))}")
    times = run_times(harness, task_id)
    assert len(times) == 3, f"1 + max_retries = 3 runs, got {len(times)}"
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert_gap(gaps[0], 2 ** 1)
    assert_gap(gaps[1], 2 ** 2)
    [row] = store.jobs_for_task(task_id)
    assert row.attempts == 3 and row.lease_owner is None, row
    assert row.last_error and "AlwaysFails" in row.last_error and "doomed" in row.last_error, row.last_error
    assert {e.pgid for e in harness.events()} == {worker.pgid}
    # dead is final: after a graceful stop nothing ran again and the row is still dead
    worker.terminate()
    assert worker.wait(30) == 0
    assert len(run_times(harness, task_id)) == 3
    assert store.jobs_for_task(task_id)[0].state is JobState.DEAD
    print(f"\ngaps between runs: {[round(g, 2) for g in gaps]}")


def test_config_change_applies_to_next_failure_without_restart(harness):
    store, worker, task_id = start_failing_task(harness, "reconfigured")

    # first failure handled with the old settings: waiting 2 ** 1 s
    harness.wait_for(lambda: store.jobs_for_task(task_id)[0].state is JobState.FAILED, 15, interval=0.02,
                     what="the first failure to be recorded")
    row = store.jobs_for_task(task_id)[0]
    assert row.attempts == 1 and len(run_times(harness, task_id)) == 1, row
    assert row.next_run_at - row.updated_at == pytest.approx(2.0, abs=0.01)
    store.set_config("backoff_base", 1.5)
    store.set_config("max_retries", 3)

    harness.wait_for(lambda: store.jobs_for_task(task_id)[0].state is JobState.DEAD, 30, interval=0.05,
                     what=lambda: f"the row to be dead; runs so far {len(run_times(harness, task_id))}")
    times = run_times(harness, task_id)
    # the new max_retries (3) applies: 4 runs, where the old setting would have buried it after 3
    assert len(times) == 4, f"1 + 3 runs expected after raising max_retries, got {len(times)}"
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert_gap(gaps[0], 2.0)        # decided before the change
    assert_gap(gaps[1], 1.5 ** 2)   # 2.25 s with the new base (the old one would wait 4 s)
    assert_gap(gaps[2], 1.5 ** 3)   # 3.375 s
    [row] = store.jobs_for_task(task_id)
    assert row.attempts == 4 and "AlwaysFails" in (row.last_error or ""), row
    # one worker process group did it all: no restart
    assert worker.popen.poll() is None
    assert {e.pgid for e in harness.events()} == {worker.pgid}
    print(f"\ngaps between runs: {[round(g, 2) for g in gaps]}")
