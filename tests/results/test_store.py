"""ResultStore on a real SQLite file, with a clock the test moves: values, counters, expiry, SUCCESS, waits."""

from __future__ import annotations

import threading

import pytest

from queuectl_kombu import JobStore
from queuectl_kombu.results import ResultStore, result_store


@pytest.fixture
def store(db_target: str, clock) -> ResultStore:
    s = ResultStore(db_target, clock=clock, purge_interval=3600)
    s.open()
    yield s
    s.close()


def test_values_come_back_as_they_went_in(store: ResultStore) -> None:
    store.set("text", '{"a": 1}')
    store.set("bytes", b"\x80\x04\x95 pickled")
    assert store.get("text") == '{"a": 1}'
    assert store.get("bytes") == b"\x80\x04\x95 pickled"
    assert isinstance(store.get("bytes"), bytes)
    assert store.get("missing") is None


def test_set_replaces_the_value(store: ResultStore) -> None:
    store.set("k", "one")
    store.set("k", "two")
    assert store.get("k") == "two"
    assert store.count() == 1


def test_mget_keeps_the_order_of_the_keys(store: ResultStore, clock) -> None:
    store.set("a", "A")
    store.set("b", "B", expires=5)
    store.set("c", "C")
    clock.advance(6)  # b has expired
    assert store.mget(["c", "missing", "a", "b"]) == ["C", None, "A", None]
    assert store.mget([]) == []


def test_an_expired_key_is_absent_until_purged(store: ResultStore, clock) -> None:
    store.set("short", "v", expires=10)
    store.set("forever", "v", expires=None)
    store.set("zero", "v", expires=0)  # Celery's 0: no expiry
    clock.advance(9.9)
    assert store.get("short") == "v"
    clock.advance(0.2)
    assert store.get("short") is None
    assert store.count() == 3  # still in the table
    assert store.purge_expired() == 1
    assert store.count() == 2
    assert store.get("forever") == "v" and store.get("zero") == "v"


def test_writes_purge_expired_rows_now_and_then(db_target: str, clock) -> None:
    store = ResultStore(db_target, clock=clock, purge_interval=10)
    store.set("k1", "v", expires=5)  # the first write purges and schedules the next purge at +10
    clock.advance(6)
    store.set("k2", "v", expires=60)
    assert store.count() == 2  # k1 expired, but no purge is due yet
    clock.advance(5)
    store.store_task_result("k3", "v", "SUCCESS", expires=60)
    assert store.count() == 2  # k1 went with that write
    assert store.get("k1") is None and store.get("k2") == "v"


def test_a_stored_success_is_kept(store: ResultStore) -> None:
    assert store.store_task_result("t", "started", "STARTED")
    assert store.store_task_result("t", "first", "SUCCESS")
    for state in ("STARTED", "RETRY", "FAILURE", "REVOKED", "PROGRESS", "SUCCESS"):
        assert not store.store_task_result("t", f"later {state}", state)
    assert store.get("t") == "first"


def test_non_success_states_replace_each_other(store: ResultStore) -> None:
    for state in ("PENDING", "STARTED", "RETRY", "STARTED", "FAILURE"):
        assert store.store_task_result("t", state, state)
    assert store.get("t") == "FAILURE"
    assert store.store_task_result("t", "retried by hand", "SUCCESS")
    assert store.get("t") == "retried by hand"


def test_an_expired_success_can_be_replaced(store: ResultStore, clock) -> None:
    store.store_task_result("t", "old", "SUCCESS", expires=10)
    clock.advance(11)
    assert store.store_task_result("t", "new", "STARTED", expires=10)
    assert store.get("t") == "new"


def test_a_plain_set_does_not_make_a_key_final(store: ResultStore) -> None:
    # Group keys are saved with set(): saving a group again must replace it.
    store.set("group", "v1")
    store.set("group", "v2")
    assert store.store_task_result("group", "v3", "STARTED")
    assert store.get("group") == "v3"


def test_incr_counts_and_restarts_when_expired(store: ResultStore, clock) -> None:
    assert [store.incr("c", expires=10) for _ in range(3)] == [1, 2, 3]
    clock.advance(11)
    assert store.incr("c", expires=10) == 1
    assert store.incr("c", expires=10) == 2


