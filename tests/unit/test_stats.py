"""The stats table: what happened to jobs, per minute and queue, counted in the same transaction
as the change itself (the metrics' totals and the dashboard's chart read it)."""

from __future__ import annotations

from queuectl_kombu import JobState, JobStore, NewJob
from tests.support.clock import Clock


def _events(store: JobStore) -> dict[tuple[str, str], int]:
    return store.event_totals()


def test_every_state_change_is_counted_per_queue(store: JobStore, clock: Clock) -> None:
    store.publish_many([NewJob(queue="a", payload=str(i), max_retries=0) for i in range(3)]
                       + [NewJob(queue="b", payload="b", max_retries=1)])
    claimed = store.claim(["a"], 3, "w", 30.0)
    store.ack_many([claimed[0].id, claimed[1].id], "w")
    assert store.fail(claimed[2].id, "w", "boom") is JobState.DEAD  # no retries left
    (b,) = store.claim(["b"], 1, "w", 30.0)
    assert store.fail(b.id, "w", "boom") is JobState.FAILED  # a retry waits
    clock.advance(60)
    (b_again,) = store.claim(["b"], 1, "gone", 1.0)
    clock.advance(2)
    assert [state for _, _, state, _ in store.recover_expired_leases()] == [JobState.DEAD]
    store.dlq_retry_all()
    assert _events(store) == {
        ("a", "published"): 3, ("b", "published"): 1,
        ("a", "completed"): 2, ("a", "dead"): 1,
        ("b", "failed"): 1, ("b", "recovered"): 1, ("b", "dead"): 1,
        ("a", "revived"): 1, ("b", "revived"): 1,
    }


def test_counts_are_kept_per_minute(store: JobStore, clock: Clock) -> None:
    start = clock()
    store.publish(NewJob(queue="q", payload="1"))
    clock.advance(60)
    store.publish_many([NewJob(queue="q", payload="2"), NewJob(queue="q", payload="3")])
    minute = int(start // 60)
    assert store.activity(start) == [(minute, "q", "published", 1), (minute + 1, "q", "published", 2)]
    assert store.activity(start + 60) == [(minute + 1, "q", "published", 2)]


def test_control_queues_are_not_counted(store: JobStore) -> None:
    store.publish_many([NewJob(queue="celery@host.celery.pidbox", payload="{}"),
                        NewJob(queue="celeryev.1234", payload="{}"), NewJob(queue="jobs", payload="{}")])
    assert _events(store) == {("jobs", "published"): 1}


def test_a_lost_lease_counts_nothing(store: JobStore) -> None:
    (job_id,) = store.publish_many([NewJob(queue="q", payload="1")])
    store.claim(["q"], 1, "w", 30.0)
    assert store.ack_many([job_id], "someone else") == [job_id]
    assert _events(store) == {("q", "published"): 1}
