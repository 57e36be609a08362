"""The storage layer's verbs and state changes, on a real SQLite file with a test clock."""

from __future__ import annotations

import json
import sqlite3

import pytest

from queuectl_kombu import DuplicateJob, InvalidValue, JobState, JobStore, NewJob
from queuectl_kombu.sql import QUERIES
from tests.support.waiting import wait_for


def publish(store: JobStore, queue: str = "q", n: int = 1, **kw) -> list[int]:
    return store.publish_many([NewJob(queue=queue, payload=f'{{"n": {i}}}', **kw) for i in range(n)])


def test_publish_creates_pending_jobs(store: JobStore, clock) -> None:
    ids = publish(store, n=3, task_id="t", task_name="add")
    jobs = store.list_jobs()
    assert [j.id for j in jobs] == ids
    assert {j.state for j in jobs} == {JobState.PENDING}
    assert jobs[0].next_run_at == clock.now
    assert jobs[0].task_name == "add"
    assert store.queue_size("q") == 3


def test_claim_takes_priority_then_fifo_and_leases(store: JobStore, clock) -> None:
    low = publish(store, priority=0, n=2)
    high = publish(store, priority=9)
    mid = publish(store, priority=5)
    claimed = store.claim(["q"], 10, "w1", 30)
    assert [c.id for c in claimed] == high + mid + low
    assert all(c.attempts == 1 for c in claimed)
    job = store.get_job(high[0])
    assert job.state is JobState.PROCESSING
    assert job.lease_owner == "w1"
    assert job.lease_expires_at == clock.now + 30
    assert store.claim(["q"], 10, "w2", 30) == []


def test_claim_respects_limit_and_queues(store: JobStore) -> None:
    publish(store, "a", n=5)
    publish(store, "b", n=5)
    assert len(store.claim(["a"], 3, "w", 30)) == 3
    claimed = store.claim(["a", "b"], 4, "w", 30)
    assert [c.queue for c in claimed] == ["a", "a", "b", "b"]


def test_eta_is_not_delivered_before_due(store: JobStore, clock) -> None:
    publish(store, next_run_at=clock.now + 30)
    assert store.claim(["q"], 1, "w", 30) == []
    assert store.next_due(["q"]) == clock.now + 30
    clock.advance(30)
    assert len(store.claim(["q"], 1, "w", 30)) == 1


def test_ack_completes_and_retention_zero_deletes(store: JobStore) -> None:
    a, b = publish(store, n=2)
    store.claim(["q"], 2, "w", 30)
    assert store.ack(a, "w", retention=60)
    assert store.get_job(a).state is JobState.COMPLETED
    assert store.ack(b, "w", retention=0)
    assert [j.id for j in store.list_jobs()] == [a]


def test_ack_by_another_owner_is_refused(store: JobStore) -> None:
    (a,) = publish(store)
    store.claim(["q"], 1, "w1", 30)
    assert store.ack(a, "w2") is False
    assert store.get_job(a).state is JobState.PROCESSING


def test_requeue_returns_the_same_row_without_counting_the_attempt(store: JobStore) -> None:
    (a,) = publish(store)
    store.claim(["q"], 1, "w", 30)
    assert store.requeue(a, "w")
    job = store.get_job(a)
    assert (job.state, job.attempts, job.lease_owner) == (JobState.PENDING, 0, None)
    assert len(store.list_jobs()) == 1


def test_fail_retries_with_backoff_then_dead(store: JobStore, clock) -> None:
    store.set_config("max_retries", 2)
    store.set_config("backoff_base", 3)
    (a,) = publish(store)
    gaps = []
    for attempt in (1, 2):
        (c,) = store.claim(["q"], 1, "w", 30)
        assert c.attempts == attempt
        assert store.fail(a, "w", "boom") is JobState.FAILED
        job = store.get_job(a)
        assert job.state is JobState.FAILED
        gaps.append(job.next_run_at - clock.now)
        assert store.claim(["q"], 1, "w", 30) == []  # not before the backoff
        clock.advance(gaps[-1])
    assert gaps == [3.0, 9.0]
    store.claim(["q"], 1, "w", 30)
    assert store.fail(a, "w", "boom again") is JobState.DEAD
    job = store.get_job(a)
    assert (job.state, job.attempts, job.last_error) == (JobState.DEAD, 3, "boom again")


