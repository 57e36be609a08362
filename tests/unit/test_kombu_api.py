"""kombu's own API on the transport, on SQLite and on PostgreSQL: publish, consume, ack, reject, requeue, ETA, priority."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

import queuectl_kombu  # noqa: F401
from queuectl_kombu import DatabaseUnusable, JobState, JobStore
from tests.support.postgres import url_of


@pytest.fixture
def url(db_target: str) -> str:
    """The broker URL of this test's database, on each engine in turn."""
    return url_of(db_target)


def test_simple_queue_round_trip(url: str, db_target: str) -> None:
    with Connection(url) as conn:
        q = conn.SimpleQueue("jobs")
        q.put({"n": 1})
        q.put({"n": 2})
        assert q.qsize() == 2
        got = [q.get(timeout=2) for _ in range(2)]
        assert [m.payload for m in got] == [{"n": 1}, {"n": 2}]
        for m in got:
            m.ack()
        q.close()
    assert JobStore(db_target).counts()[JobState.COMPLETED] == 2


def test_requeue_puts_back_the_same_row(url: str, db_target: str) -> None:
    with Connection(url) as conn:
        q = conn.SimpleQueue("jobs")
        q.put("x")
        m = q.get(timeout=2)
        m.requeue()
        jobs = JobStore(db_target).list_jobs()
        assert [(j.state, j.attempts) for j in jobs] == [(JobState.PENDING, 0)]
        again = q.get(timeout=2)
        assert again.payload == "x"
        again.ack()
        q.close()
    assert len(JobStore(db_target).list_jobs()) == 1


def test_reject_applies_the_retry_policy(url: str, db_target: str) -> None:
    with Connection(url, transport_options={"max_retries": 0}) as conn:
        q = conn.SimpleQueue("jobs")
        q.put("x")
        q.get(timeout=2).reject()
        q.close()
    (job,) = JobStore(db_target).list_jobs()
    assert job.state is JobState.DEAD


def test_reject_with_retries_left_waits_for_backoff(url: str, db_target: str) -> None:
    with Connection(url, transport_options={"max_retries": 2, "backoff_base": 60}) as conn:
        q = conn.SimpleQueue("jobs")
        q.put("x")
        q.get(timeout=2).reject()
        (job,) = JobStore(db_target).list_jobs()
        assert job.state is JobState.FAILED
        assert job.next_run_at > time.time() + 50
        with pytest.raises(q.Empty):
            q.get(timeout=0.2)
        q.close()


def test_priority_higher_first_then_fifo(url: str) -> None:
    with Connection(url) as conn:
        queue = Queue("prio", Exchange("prio"), "prio", max_priority=9)
        producer = Producer(conn)
        for body, priority in [("a", 1), ("b", 9), ("c", 5), ("d", 9)]:
            producer.publish(body, exchange=queue.exchange, routing_key="prio", declare=[queue], priority=priority)
        received: list[str] = []
        with Consumer(conn, [queue], callbacks=[lambda body, m: (received.append(body), m.ack())]):
            while len(received) < 4:
                conn.drain_events(timeout=2)
    assert received == ["b", "d", "c", "a"]


def test_eta_header_holds_the_message(url: str, db_target: str) -> None:
    eta = (datetime.now(timezone.utc) + timedelta(seconds=60)).isoformat()
    with Connection(url) as conn:
        q = conn.SimpleQueue("later")
        q.put("x", headers={"eta": eta})
        with pytest.raises(q.Empty):
            q.get(timeout=0.2)
        q.close()
    (job,) = JobStore(db_target).list_jobs()
    assert job.state is JobState.PENDING
    assert job.next_run_at == pytest.approx(time.time() + 60, abs=5)


