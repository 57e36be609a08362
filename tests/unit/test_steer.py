"""Steering the queue in the store: pause and resume (every claim skips a paused queue, the flag
outlives the process), the queue overview, cancel of waiting jobs (to the dead-letter queue, undone
by dlq retry), a revoked task's ack (dead, not completed), and cancel_jobs without workers."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import pytest

from queuectl_kombu import (
    CANCELLED,
    OUTCOME_CANCELLED,
    OUTCOME_FINISHED,
    OUTCOME_NOT_STOPPABLE,
    REVIVED_HEADER,
    InvalidValue,
    JobState,
    JobStore,
    NewJob,
    QueueNotFound,
    cancel_jobs,
    cancel_matching,
)
from queuectl_kombu import revokes
from tests.support.clock import Clock


def _message(task_id: str, **headers: object) -> str:
    return json.dumps({"body": "[]", "headers": {"id": task_id, **headers}, "properties": {"correlation_id": task_id}})


# -- pause and resume -------------------------------------------------------------------------


def test_a_paused_queue_is_skipped_by_every_claim(store: JobStore, clock: Clock) -> None:
    store.declare_queue("a")
    store.declare_queue("b")
    store.publish_many([NewJob(queue="a", payload="a1"), NewJob(queue="b", payload="b1"),
                        NewJob(queue="a", payload="a2")])
    assert store.pause_queue("a") is True
    assert store.pause_queue("a") is False  # already paused: nothing changes
    assert store.paused_queues() == ["a"] and store.is_paused("a") and not store.is_paused("b")
    assert [j.payload for j in store.claim(["a", "b"], 10, "w", 30.0)] == ["b1"]
    assert store.claim(["a"], 10, "w", 30.0) == [] and store.take(["a"], 10) == []
    # Nothing of a paused queue comes due: a worker sets no timer for it.
    assert store.next_due(["a"]) is None
    assert store.queue_size("a") == 2  # its jobs still wait, and publishing goes on
    store.publish(NewJob(queue="a", payload="a3"))
    assert store.resume_queue("a") is True and store.resume_queue("a") is False
    assert store.next_due(["a"]) == clock()
    assert [j.payload for j in store.claim(["a"], 10, "w", 30.0)] == ["a1", "a2", "a3"]


def test_running_jobs_of_a_paused_queue_finish(store: JobStore) -> None:
    store.declare_queue("q")
    store.publish_many([NewJob(queue="q", payload="1"), NewJob(queue="q", payload="2")])
    (job,) = store.claim(["q"], 1, "w", 30.0)
    store.pause_queue("q")
    assert store.ack(job.id, "w") is True
    assert store.get_job(job.id).state is JobState.COMPLETED


def test_the_pause_outlives_the_process(db_target: str, clock: Clock) -> None:
    first = JobStore(db_target, clock=clock)
    first.declare_queue("q")
    first.publish(NewJob(queue="q", payload="1"))
    first.pause_queue("q")
    first.close()
    second = JobStore(db_target, clock=clock)
    try:
        assert second.paused_queues() == ["q"] and second.claim(["q"], 1, "w", 30.0) == []
        second.declare_queue("q")  # a redeclare (a worker starting) keeps the flag
        assert second.is_paused("q")
    finally:
        second.close()


def test_pause_needs_a_queue_that_exists(store: JobStore) -> None:
    with pytest.raises(QueueNotFound, match="no queue named 'nope'"):
        store.pause_queue("nope")
    with pytest.raises(QueueNotFound):
        store.resume_queue("nope")
    with pytest.raises(InvalidValue, match="remote control"):
        store.pause_queue("celery@host.celery.pidbox")
    # A queue that holds jobs but was never declared gets a row to carry its flag.
    store.publish(NewJob(queue="bare", payload="1"))
    assert store.resume_queue("bare") is False
    assert store.pause_queue("bare") is True and store.claim(["bare"], 1, "w", 30.0) == []
    assert store.has_queue("bare")


def test_queue_overview(store: JobStore, clock: Clock) -> None:
    store.declare_queue("empty")
    store.declare_queue("jobs")
    store.declare_queue("celery@h.celery.pidbox")
    store.publish_many([NewJob(queue="jobs", payload=str(i)) for i in range(3)] + [NewJob(queue="bare", payload="x")])
    store.claim(["jobs"], 1, "w", 30.0)
    store.add_consumer("jobs", "worker-1")
    store.add_consumer("jobs", "worker-2")
    store.add_consumer("empty", "gone")
    clock.advance(30)
    store.add_consumer("jobs", "worker-1")  # worker-2 and gone stopped refreshing theirs
    store.pause_queue("jobs")
    rows = {q.name: q for q in store.queue_overview()}
    assert list(rows) == ["bare", "empty", "jobs"]  # by name, control queues left out
    assert rows["jobs"].as_dict() == {"name": "jobs", "paused": True, "consumers": 1, "declared": True,
                                      "pending": 2, "processing": 1, "completed": 0, "failed": 0, "dead": 0}
    assert (rows["empty"].paused, rows["empty"].consumers, sum(rows["empty"].counts.values())) == (False, 0, 0)
    assert (rows["bare"].declared, rows["bare"].counts[JobState.PENDING]) == (False, 1)


# -- cancel of waiting jobs -------------------------------------------------------------------


def test_cancel_waiting_moves_pending_and_failed_jobs_to_the_dlq(store: JobStore, clock: Clock) -> None:
    failing, done, running = store.publish_many(
        [NewJob(queue="q", payload=_message(f"t{i}"), task_id=f"t{i}") for i in range(3)])
    assert [j.id for j in store.claim(["q"], 3, "w", 30.0)] == [failing, done, running]
    assert store.fail(failing, "w", "boom") is JobState.FAILED
    store.ack(done, "w")
    pending = store.publish(NewJob(queue="q", payload=_message("t3"), task_id="t3"))
    moved = store.cancel_waiting([pending, failing, running, done])
    assert moved == [(failing, "t0", "q"), (pending, "t3", "q")]
    states = {j.id: (j.state, j.last_error) for j in store.list_jobs()}
    assert states == {pending: (JobState.DEAD, CANCELLED), failing: (JobState.DEAD, CANCELLED),
                      done: (JobState.COMPLETED, None), running: (JobState.PROCESSING, None)}
    assert store.event_totals()[("q", "cancelled")] == 2
    # dlq retry undoes it, and stamps the message so that workers forget the task's revoke
    clock.advance(5)
    store.dlq_retry(pending)
    job = store.get_job(pending)
    assert (job.state, job.attempts) == (JobState.PENDING, 0)
    assert job.message()["headers"][REVIVED_HEADER] == clock()
    assert [j.id for j in store.claim(["q"], 5, "w", 30.0)] == [pending]


def test_a_job_that_died_of_its_own_failures_is_revived_unstamped(store: JobStore) -> None:
    (job_id,) = store.publish_many([NewJob(queue="q", payload=_message("t"), task_id="t", max_retries=0)])
    store.claim(["q"], 1, "w", 30.0)
    assert store.fail(job_id, "w", "boom") is JobState.DEAD
    store.dlq_retry_all()
    assert REVIVED_HEADER not in store.get_job(job_id).message()["headers"]


def test_cancel_waiting_by_queue_and_state(store: JobStore) -> None:
    store.publish_many([NewJob(queue="a", payload="a1"), NewJob(queue="a", payload="a2"),
                        NewJob(queue="b", payload="b1"), NewJob(queue="x.pidbox", payload="c")])
    (a1,) = store.claim(["a"], 1, "w", 30.0)
    store.fail(a1.id, "w", "boom")
    assert [row[2] for row in store.cancel_waiting(queue="a", states=["pending"])] == ["a"]
    assert store.get_job(a1.id).state is JobState.FAILED
    assert sorted(row[2] for row in store.cancel_waiting()) == ["a", "b"]  # control queues left alone
    assert store.counts()[JobState.PENDING] == 1
    with pytest.raises(InvalidValue):
        store.cancel_waiting([a1.id], queue="a")


def test_cancel_jobs_without_workers(store: JobStore) -> None:
    ids = store.publish_many([NewJob(queue="q", payload=_message(f"t{i}"), task_id=f"t{i}") for i in range(3)]
                             + [NewJob(queue="q", payload="plain kombu message")])
    store.claim(["q"], 1, "w", 30.0)  # t0 runs
    (t1,) = store.claim(["q"], 1, "w", 30.0)
    store.ack(t1.id, "w")
    results = cancel_jobs(store, [ids[2], ids[0], ids[1], ids[2]])
    assert [(r.key, r.was, r.state, r.outcome) for r in results] == [
        ("t2", JobState.PENDING, JobState.DEAD, OUTCOME_CANCELLED),
        ("t0", JobState.PROCESSING, JobState.PROCESSING, OUTCOME_NOT_STOPPABLE),  # no app: no revoke
        ("t1", JobState.COMPLETED, JobState.COMPLETED, OUTCOME_FINISHED),
    ]
    assert results[0].describe() == "job t2: cancelled (was pending)"
    assert results[2].describe() == "job t1: already finished, completed; nothing changed"
    again = cancel_jobs(store, [ids[2]])
    assert again[0].outcome == OUTCOME_FINISHED
    assert again[0].describe() == "job t2: already finished, dead: cancelled; nothing changed"
    matched = cancel_matching(store, queue="q", states=["pending"])
    assert [(r.key, r.was.value, r.outcome) for r in matched] == [(str(ids[3]), "pending", OUTCOME_CANCELLED)]


# -- a revoked task's ack, in a worker --------------------------------------------------------


@pytest.fixture
def worker_state() -> Iterator[object]:
    """Celery's worker state, as in a worker process; emptied afterwards."""
    from celery.worker import state

    yield state
    state.revoked.clear()
    state.successful_requests.clear()
    state.requests.clear()