def test_fail_reads_config_changes_at_once(store: JobStore) -> None:
    (a,) = publish(store)
    store.claim(["q"], 1, "w", 30)
    store.settings()  # warm the cache: a change must still apply to the next failure
    store.set_config("max-retries", 0)
    assert store.fail(a, "w") is JobState.DEAD


def test_per_job_max_retries_wins(store: JobStore) -> None:
    (a,) = publish(store, max_retries=0)
    store.claim(["q"], 1, "w", 30)
    assert store.fail(a, "w", "x") is JobState.DEAD


def test_recorded_error_is_kept_by_fail(store: JobStore) -> None:
    (a,) = publish(store, task_id="task-1", max_retries=0)
    store.claim(["q"], 1, "w", 30)
    store.record_error("task-1", "ValueError: nope")
    store.fail(a, "w")
    assert store.get_job(a).last_error == "ValueError: nope"


def test_expired_lease_is_recovered_and_counts(store: JobStore, clock) -> None:
    (a,) = publish(store)
    store.claim(["q"], 1, "dead-worker", 10)
    clock.advance(5)
    assert store.recover_expired_leases() == []
    clock.advance(6)
    assert store.recover_expired_leases() == [(a, None, JobState.PENDING, 1)]
    (c,) = store.claim(["q"], 1, "w2", 10)
    assert c.attempts == 2


def test_expired_lease_of_an_exhausted_job_is_dead(store: JobStore, clock) -> None:
    (a,) = publish(store, max_retries=1)
    for _ in range(2):
        store.claim(["q"], 1, "crashy", 10)
        clock.advance(11)
        recovered = store.recover_expired_leases()
    assert recovered[0][2] is JobState.DEAD
    assert "expired" in store.get_job(a).last_error


def test_renewed_lease_is_not_recovered(store: JobStore, clock) -> None:
    publish(store)
    store.claim(["q"], 1, "alive", 10)
    for _ in range(5):
        clock.advance(8)
        assert store.renew_leases("alive", 10) == 1
        assert store.recover_expired_leases() == []


def test_prune_deletes_only_old_completed(store: JobStore, clock) -> None:
    a, b, c = publish(store, n=3)
    store.claim(["q"], 2, "w", 30)
    store.ack(a, "w", retention=100)
    clock.advance(50)
    store.ack(b, "w", retention=100)
    clock.advance(60)
    assert store.prune_completed(retention=100) == 1
    assert [j.id for j in store.list_jobs()] == [b, c]


def test_purge_removes_waiting_jobs_only(store: JobStore) -> None:
    publish(store, n=3)
    store.claim(["q"], 1, "w", 30)
    assert store.purge("q") == 2
    assert store.counts()[JobState.PROCESSING] == 1


def test_publish_many_is_all_or_nothing(store: JobStore) -> None:
    jobs = [NewJob(queue="q", payload="{}"), NewJob(queue=None, payload="{}")]  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):  # PostgreSQL's too (ConstraintViolated)
        store.publish_many(jobs)
    assert store.list_jobs() == []


def test_change_stamp_moves_on_other_connections_commit(store: JobStore, db_target: str) -> None:
    before = store.change_stamp()
    assert store.change_stamp() == before
    other = JobStore(db_target)
    publish(other)
    # SQLite: at once (data_version); PostgreSQL: once the commit's NOTIFY has arrived
    wait_for(lambda: store.change_stamp() != before, timeout=10, what="the stamp to move")


def test_state_names_round_trip(store: JobStore) -> None:
    publish(store)
    (row,) = store.db.connection().execute("SELECT state FROM jobs").fetchall()
    assert JobState(row[0]) is JobState.PENDING
    assert str(JobState.DEAD) == "dead"


