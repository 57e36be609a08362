"""Queue operations through kombu and the celery CLI on the SQLite broker: sizes, purge, delete,
passive declares, Producer/Consumer/SimpleQueue, Connection.ensure on a locked file, message
TTL, x-expires, auto-delete and exclusive queues, x-max-priority."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import psycopg
import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.exceptions import ChannelError

import queuectl_kombu  # noqa: F401

from tests.support.paths import REPO
from tests.support.waiting import wait_for

from .kit import Env


def size(conn: Connection, name: str) -> int:
    return conn.default_channel.queue_declare(queue=name, passive=True).message_count


def missing(conn: Connection, name: str) -> bool:
    """True when a passive declare of `name` fails the AMQP way (404 NOT_FOUND)."""
    try:
        conn.default_channel.queue_declare(queue=name, passive=True)
    except ChannelError as exc:
        assert str(exc.reply_code) == "404" and "NOT_FOUND" in str(exc)
        return True
    return False


# -- sizes, purge, delete, passive declares ------------------------------------------------------


def test_passive_declare_reports_the_message_count(url: str) -> None:
    with Connection(url) as conn:
        queue = Queue("sized", Exchange("sized"), "sized")
        producer = Producer(conn)
        for i in range(3):
            producer.publish(i, exchange=queue.exchange, routing_key="sized", declare=[queue])
        ok = conn.default_channel.queue_declare(queue="sized", passive=True)
        assert (ok.queue, ok.message_count) == ("sized", 3)
        assert queue(conn.default_channel).queue_declare(passive=True).message_count == 3
        m = queue(conn.default_channel).get()  # basic_get: one message
        assert size(conn, "sized") == 2  # a message being processed is not counted
        m.reject(requeue=True)
        assert size(conn, "sized") == 3
        queue(conn.default_channel).get().ack()
        assert size(conn, "sized") == 2


def test_passive_declare_of_a_missing_queue_or_exchange_fails_with_404(url: str) -> None:
    with Connection(url) as conn:
        channel = conn.default_channel
        with pytest.raises(ChannelError) as exc:
            channel.queue_declare(queue="never-declared", passive=True)
        assert str(exc.value.reply_code) == "404" and "NOT_FOUND" in str(exc.value)
        with pytest.raises(ChannelError) as exc:
            channel.exchange_declare(exchange="never-declared", type="direct", passive=True)
        assert str(exc.value.reply_code) == "404"
        with pytest.raises(ChannelError):
            Queue("never-declared")(channel).queue_declare(passive=True)
        # The failed passive declares created nothing.
        assert missing(conn, "never-declared")


def test_queue_delete_drops_messages_and_bindings(url: str, env: Env) -> None:
    with Connection(url) as conn:
        exchange = Exchange("del-x", "direct")
        queue = Queue("doomed", exchange, "k")
        producer = Producer(conn)
        for i in range(2):
            producer.publish(i, exchange=exchange, routing_key="k", declare=[queue])
        channel = conn.default_channel
        channel.queue_delete("doomed", if_empty=True)  # not empty: kept
        assert size(conn, "doomed") == 2
        channel.queue_delete("doomed")
        assert missing(conn, "doomed")
        producer.publish("after", exchange="del-x", routing_key="k")  # no binding left: dropped
        assert env.sql("SELECT COUNT(*) FROM jobs WHERE queue = 'doomed'") == [(0,)]
        assert env.sql("SELECT COUNT(*) FROM bindings WHERE queue = 'doomed'") == [(0,)]
        queue(channel).declare()
        assert size(conn, "doomed") == 0  # declared again, empty
        channel.queue_delete("doomed", if_empty=True)  # empty: deleted
        assert missing(conn, "doomed")


def test_celery_purge_cli(env: Env) -> None:
    app = env.app()
    for i in range(5):
        app.send_task("b.record", args=(f"p{i}",))
    app.send_task("b.record", args=("other",), queue="elsewhere")
    with app.connection_for_write() as conn:
        assert size(conn, "celery") == 5
    out = env.run_celery("purge", "-f", "-Q", "celery,elsewhere")
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"Purged 6 messages from 2 known task queues", out.stdout), out.stdout
    with app.connection_for_write() as conn:
        assert size(conn, "celery") == 0
        assert size(conn, "elsewhere") == 0


# -- kombu's basic objects ------------------------------------------------------------------------


def test_producer_consumer_keep_headers_properties_and_serializers(url: str) -> None:
    received: list[tuple[Any, Any]] = []
    with Connection(url) as conn:
        queue = Queue("props", Exchange("props", "direct"), "props")
        producer = Producer(conn, exchange=queue.exchange, routing_key="props")
        producer.publish({"a": [1, 2]}, declare=[queue], headers={"h": "v", "n": 3},
                         correlation_id="corr-1", reply_to="back", priority=4)
        producer.publish("text", serializer="pickle", compression="zlib", declare=[queue])
        producer.publish(b"\x00\x01raw", content_type="application/data", content_encoding="binary", declare=[queue])
        consumer = Consumer(conn, [queue], accept=["json", "pickle", "application/data"],
                            callbacks=[lambda body, m: (received.append((body, m)), m.ack())])
        with consumer:
            while len(received) < 3:
                conn.drain_events(timeout=5)
    bodies = [b for b, _ in received]
    assert bodies == [{"a": [1, 2]}, "text", b"\x00\x01raw"]
    first = received[0][1]
    assert first.headers == {"h": "v", "n": 3}
    assert first.properties["correlation_id"] == "corr-1" and first.properties["reply_to"] == "back"
    assert first.properties["priority"] == 4
    assert first.delivery_info["exchange"] == "props" and first.delivery_info["routing_key"] == "props"
    assert received[1][1].content_type == "application/x-python-serialize"


def test_simple_queue_and_simple_buffer(url: str, env: Env) -> None:
    with Connection(url) as conn:
        q = conn.SimpleQueue("simple")
        for i in range(4):
            q.put({"i": i})
        assert len(q) == q.qsize() == 4
        assert q.clear() == 4
        assert q.qsize() == 0
        q.put({"i": 4})
        m = q.get(timeout=2)
        assert m.payload == {"i": 4}
        m.ack()
        with pytest.raises(q.Empty):
            q.get(timeout=0.2)
        q.close()
        buf = conn.SimpleBuffer("buffer")  # no_ack, auto_delete, transient
        buf.put("x")
        assert buf.get(timeout=2).payload == "x"
        buf.close()
    # the no-ack get removed the row at once; the acked one is completed
    assert env.sql("SELECT COUNT(*) FROM jobs WHERE queue = 'buffer'") == [(0,)]
    assert env.sql("SELECT state, COUNT(*) FROM jobs WHERE queue = 'simple' GROUP BY state") == [("completed", 1)]


def test_basic_get_reject_requeue_and_no_ack(url: str, env: Env) -> None:
    with Connection(url) as conn:
        channel = conn.default_channel
        queue = Queue("bg", Exchange("bg"), "bg")
        Producer(conn).publish("one", exchange=queue.exchange, routing_key="bg", declare=[queue])
        m = queue(channel).get()
        assert m.payload == "one"
        m.reject(requeue=True)
        again = queue(channel).get()
        assert again.payload == "one"
        again.ack()
        assert queue(channel).get() is None
        Producer(conn).publish("two", exchange=queue.exchange, routing_key="bg")
        assert queue(channel).get(no_ack=True).payload == "two"
        assert size(conn, "bg") == 0
    assert env.sql("SELECT state FROM jobs ORDER BY id") == [("completed",)]


# -- a locked database --------------------------------------------------------------------------


def test_ensure_waits_out_a_locked_database(url: str, env: Env) -> None:
    """Another connection holds BEGIN EXCLUSIVE (PostgreSQL: an exclusive lock on the jobs table)
    for a moment: ensure_connection and a publish through Connection.ensure wait and succeed once
    the lock is gone."""
    with Connection(url) as conn:
        queue = Queue("locked", Exchange("locked"), "locked")
        queue(conn.default_channel).declare()
    if env.broker == "postgresql":
        locker = psycopg.connect(url, autocommit=True)
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE queuectl.jobs IN ACCESS EXCLUSIVE MODE")
    else:
        locker = sqlite3.connect(str(env.db), isolation_level=None, timeout=5, check_same_thread=False)
        locker.execute("BEGIN EXCLUSIVE")
    released: list[float] = []

    def release() -> None:
        released.append(time.monotonic())
        locker.execute("COMMIT")

    timer = threading.Timer(1.5, release)
    timer.start()
    errors: list[tuple[Any, Any]] = []
    try:
        with Connection(url) as conn:
            conn.ensure_connection(max_retries=3)
            producer = Producer(conn)
            publish = conn.ensure(producer, producer.publish, max_retries=3,
                                  errback=lambda exc, interval: errors.append((exc, interval)))
            publish("while-locked", exchange="locked", routing_key="locked")
            published = time.monotonic()
            assert released and released[0] <= published  # it waited for the lock, then went through
            m = conn.SimpleQueue("locked").get(timeout=5)
            assert m.payload == "while-locked"
            m.ack()
    finally:
        timer.join()
        locker.close()
    assert errors == []  # the busy timeout covered it: no retry was needed


def test_operational_error_is_a_connection_error(url: str) -> None:
    """kombu and Celery retry connection_errors; a locked or busy file is one."""
    with Connection(url) as conn:
        assert sqlite3.OperationalError in conn.connection_errors
        assert conn.transport.driver_type not in ("sql", "amqp", "redis")  # events stay on


# -- TTL and expiry -----------------------------------------------------------------------------


def test_message_ttl_from_the_queue_and_from_the_message(url: str, env: Env) -> None:
    with Connection(url) as conn:
        ttl_queue = Queue("ttl", Exchange("ttl"), "ttl", message_ttl=1.0)  # x-message-ttl 1000
        plain = Queue("plain", Exchange("plain"), "plain")
        producer = Producer(conn)
        producer.publish("ttl-gone", exchange=ttl_queue.exchange, routing_key="ttl", declare=[ttl_queue])
        producer.publish("msg-gone", exchange=plain.exchange, routing_key="plain", declare=[plain], expiration=1.0)
        producer.publish("kept", exchange=plain.exchange, routing_key="plain", declare=[plain])
        assert env.sql("SELECT arguments FROM queues WHERE name = 'ttl'") == [(json.dumps({"x-message-ttl": 1000}),)]
        wait_for(lambda: size(conn, "ttl") == 0 and size(conn, "plain") == 1, 30, what="both to expire")
        assert queue_get(conn, "ttl") is None
        m = queue_get(conn, "plain")
        assert m is not None and m.payload == "kept"
        m.ack()
        assert queue_get(conn, "plain") is None
        # The expired rows are deleted on their own while some consumer (its keeper) runs.
        with Consumer(conn, [plain], callbacks=[]):
            wait_for(lambda: env.sql("SELECT COUNT(*) FROM jobs WHERE state = 'pending'") == [(0,)], 30,
                     what="expired rows deleted")


def queue_get(conn: Connection, name: str) -> Any:
    q = conn.SimpleQueue(name)
    try:
        return q.get(timeout=0.2)
    except q.Empty:
        return None


def test_unused_queue_expires_with_its_messages_while_a_consumed_one_stays(url: str, env: Env) -> None:
    with Connection(url) as conn:
        exchange = Exchange("xe", "direct")
        idle = Queue("idle", exchange, "idle", expires=1.0)  # x-expires 1000
        busy = Queue("busy", exchange, "busy", expires=1.5)
        producer = Producer(conn)
        for i in range(3):
            producer.publish(i, exchange=exchange, routing_key="idle", declare=[idle])
        # (Looked up in the file: a passive declare is a redeclare, which renews x-expires.)
        def declared(name: str) -> bool:
            return bool(env.sql("SELECT 1 FROM queues WHERE name = ?", (name,)))

        with Consumer(conn, [busy], callbacks=[lambda b, m: m.ack()]):
            started = time.monotonic()
            wait_for(lambda: not declared("idle"), 30, interval=0.1, what="the idle queue to expire")
            assert missing(conn, "idle")
            assert env.sql("SELECT COUNT(*) FROM jobs WHERE queue = 'idle'") == [(0,)]
            assert env.sql("SELECT COUNT(*) FROM bindings WHERE queue = 'idle'") == [(0,)]
            # The consumed queue outlives its x-expires several times over.
            while time.monotonic() - started < 4.0:
                assert declared("busy")
                time.sleep(0.1)
            producer.publish("late", exchange=exchange, routing_key="idle")  # unroutable now
            producer.publish("live", exchange=exchange, routing_key="busy")
            conn.drain_events(timeout=10)
        assert env.sql("SELECT queue, state FROM jobs") == [("busy", "completed")]


def test_auto_delete_queue_goes_with_its_consumer(url: str, env: Env) -> None:
    with Connection(url) as conn:
        queue = Queue("ad", Exchange("ad-x", "fanout"), auto_delete=True)
        with Consumer(conn, [queue], callbacks=[]):
            assert not missing(conn, "ad")
            Producer(conn).publish("x", exchange="ad-x", routing_key="")
        assert missing(conn, "ad")
        assert env.sql("SELECT COUNT(*) FROM bindings WHERE queue = 'ad'") == [(0,)]
        assert env.sql("SELECT COUNT(*) FROM jobs WHERE queue = 'ad' AND state = 'pending'") == [(0,)]


def test_exclusive_queue_goes_when_its_connection_closes(env: Env) -> None:
    code = textwrap.dedent(f"""
        import queuectl_kombu
        from kombu import Connection, Queue, Exchange
        with Connection({env.url!r}) as conn:
            Queue("mine", Exchange("ex-x", "fanout"), exclusive=True)(conn.default_channel).declare()
            assert conn.default_channel.queue_declare(queue="mine", passive=True).queue == "mine"
            print("declared", flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert out.returncode == 0 and "declared" in out.stdout, out.stderr
    with Connection(env.url) as conn:
        assert missing(conn, "mine")


def test_auto_delete_queue_stays_while_another_process_consumes_it(env: Env) -> None:
    code = textwrap.dedent(f"""
        import socket, time, queuectl_kombu
        from kombu import Connection, Consumer, Exchange, Queue
        got = []
        q = Queue("shared-ad", Exchange("shared-ad", "direct"), "k", auto_delete=True)
        with Connection({env.url!r}) as c, Consumer(c, [q], callbacks=[lambda b, m: (got.append(b), m.ack())]):
            print("ready", flush=True)
            deadline = time.monotonic() + 60
            while not got and time.monotonic() < deadline:
                try:
                    c.drain_events(timeout=1)
                except socket.timeout:
                    pass
        print("got", got, flush=True)
    """)
    other = env.spawn("other-consumer", [sys.executable, "-c", code])
    wait_for(lambda: "ready" in other.output(), 60, what="the other consumer")
    with Connection(env.url) as conn:
        queue = Queue("shared-ad", Exchange("shared-ad", "direct"), "k", auto_delete=True)
        with Consumer(conn, [queue], callbacks=[]):
            pass  # this process consumes and cancels; the other one still consumes
        assert not missing(conn, "shared-ad")
        # looked at before the publish: once the other consumer has its message it stops consuming,
        # and the queue goes with its last consumer (a check after the publish raced that)
        Producer(conn).publish("for-the-other", exchange="shared-ad", routing_key="k")
    wait_for(lambda: "got ['for-the-other']" in other.output(), 30, what="the other consumer to get it")
    with Connection(env.url) as conn:
        assert missing(conn, "shared-ad")  # the other consumer, the last one, cancelled before it printed


def test_auto_delete_queue_of_a_killed_consumer_goes_away(env: Env) -> None:
    code = textwrap.dedent(f"""
        import time, queuectl_kombu
        from kombu import Connection, Consumer
        from kombu.common import Broadcast
        with Connection({env.url!r}) as c, Consumer(c, [Broadcast("bc", queue="bc.victim")], callbacks=[]):
            print("ready", flush=True)
            time.sleep(600)
    """)
    victim = env.spawn("victim", [sys.executable, "-c", code])
    wait_for(lambda: "ready" in victim.output(), 60, what="the broadcast consumer")
    victim.kill_group()
    with Connection(env.url) as conn:
        with Consumer(conn, [Queue("keeper-runs-here")], callbacks=[]):  # some live keeper
            Producer(conn).publish("x", exchange="bc", routing_key="")
            # AMQP brokers delete it as the connection drops; here it goes once the dead consumer
            # has been silent for CONSUMER_TIMEOUT (10 s) and a live keeper sweeps (every second).
            wait_for(lambda: not env.sql("SELECT 1 FROM queues WHERE name = 'bc.victim'"), 25, interval=0.2,
                     what="the dead consumer's auto-delete queue to go")


# -- priorities ---------------------------------------------------------------------------------


def test_priority_above_x_max_priority_counts_as_the_maximum(url: str) -> None:
    """AMQP: a message priority above the queue's x-max-priority is treated as the maximum, so
    those messages keep their publish order among themselves."""
    received: list[str] = []
    with Connection(url) as conn:
        queue = Queue("capped", Exchange("capped"), "capped", max_priority=3)
        producer = Producer(conn)
        for body, priority in [("a5", 5), ("b0", 0), ("c9", 9), ("d3", 3), ("e2", 2), ("f7", 7)]:
            producer.publish(body, exchange=queue.exchange, routing_key="capped", declare=[queue], priority=priority)
        with Consumer(conn, [queue], callbacks=[lambda body, m: (received.append(body), m.ack())]):
            while len(received) < 6:
                conn.drain_events(timeout=5)
    assert received == ["a5", "c9", "d3", "f7", "e2", "b0"]
