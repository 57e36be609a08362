"""The public publishing API (route, message_rows, publish, stored_message) that the channel and
the CLI's bulk path share, and the error types callers map to exit codes."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from queuectl_kombu import (
    MAX_RETRIES_HEADER,
    DatabaseLocked,
    InvalidInput,
    InvalidValue,
    JobState,
    JobStore,
    message_rows,
    publish,
    route,
    stored_message,
)
from queuectl_kombu.db import Database, database, is_busy


def _declare(url: str) -> None:
    """Exchanges and bindings made through kombu, as Celery makes them."""
    with Connection(url) as conn:
        channel = conn.default_channel
        Queue("d1", Exchange("direct-x", "direct"), routing_key="a")(channel).declare()
        Queue("d2", Exchange("direct-x", "direct"), routing_key="b")(channel).declare()
        Queue("f1", Exchange("fan-x", "fanout"))(channel).declare()
        Queue("f2", Exchange("fan-x", "fanout"))(channel).declare()
        Queue("t1", Exchange("topic-x", "topic"), routing_key="jobs.*.high")(channel).declare()
        Queue("t2", Exchange("topic-x", "topic"), routing_key="jobs.#")(channel).declare()


def test_route_follows_the_bindings_in_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")
    _declare(f"sqlite:///{path}")
    store = JobStore(path)
    assert route(store, "", "named") == ["named"]  # the anonymous exchange: the routing key's queue
    assert route(store, "direct-x", "b") == ["d2"]
    assert route(store, "direct-x", "nothing") == []
    assert route(store, "direct-x", "nothing", default="dead") == ["dead"]
    assert route(store, "fan-x", "whatever") == ["f1", "f2"]
    assert route(store, "topic-x", "jobs.build.high") == ["t1", "t2"]
    assert route(store, "topic-x", "jobs.build.low") == ["t2"]
    assert route(store, "undeclared", "a") == []


def test_rows_built_by_hand_are_delivered_like_a_published_message(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    headers = {"id": "t-1", "task": "tasks.add", "eta": "2000-01-01T00:00:00+00:00", MAX_RETRIES_HEADER: 2}
    body = base64.b64encode(json.dumps([[1, 2], {}, {}]).encode()).decode()
    message = stored_message(body, headers, exchange="", routing_key="q", priority=12, correlation_id="t-1")
    (row,) = message_rows(message, ["q"])
    assert (row.task_id, row.task_name, row.max_retries, row.priority) == ("t-1", "tasks.add", 2, 9)  # capped at 9
    assert row.next_run_at == 946684800.0
    store = JobStore(path)
    (job_id,) = publish(store, message, ["q"])
    with Connection(f"sqlite:///{path}") as conn:
        got = conn.SimpleQueue("q").get(timeout=10)
        assert got.headers["id"] == "t-1"
        assert got.decode() == [[1, 2], {}, {}]
        got.ack()
    assert store.get_job(job_id).state is JobState.COMPLETED


@pytest.mark.parametrize("value", [-1, 10_001, "many", True, 2.5])
def test_a_max_retries_header_out_of_range_is_refused_and_nothing_written(tmp_path: Path, value: object) -> None:
    store = JobStore(str(tmp_path / "h.db"))
    message = stored_message("e30=", {MAX_RETRIES_HEADER: value}, exchange="", routing_key="q", priority=0,
                             correlation_id="x")
    with pytest.raises(InvalidValue, match="^message header 'x-max-retries' must be a whole number from 0 to 10000"):
        publish(store, message, ["q"])
    assert isinstance(InvalidValue(), InvalidInput) and isinstance(InvalidValue(), ValueError)
    assert store.list_jobs() == []


def test_a_lock_held_past_the_busy_timeout_is_database_locked(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")
    db = Database(path)
    db.connection().execute("PRAGMA busy_timeout = 0")  # give up at once instead of after 30 s
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(DatabaseLocked, match=f"^database {path} is locked") as caught:
            with db.write():
                pass
    finally:
        holder.close()
    assert isinstance(caught.value, sqlite3.OperationalError)  # kombu's connection error; retried by acks
    assert is_busy(caught.value)
    with db.write() as conn:  # the lock is gone: the same Database writes again
        conn.execute("PRAGMA user_version")


def test_one_database_per_file_per_process(tmp_path: Path) -> None:
    a = database(str(tmp_path / "x.db"))
    assert database(str(tmp_path / "." / "x.db")) is a
    assert database(str(tmp_path / "y.db")) is not a
    assert JobStore.shared(str(tmp_path / "x.db")).db is a
    a.connection()
    (tmp_path / "x.db").unlink()  # a new file at the path gets a new Database
    assert database(str(tmp_path / "x.db")) is not a


def test_closing_a_shared_database_closes_the_calling_threads_connection_only(tmp_path: Path) -> None:
    import threading

    db = database(str(tmp_path / "c.db"))
    other: list[sqlite3.Connection] = []
    ready, closed = threading.Event(), threading.Event()

    def hold() -> None:  # another thread (a housekeeper, say) keeps using its connection
        other.append(db.connection())
        ready.set()
        closed.wait(30)
        other.append(db.connection())

    thread = threading.Thread(target=hold)
    thread.start()
    assert ready.wait(30)
    mine = db.connection()
    with db.write():
        db.close()  # inside a transaction: kept open
        assert db.connection() is mine
    db.close()
    assert db.connection() is not mine  # this thread's was closed and a new one opened
    closed.set()
    thread.join(30)
    assert other[0] is other[1]  # the other thread's connection was left alone
    other[0].execute("SELECT 1")