def test_incr_from_many_threads_loses_no_count(db_target: str) -> None:
    store = ResultStore(db_target)
    store.open()  # concurrent first opens of a new file are the backend's business (it retries them)
    seen: list[int] = []
    lock = threading.Lock()

    def part() -> None:
        for _ in range(25):
            n = store.incr("chord")
            with lock:
                seen.append(n)
        store.close()

    threads = [threading.Thread(target=part) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(seen) == list(range(1, 201))


def test_count_part_counts_each_member_once(store: ResultStore) -> None:
    assert store.count_chord_part("c", "a:0")[0] == 1
    assert store.count_chord_part("c", "a:0")[0] == 0  # the same part again
    assert store.count_chord_part("c", "a:1")[0] == 2  # the same task id at another header index
    assert store.count_chord_part("c", "b:2")[0] == 3


def test_a_finished_counter_counts_nothing_more(store: ResultStore, clock) -> None:
    store.count_chord_part("c1", "a:0")
    store.count_chord_part("c10", "a:0")  # another counter whose key extends this one's
    store.finish_counter("c1", expires=100)
    assert store.count_chord_part("c1", "z:9")[0] == 0
    assert store.count() == 3  # c1 (done), c10 and c10's mark: c1's mark went
    assert store.count_chord_part("c10", "a:0")[0] == 0  # c10's mark is still there
    clock.advance(101)
    assert store.count_chord_part("c1", "z:9")[0] == 1  # the 'done' mark expired with the counter


def test_reset_counter_starts_again(store: ResultStore) -> None:
    store.count_chord_part("c", "a:0")
    store.finish_counter("c")
    store.reset_counter("c")
    assert store.count() == 0
    assert store.count_chord_part("c", "a:0")[0] == 1


def test_expire_changes_a_live_key_only(store: ResultStore, clock) -> None:
    store.set("k", "v", expires=10)
    assert store.expire("k", 100)
    clock.advance(50)
    assert store.get("k") == "v"
    assert store.expire("k", None)  # no expiry any more
    clock.advance(10_000)
    assert store.get("k") == "v"
    store.set("gone", "v", expires=1)
    clock.advance(2)
    assert not store.expire("gone", 100)  # an expired key is not brought back
    assert store.get("gone") is None
    assert not store.expire("missing", 100)


def test_delete(store: ResultStore) -> None:
    store.set("k", "v")
    store.delete("k")
    store.delete("k")  # deleting a missing key is fine
    assert store.get("k") is None
    assert store.count() == 0


def test_wait_for_change_times_out_when_nobody_commits(store: ResultStore) -> None:
    stamp = store.change_stamp()
    assert store.wait_for_change(stamp, timeout=0.05) is False


def test_wait_for_change_wakes_on_another_connection_commit(db_target: str, store: ResultStore) -> None:
    other = ResultStore(db_target)
    stamp = store.change_stamp()
    writer = threading.Thread(target=lambda: other.set("k", "v"))
    writer.start()
    assert store.wait_for_change(stamp, timeout=30) is True
    writer.join(10)
    assert store.get("k") == "v"


def test_one_database_per_path_for_results_and_jobs(tmp_path) -> None:
    a = result_store(str(tmp_path / "r.db"))
    b = result_store(str(tmp_path / ".." / tmp_path.name / "r.db"))
    c = result_store(str(tmp_path / "other.db"))
    jobs = JobStore.shared(str(tmp_path / "r.db"))
    assert a.db is b.db is jobs.db  # a worker whose broker and backend share a file opens it once
    assert a.db is not c.db
    a.set("k", "v")
    assert jobs.db.connection() is a.db.connection()  # one connection per thread


def test_a_chord_size_is_unknown_until_set_and_grows_with_added_parts(store: ResultStore, clock) -> None:
    assert store.count_chord_part("c", "a:0") == (1, None)  # counted before Celery set the size
    store.set_chord_size("c", 3, expires=100)
    assert store.count_chord_part("c", "b:1") == (2, 3)
    store.grow_chord("c", expires=100)  # Task.add_to_chord
    store.grow_chord("c", expires=100)
    assert store.chord_size("c") == 5
    store.set_chord_size("c", 3, expires=100)  # set again: the added parts still count on top
    assert store.count_chord_part("c", "c:2") == (3, 5)
    assert store.chord_size("other") is None


def test_only_one_caller_claims_a_counter(store: ResultStore) -> None:
    store.set_chord_size("c", 1)
    assert store.count_chord_part("c", "a:0") == (1, 1)
    assert store.claim_counter("c", expires=100)
    assert not store.claim_counter("c", expires=100)  # a second part that saw the chord complete
    assert store.count_chord_part("c", "b:1") == (0, None)  # finished: counts nothing more
    assert store.chord_size("c") is None  # the marks went with the claim
    store.reset_counter("c")  # the chord applied again: a new run
    assert store.count_chord_part("c", "a:0") == (1, None)