def test_transport_by_class_path_without_the_alias(db_target: str) -> None:
    code = (
        "import sys; from kombu import Connection;"
        f"c = Connection({url_of(db_target)!r}, transport='queuectl_kombu.transport:Transport');"
        "q = c.SimpleQueue('x'); q.put('hi'); m = q.get(timeout=2); m.ack(); print(m.payload)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "hi"


def test_url_without_a_path_is_refused() -> None:
    with pytest.raises(DatabaseUnusable, match="names no database file"):
        Connection("sqlite://").connect()


def test_connect_names_a_bad_path(tmp_path: Path) -> None:
    bad = tmp_path / "missing" / "q.db"
    with pytest.raises(DatabaseUnusable, match=str(bad)):
        Connection("sqlite:///" + str(bad)).connect()


def test_consumer_wakes_on_another_process_publish(url: str, db_target: str) -> None:
    """drain_events returns once another process publishes, long before its timeout."""
    received: list[str] = []
    with Connection(url) as conn:
        queue = Queue("wake")
        with Consumer(conn, [queue], callbacks=[lambda body, m: (received.append(body), m.ack())]):
            code = (
                "import time, queuectl_kombu; from kombu import Connection; time.sleep(0.3);"
                f"c = Connection({url_of(db_target)!r}); c.SimpleQueue('wake').put('ping')"
            )
            child = subprocess.Popen([sys.executable, "-c", code])
            try:
                conn.drain_events(timeout=30)
            finally:
                child.wait(timeout=60)
    assert received == ["ping"]


def test_ack_from_another_thread_frees_the_prefetch_window(url: str) -> None:
    received = []
    with Connection(url) as conn:
        q = conn.SimpleQueue("window")
        for i in range(2):
            q.put(i)
        channel = conn.default_channel
        consumer = Consumer(channel, [Queue("window")], callbacks=[lambda body, m: received.append(m)])
        consumer.qos(prefetch_count=1)
        with consumer:
            conn.drain_events(timeout=5)
            assert len(received) == 1
            with pytest.raises(socket.timeout):
                conn.drain_events(timeout=0.3)  # window full: nothing more is delivered
            threading.Timer(0.2, received[0].ack).start()
            conn.drain_events(timeout=30)
        assert [m.payload for m in received] == [0, 1]
        received[1].ack()
        q.close()


def test_waiter_wakes_on_a_commit(db_target: str) -> None:
    """SQLite: inotify on the -wal file; PostgreSQL: a NOTIFY on the LISTEN connection."""
    store = JobStore(db_target)
    store.open()
    waiter = store.db.change_waiter()
    assert waiter.pushes_changes and waiter.fileno() >= 0
    waiter.drain()
    assert waiter.wait(0.05) is False
    JobStore(db_target).set_config("retention", 5)
    assert waiter.wait(30) is True
    waiter.close()


def test_event_loop_delivers_and_flushes_acks(url: str, db_target: str) -> None:
    """On kombu's hub (Celery's event loop) messages arrive by the inotify descriptor and the acks
    gathered during an iteration are written before the loop waits again."""
    from kombu.asynchronous import Hub

    hub = Hub()
    received: list[int] = []
    with Connection(url) as conn:
        conn.connect()
        conn.transport.register_with_event_loop(conn.connection, hub)
        consumer = Consumer(conn, [Queue("loop")], callbacks=[lambda body, m: (received.append(body), m.ack())])
        consumer.consume()
        with Connection(url) as other:
            q = other.SimpleQueue("loop")
            for i in range(3):
                q.put(i)
            q.close()
        store = JobStore(db_target)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and store.counts()[JobState.COMPLETED] < 3:
            hub.run_once()
        consumer.cancel()
        conn.transport.unregister_from_event_loop(conn.connection, hub)
    hub.close()
    assert received == [0, 1, 2]
    assert store.counts()[JobState.COMPLETED] == 3


@contextlib.contextmanager
def _one_ack_waiting(path: Path, queue: str) -> Iterator[Any]:
    """A channel on a worker's event loop (a kombu Hub), with messages 0 and 1 published to
    `queue` and 0 taken and acked on the loop's thread: gathered, not written yet. Yields the
    channel; the caller takes 1 and acks it; both are completed after the block."""
    from kombu.asynchronous import Hub

    url = f"sqlite:///{path}"
    with Connection(url) as other:
        q = other.SimpleQueue(queue)
        for i in range(2):
            q.put(i)
        q.close()
    hub = Hub()
    with Connection(url) as conn:
        conn.connect()
        transport = conn.transport
        transport.register_with_event_loop(conn.connection, hub)
        try:
            channel = conn.default_channel
            channel.basic_get(queue).ack()
            assert channel.qos.pending_writes() == 1
            yield channel
        finally:
            transport.unregister_from_event_loop(conn.connection, hub)
    hub.close()
    assert JobStore(str(path)).counts()[JobState.COMPLETED] == 2


def test_a_claim_on_the_event_loop_writes_the_waiting_acks_in_its_own_transaction(tmp_path: Path) -> None:
    """On a worker's event loop the acks gathered since the last flush go into the next claim's
    transaction: one turn of the file's writers, not two (the publishers wait for each).
    (basic_get first marks the queue used, in a transaction of its own; a worker consumes.)"""
    with _one_ack_waiting(tmp_path / "q.db", "pig") as channel:
        statements: list[str] = []
        db_conn = channel.store.db.connection()
        db_conn.set_trace_callback(statements.append)
        try:
            second = channel.basic_get("pig")
        finally:
            db_conn.set_trace_callback(None)
        assert second is not None and second.payload == 1
        transactions: list[list[str]] = []
        for statement in statements:
            if statement.startswith("BEGIN"):
                transactions.append([])
            elif transactions:
                transactions[-1].append(statement)
        (both,) = [t for t in transactions if any("state = 'processing'" in s for s in t)]
        assert any("state = 'completed'" in s for s in both)  # the ack, with the claim
        assert not any("state = 'completed'" in s for t in transactions if t is not both for s in t)
        assert channel.qos.pending_writes() == 0
        counts = JobStore(str(tmp_path / "q.db")).counts()
        assert counts[JobState.COMPLETED] == 1 and counts[JobState.PROCESSING] == 1
        second.ack()


def test_drain_events_delivers_one_message_per_call(url: str) -> None:
    """kombu's contract: one event per drain_events call (pidbox counts replies that way)."""
    received: list[str] = []
    with Connection(url) as conn:
        q = conn.SimpleQueue("one")
        q.put("a")
        q.put("b")
        with Consumer(conn, [Queue("one")], no_ack=True, callbacks=[lambda body, m: received.append(body)]):
            conn.drain_events(timeout=5)
            assert received == ["a"]
            conn.drain_events(timeout=5)
            assert received == ["a", "b"]
        q.close()


def test_a_timer_set_in_on_tick_wakes_the_poll(url: str) -> None:
    """kombu's hub computes its poll timeout before it runs on_tick: the transport's coalescing
    timer, set by flush_acks on a tick, must make the poll return at once (the wake pipe), or a
    worker whose pool touches no descriptor (-P threads) waits ~1 s at every prefetch window."""
    import select

    from kombu.asynchronous import Hub

    hub = Hub()
    with Connection(url) as conn:
        conn.connect()
        transport = conn.transport
        transport.register_with_event_loop(conn.connection, hub)
        try:
            channel = conn.default_channel
            link = transport.link
            link.flush_acks()  # nothing pending: no timer, no wake-up
            assert select.select([link._wake_fds[0]], [], [], 0)[0] == []
            channel.qos._acks.append(1)  # an ack gathered on the loop, just after a flush
            link._last_flush = time.monotonic()
            link.flush_acks()  # put off (coalescing): a timer, and the poll must not sleep
            assert link._again_timer is not None
            assert select.select([link._wake_fds[0]], [], [], 0)[0] == [link._wake_fds[0]]
            link._on_wake()
            assert select.select([link._wake_fds[0]], [], [], 0)[0] == []
            channel.qos._acks.clear()
        finally:
            transport.unregister_from_event_loop(conn.connection, hub)
    hub.close()


def test_no_hostname_warning(url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The file is the whole address: kombu must not warn that no hostname was supplied (every
    worker logged it at start)."""
    with caplog.at_level("WARNING", logger="kombu.connection"), Connection(url) as conn:
        conn.connect()
        info = conn.info()
    assert info["hostname"] == url  # kombu hands the URL over whole (can_parse_url)
    assert conn.as_uri() == url  # the banner shows the URL as it was written
    assert not [r for r in caplog.records if "hostname" in r.getMessage()]


def test_half_the_window_acked_wakes_the_loop(url: str) -> None:
    """On the event loop, the ack that frees half the prefetch window wakes the loop at once to
    claim again (the claim otherwise waited for the coalesced ack write: one window per 5 ms)."""
    import select

    from kombu.asynchronous import Hub

    hub = Hub()
    received: list[Any] = []
    with Connection(url) as conn:
        conn.connect()
        transport = conn.transport
        transport.register_with_event_loop(conn.connection, hub)
        try:
            with Connection(url) as other:
                q = other.SimpleQueue("window")
                for i in range(8):
                    q.put(i)
                q.close()
            consumer = Consumer(conn, [Queue("window")], callbacks=[lambda body, m: received.append(m)])
            consumer.qos(prefetch_count=4)
            consumer.consume()
            deadline = time.monotonic() + 30
            while len(received) < 4 and time.monotonic() < deadline:
                hub.run_once()
            assert len(received) == 4  # the window is full
            wake_fd = transport.link._wake_fds[0]
            transport.link._on_wake()  # empty the pipe
            received[0].ack()
            assert select.select([wake_fd], [], [], 0)[0] == []  # 3 of 4 held: no claim yet
            received[1].ack()
            assert select.select([wake_fd], [], [], 0)[0] == [wake_fd]  # half free: claim now
            transport.link._on_wake()  # what the loop runs: the next two are delivered
            assert len(received) == 6
            for m in received[2:]:
                m.ack()
            consumer.cancel()
        finally:
            transport.unregister_from_event_loop(conn.connection, hub)
    hub.close()


def test_kombu_typed_json_round_trips(url: str) -> None:
    """kombu's JSON writes datetimes and UUIDs as {"__type__": ...} objects: a message holding
    them is decoded with kombu's hook, one without them by the plain decoder; both as sent."""
    import uuid

    when = datetime(2030, 1, 31, 12, 0, tzinfo=timezone.utc)
    ident = uuid.uuid4()
    with Connection(url) as conn:
        q = conn.SimpleQueue("typed")
        q.put({"when": when, "id": ident}, headers={"sent": when})
        q.put({"plain": [1, "two", None]}, headers={"x": "y"})
        typed = q.get(timeout=5)
        plain = q.get(timeout=5)
        assert typed.payload == {"when": when, "id": ident}
        assert typed.headers["sent"] == when
        assert plain.payload == {"plain": [1, "two", None]} and plain.headers["x"] == "y"
        typed.ack()
        plain.ack()
        q.close()


def test_every_delivery_after_the_first_says_redelivered(url: str, db_target: str) -> None:
    """A requeue (Reject(requeue=True), a shutdown hand-back) does not count as an attempt, but the
    next delivery is still a redelivery, as on RabbitMQ."""
    with Connection(url) as conn:
        q = conn.SimpleQueue("jobs")
        q.put("x")
        first = q.get(timeout=2)
        assert first.delivery_info["redelivered"] is False
        first.requeue()
        second = q.get(timeout=2)
        assert second.delivery_info["redelivered"] is True
        second.ack()
        q.close()
    (job,) = JobStore(db_target).list_jobs()
    assert (job.state, job.attempts) == (JobState.COMPLETED, 1)


def test_a_consumer_of_several_queues_takes_messages_in_publication_order(url: str) -> None:
    with Connection(url) as conn:
        producer = Producer(conn)
        queues = [Queue("qa"), Queue("qb")]
        for queue in queues:
            queue(conn.default_channel).declare()
        for body, queue in [("a1", "qa"), ("b1", "qb"), ("a2", "qa"), ("b2", "qb"), ("b3", "qb")]:
            producer.publish(body, routing_key=queue)
        received: list[str] = []
        with Consumer(conn, queues, callbacks=[lambda body, m: (received.append(body), m.ack())]):
            deadline = time.monotonic() + 30
            while len(received) < 5 and time.monotonic() < deadline:
                conn.drain_events(timeout=1)
    assert received == ["a1", "b1", "a2", "b2", "b3"]


def test_control_messages_are_delivered_before_tasks_published_after_them(url: str) -> None:
    """On the event loop, a no-ack queue's messages (Celery's pidbox) are handed over before the
    messages of acked queues, whatever the order of the channels: a revoke published just
    before its task reaches the worker first."""
    from kombu.asynchronous import Hub

    hub = Hub()
    received: list[str] = []
    with Connection(url) as conn:
        conn.connect()
        conn.transport.register_with_event_loop(conn.connection, hub)
        tasks = Consumer(conn.channel(), [Queue("tasks")], callbacks=[lambda body, m: (received.append(body), m.ack())])
        control = Consumer(conn.channel(), [Queue("control")], no_ack=True,
                           callbacks=[lambda body, m: received.append(body)])
        tasks.consume()
        control.consume()  # consumed second, on a channel made after the tasks' one
        with Connection(url) as other:
            producer = Producer(other)
            for body, queue in [("revoke-1", "control"), ("task-1", "tasks"), ("revoke-2", "control"),
                                ("task-2", "tasks")]:
                producer.publish(body, routing_key=queue)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(received) < 4:
            hub.run_once()
        tasks.cancel()
        control.cancel()
        conn.transport.unregister_from_event_loop(conn.connection, hub)
    hub.close()
    assert received == ["revoke-1", "revoke-2", "task-1", "task-2"]


def test_acks_written_in_a_claim_that_rolls_back_are_written_again(tmp_path: Path) -> None:
    """The acks a claim carries in its transaction are undone with it when the claim fails: they
    wait to be written again (else their jobs would stay processing, leased to a live worker)."""
    import sqlite3

    path = tmp_path / "q.db"
    with _one_ack_waiting(path, "undo") as channel:
        refuse = sqlite3.connect(path)
        refuse.execute("CREATE TRIGGER refuse_claims BEFORE UPDATE OF state ON jobs "
                       "WHEN NEW.state = 'processing' BEGIN SELECT RAISE(ABORT, 'claims refused'); END")
        refuse.commit()
        with pytest.raises(Exception, match="claims refused"):
            channel.basic_get("undo")
        assert channel.qos.pending_writes() == 1  # the ack, back in line
        assert JobStore(str(path)).counts()[JobState.COMPLETED] == 0
        refuse.execute("DROP TRIGGER refuse_claims")
        refuse.commit()
        refuse.close()
        second = channel.basic_get("undo")
        assert second is not None and second.payload == 1
        assert channel.qos.pending_writes() == 0
        assert JobStore(str(path)).counts()[JobState.COMPLETED] == 1
        second.ack()