class _Msg:
    def __init__(self, task_id: str, **headers: object) -> None:
        self.headers = {"id": task_id, **headers}
        self.properties = {"correlation_id": task_id}


def test_revoked_reason(worker_state: object, monkeypatch: pytest.MonkeyPatch) -> None:
    state = worker_state
    assert revokes.revoked_reason(_Msg("a")) is None
    state.revoked.add("a")  # type: ignore[attr-defined]
    assert revokes.revoked_reason(_Msg("a")) == CANCELLED
    assert revokes.revoked_reason(_Msg("b")) is None
    state.successful_requests.add("a")  # type: ignore[attr-defined]
    assert revokes.revoked_reason(_Msg("a")) is None  # it ran to its end: completed
    state.successful_requests.clear()  # type: ignore[attr-defined]
    state.requests["a"] = object()  # type: ignore[attr-defined]
    assert revokes.revoked_reason(_Msg("a")) is None  # still tracked: an early ack at its start
    state.requests.clear()  # type: ignore[attr-defined]
    assert revokes.revoked_reason(_Msg("a", expires="2000-01-01T00:00:00+00:00")) == revokes.EXPIRED
    monkeypatch.delitem(sys.modules, "celery.worker.state")
    assert revokes.revoked_reason(_Msg("a")) is None  # not a worker