def test_claim_uses_the_ready_index(store: JobStore) -> None:
    if store.db.engine != "sqlite":
        pytest.skip("SQLite's query plan (INDEXED BY); PostgreSQL plans by its statistics")
    conn = store.db.connection()
    subquery = QUERIES["has_ready"]
    plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + subquery, {"queue": "q", "now": 0}))
    assert "jobs_ready" in plan


def test_dlq_retry_revives_dead_jobs_only(store: JobStore) -> None:
    from queuectl_kombu import InvalidTransition, JobNotFound

    (a, b) = publish(store, n=2, max_retries=0)
    store.claim(["q"], 1, "w", 30)
    store.fail(a, "w", "boom")
    store.dlq_retry(a)
    job = store.get_job(a)
    assert (job.state, job.attempts) == (JobState.PENDING, 0)
    with pytest.raises(InvalidTransition, match=f"job {b} is pending, not dead"):
        store.dlq_retry(b)
    with pytest.raises(JobNotFound, match="no job with id 999"):
        store.dlq_retry(999)


def test_dlq_retry_all_and_purge(store: JobStore) -> None:
    ids = publish(store, n=3, max_retries=0)
    for job in store.claim(["q"], 3, "w", 30):
        store.fail(job.id, "w", "x")
    assert store.counts()[JobState.DEAD] == 3
    assert sorted(store.dlq_retry_all()) == ids
    for job in store.claim(["q"], 3, "w", 30):
        store.fail(job.id, "w", "x")
    assert store.dlq_purge() == 3
    assert store.list_jobs() == []


def test_unique_task_ids_refuse_a_duplicate_and_write_nothing(store: JobStore) -> None:
    from queuectl_kombu import DuplicateJob

    publish(store, task_id="job1")
    with pytest.raises(DuplicateJob, match="a job with id 'job1' already exists"):
        store.publish_many(
            [NewJob(queue="q", payload="{}", task_id="job2"), NewJob(queue="q", payload="{}", task_id="job1")],
            unique_task_ids=True,
        )
    assert [j.task_id for j in store.list_jobs()] == ["job1"]


def test_unique_task_ids_compare_ids_with_a_nul_whole(store: JobStore) -> None:
    """An id with a NUL is not the id cut at the NUL (json_each cuts it): found by the fuzz test.
    PostgreSQL's text holds no NUL: such an id is refused there, with a clear error."""
    if store.db.engine == "postgresql":
        with pytest.raises(InvalidValue, match="NUL"):
            store.publish_many([NewJob(queue="q", payload="{}", task_id="a\x00b")], unique_task_ids=True)
        assert store.list_jobs() == []
        return
    publish(store)  # a message with no task id: stored as ''
    publish(store, task_id="a")
    store.publish_many([NewJob(queue="q", payload="{}", task_id="\x00")], unique_task_ids=True)
    store.publish_many([NewJob(queue="q", payload="{}", task_id="a\x00b")], unique_task_ids=True)
    with pytest.raises(DuplicateJob):
        store.publish_many([NewJob(queue="q", payload="{}", task_id="a\x00b")], unique_task_ids=True)
    assert store.existing_task_id(["x", "a\x00b"]) == "a\x00b"
    assert store.existing_task_id(["a\x00c"]) is None
    assert sorted(j.task_id or "" for j in store.list_jobs()) == ["", "\x00", "a", "a\x00b"]


def test_find_job_by_task_id_or_row_id(store: JobStore) -> None:
    (a,) = publish(store, task_id="job1")
    assert store.find_job("job1").id == a
    assert store.find_job(str(a)).task_id == "job1"
    assert store.counts_by_queue()["q"][JobState.PENDING] == 1
    assert store.oldest_pending_created_at() is not None


def test_oversized_message_is_refused_and_nothing_written(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from queuectl_kombu import PayloadTooLarge
    from queuectl_kombu.store import jobs as jobs_module

    monkeypatch.setattr(jobs_module, "MAX_PAYLOAD_BYTES", 1000)
    with pytest.raises(PayloadTooLarge, match="message of 2000 bytes for queue 'q' exceeds the limit of 1000 bytes"):
        store.publish_many([NewJob(queue="q", payload="1"), NewJob(queue="q", payload="x" * 2000)])
    assert store.list_jobs() == []


def test_publishers_alone_keep_the_wal_bounded(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no worker (no housekeeper) running, a publisher truncates an oversized WAL itself."""
    from queuectl_kombu.store import base as store_base

    monkeypatch.setattr(store_base, "WAL_LIMIT_BYTES", 256 * 1024)
    monkeypatch.setattr(store_base, "WAL_CHECK_EVERY", 20)
    reader = JobStore(store.path)
    for i in range(400):
        reader.queue_size("q")  # another connection reading now and then, as workers do
        store.publish(NewJob(queue="q", payload="x" * 4000))
    assert store.db.wal_size() < 2 * 1024 * 1024
    assert store.queue_size("q") == 400


def test_lease_recovery_takes_the_given_max_retries(store: JobStore, clock) -> None:
    (a,) = publish(store)
    for _ in range(3):
        store.claim(["q"], 1, "crashy", 10)
        clock.advance(11)
        store.recover_expired_leases(max_retries=5)
    assert store.get_job(a).state is JobState.PENDING


def test_batch_publish_ids_are_the_rows_and_nulls_stay_null(store: JobStore, clock) -> None:
    first = publish(store, n=1)
    ids = store.publish_many([
        NewJob(queue="q", payload='{"a": 1}'),
        NewJob(queue="q", payload='{"a": 2}', task_id="t2", task_name="add", max_retries=0, expires_at=clock.now + 5),
        NewJob(queue="r", payload='{"a": 3}', priority=7, next_run_at=clock.now + 60),
    ])
    assert ids == [first[0] + 1, first[0] + 2, first[0] + 3]
    a, b, c = (store.get_job(i) for i in ids)
    assert (a.payload, a.task_id, a.task_name, a.max_retries, a.expires_at) == ('{"a": 1}', None, None, None, None)
    assert (b.task_id, b.task_name, b.max_retries, b.expires_at) == ("t2", "add", 0, clock.now + 5)
    assert (c.queue, c.priority, c.next_run_at) == ("r", 7, clock.now + 60)


def test_publish_stream_is_one_transaction(store: JobStore) -> None:
    def batches():
        yield [NewJob(queue="q", payload="{}", task_id=f"s{i}") for i in range(3)]
        yield [NewJob(queue="q", payload="{}", task_id=f"s{i}") for i in range(3, 6)]
        raise ValueError("line 7 is bad")

    with pytest.raises(ValueError, match="line 7"):
        store.publish_stream(batches())
    assert store.list_jobs() == []

    with pytest.raises(DuplicateJob, match="'s1'"):
        store.publish_stream([[NewJob(queue="q", payload="{}", task_id="s1")],
                              [NewJob(queue="q", payload="{}", task_id="s1")]], unique_task_ids=True)
    assert store.list_jobs() == []
    assert store.publish_stream([[NewJob(queue="q", payload="{}", task_id="s1")] * 1]) == 1
    with pytest.raises(DuplicateJob) as caught:
        store.publish_stream([[NewJob(queue="q", payload="{}", task_id="s1")]], unique_task_ids=True)
    assert caught.value.task_id == "s1"


def test_a_write_inside_a_write_joins_it(store: JobStore) -> None:
    """A queue declared while a publish transaction is open (the bulk path) commits or rolls
    back with it."""
    with pytest.raises(RuntimeError):
        with store.db.write():
            store.declare_queue("inner", None)
            raise RuntimeError
    assert not store.has_queue("inner")
    with store.db.write():
        store.declare_queue("inner", None)
    assert store.has_queue("inner")


def _vm_steps(store: JobStore, work) -> int:
    """SQLite virtual-machine instructions (in hundreds) that `work` runs on the store's connection."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    if store.db.engine != "sqlite":
        pytest.skip("counts SQLite's virtual-machine steps")
    conn = store.db.connection()
    conn.set_progress_handler(count, 100)
    try:
        work()
    finally:
        conn.set_progress_handler(None, 100)
    return steps[0]


@pytest.mark.parametrize("backlog", ["completed", "pending"])
def test_housekeeping_reads_only_what_it_changes(store: JobStore, clock, backlog: str) -> None:
    """What every worker runs every second (expiry) and every 30 s (pruning) must not read the
    rows it leaves alone: without statistics SQLite took the jobs_state index and read every
    completed row to prune none (900,000 in a file of 1M jobs), and every waiting row to find
    no expired message (18 % of a worker's CPU with a backlog of 100,000)."""
    def grow(n: int) -> None:
        ids = store.publish_many([NewJob("q", "{}") for _ in range(n)])
        if backlog == "completed":
            claimed = store.claim(["q"], n, "w", 60)
            assert store.ack_many([j.id for j in claimed], "w", retention=3600) == []
        assert len(ids) == n

    def housekeeping() -> None:
        assert store.prune_completed(retention=3600) == 0
        assert store.expire() == ([], 0)

    grow(100)
    small = _vm_steps(store, housekeeping)
    grow(20_000)
    large = _vm_steps(store, housekeeping)
    assert large <= small + 5, (small, large)  # a scan of 20,000 rows is thousands of hundreds


def test_unique_task_ids_hold_between_concurrent_publishers(db_target: str) -> None:
    """Two processes' publishes of the same id at once (threads with their own connections
    here): one wins, the other gets DuplicateJob; never two rows (PostgreSQL takes an advisory
    lock for the check, SQLite's write lock covers it)."""
    import threading

    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def publish_one() -> None:
        store = JobStore(db_target)
        barrier.wait()
        try:
            store.publish_many([NewJob(queue="q", payload="{}", task_id="same")], unique_task_ids=True)
            outcomes.append("published")
        except DuplicateJob:
            outcomes.append("duplicate")
        finally:
            store.close()

    JobStore(db_target).open()  # the schema, made once before the race
    threads = [threading.Thread(target=publish_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["duplicate"] * 7 + ["published"]
    assert [j.task_id for j in JobStore(db_target).list_jobs()] == ["same"]


def test_search_finds_task_ids_and_calls_ignoring_case(store: JobStore) -> None:
    """The dashboard's search: a row id, or text in a task id or in the call Celery's headers
    show (argsrepr, kwargsrepr), ASCII case ignored, LIKE's wildcards taken literally."""
    def message(argsrepr: str, kwargsrepr: str = "{}") -> str:
        return json.dumps({"headers": {"argsrepr": argsrepr, "kwargsrepr": kwargsrepr}, "body": ""})

    first = store.publish_many([NewJob(queue="q", payload=message("('Make Test',)"), task_id="ABC-1")])[0]
    store.publish_many([NewJob(queue="q", payload=message("()", "{'path': '/tmp/100%_done'}"), task_id="x")])
    assert [j.task_id for j in store.search_jobs(text="make test")] == ["ABC-1"]
    assert [j.task_id for j in store.search_jobs(text="abc")] == ["ABC-1"]
    assert [j.task_id for j in store.search_jobs(text="100%_")] == ["x"]
    assert [j.task_id for j in store.search_jobs(text="0%d")] == []  # % is not a wildcard here
    assert [j.id for j in store.search_jobs(text=str(first))][-1] == first  # its row id (and the "1"s)
    assert [j.task_id for j in store.search_jobs(newest_first=False)] == ["ABC-1", "x"]


def test_the_work_stamp_moves_on_work_not_on_claims(store: JobStore, db_target: str) -> None:
    """A publish may bring work: the work stamp moves (SQLite: on any commit). On PostgreSQL a
    claim notifies the watchers only: the change stamp moves, the work stamp does not, so idle
    workers do not look for work because another one claimed."""
    other = JobStore(db_target)
    before = store.work_stamp()
    publish(other)
    wait_for(lambda: store.work_stamp() != before, 10, what="the work stamp to move on a publish")
    work, change = store.work_stamp(), store.change_stamp()
    assert other.claim(["q"], 1, "w", 30)
    wait_for(lambda: store.change_stamp() != change, 10, what="the change stamp to move on a claim")
    if store.db.engine == "postgresql":
        assert store.work_stamp() == work
    other.close()