def test_a_revival_forgets_an_older_revoke_only(worker_state: object) -> None:
    state = worker_state
    state.revoked.add("old")  # type: ignore[attr-defined]
    revokes.forget_revoke_before_revival({"headers": {"id": "old", REVIVED_HEADER: time.time() + 1}})
    assert "old" not in state.revoked  # type: ignore[attr-defined]
    state.revoked.add("new")  # type: ignore[attr-defined]
    revokes.forget_revoke_before_revival({"headers": {"id": "new", REVIVED_HEADER: time.time() - 60}})
    assert "new" in state.revoked  # type: ignore[attr-defined]


def test_the_ack_of_a_revoked_task_ends_it_dead(db_path: str, worker_state: object) -> None:
    import kombu

    store = JobStore(db_path)
    with kombu.Connection(f"sqlite:///{db_path}") as conn:
        queue = conn.SimpleQueue("jobs")
        for task_id in ("kept", "revoked"):
            queue.put({"x": task_id}, headers={"id": task_id})
        worker_state.revoked.add("revoked")  # type: ignore[attr-defined]
        for _ in range(2):
            queue.get(timeout=5).ack()
        queue.close()
    jobs = {j.task_id: (j.state, j.last_error) for j in store.list_jobs()}
    assert jobs == {"kept": (JobState.COMPLETED, None), "revoked": (JobState.DEAD, CANCELLED)}
    assert store.event_totals()[("jobs", "cancelled")] == 1
    store.close()


def test_a_task_terminated_after_an_early_ack_ends_dead(store: JobStore) -> None:
    (job_id,) = store.publish_many([NewJob(queue="q", payload=_message("t"), task_id="t")])
    store.claim(["q"], 1, "w", 30.0)
    store.ack(job_id, "w")  # task_acks_late off: acked as it started
    assert store.cancel_completed("t") is True
    assert (store.get_job(job_id).state, store.get_job(job_id).last_error) == (JobState.DEAD, CANCELLED)
    assert store.cancel_completed("t") is False  # dead already (a late ack's cancel got there first)
    assert store.cancel_completed("unknown") is False
