"""kombu's own API on the SQLite transport, no Celery, across processes: exchanges and bindings
declared by one process route the publishes of another; consume, ack, reject and requeue keep
their guarantees between processes. (Single-process cases are in tests/unit/test_kombu_api.py.)
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

import queuectl_kombu  # noqa: F401

from tests.support.paths import REPO
from tests.support.waiting import wait_for

from .kit import Env

PRELUDE = """
import json, os, socket, sys, time
import queuectl_kombu
from kombu import Connection, Consumer, Exchange, Producer, Queue
URL = os.environ["BTEST_URL"]
def emit(**kw):
    print(json.dumps(kw), flush=True)
"""


def run_py(env: Env, code: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Run `code` in a new interpreter to its end; returns the JSON lines it printed."""
    out = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout,
        env=env.environ(BTEST_URL=env.url), cwd=str(REPO), start_new_session=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def spawn_py(env: Env, name: str, code: str, **extra: str) -> Any:
    return env.spawn(name, [sys.executable, "-c", PRELUDE + textwrap.dedent(code)], BTEST_URL=env.url, **extra)


def lines(proc: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]


DECLARE = """
with Connection(URL) as conn:
    ch = conn.default_channel
    d, t, f = Exchange("x.direct", "direct"), Exchange("x.topic", "topic"), Exchange("x.fanout", "fanout")
    for q in [
        Queue("red-1", d, "red"), Queue("red-2", d, "red"), Queue("blue", d, "blue"),
        Queue("errors", t, "logs.*.error"), Queue("all-logs", t, "logs.#"), Queue("web", t, "logs.web.*"),
        Queue("fan-a", f, "ignored"), Queue("fan-b", f), Queue("fan-c", f, "whatever"),
        Queue("unbound-later", d, "red"),
    ]:
        q(ch).declare()
    Queue("unbound-later", d, "red")(ch).unbind_from(d, "red")
emit(declared=True)
"""


def test_bindings_declared_in_one_process_route_publishes_of_another(env: Env) -> None:
    """Process 1 declares exchanges, queues and bindings and exits; this process publishes by
    exchange name only (declaring nothing); process 3 reads every queue."""
    assert run_py(env, DECLARE) == [{"declared": True}]
    with Connection(env.url) as conn:
        producer = Producer(conn)
        for exchange, key, body in [
            ("x.direct", "red", "d-red"), ("x.direct", "blue", "d-blue"), ("x.direct", "green", "d-green"),
            ("x.topic", "logs.web.error", "t-web-error"), ("x.topic", "logs.db.info", "t-db-info"),
            ("x.topic", "logs.web.access.x", "t-web-deep"), ("x.topic", "other.web.error", "t-other"),
            ("x.fanout", "anything", "f-1"),
        ]:
            producer.publish(body, exchange=exchange, routing_key=key)
    got = run_py(env, """
        names = ["red-1", "red-2", "blue", "errors", "all-logs", "web", "fan-a", "fan-b", "fan-c", "unbound-later"]
        with Connection(URL) as conn:
            result = {}
            for name in names:
                q = conn.SimpleQueue(name)
                bodies = []
                while True:
                    try:
                        m = q.get(timeout=0.05)
                    except q.Empty:
                        break
                    bodies.append(m.payload)
                    m.ack()
                result[name] = bodies
        emit(**result)
    """)[0]
    assert got == {
        "red-1": ["d-red"], "red-2": ["d-red"], "blue": ["d-blue"],
        "errors": ["t-web-error"],
        "all-logs": ["t-web-error", "t-db-info", "t-web-deep"],
        "web": ["t-web-error"],
        "fan-a": ["f-1"], "fan-b": ["f-1"], "fan-c": ["f-1"],
        "unbound-later": [],
    }
    # Nothing unroutable ("d-green", "t-other") was stored anywhere: 11 copies of 8 publishes.
    assert env.sql("SELECT COUNT(*) FROM jobs") == [(11,)]


def test_fanout_reaches_live_consumers_in_other_processes(env: Env) -> None:
    consumers = [
        spawn_py(env, f"fan-{i}", f"""
            exchange = Exchange("news", "fanout")
            got = []
            with Connection(URL) as conn:
                queue = Queue("news-{i}", exchange)
                with Consumer(conn, [queue], callbacks=[lambda body, m: (got.append(body), m.ack())]):
                    emit(ready=True)
                    deadline = time.monotonic() + 60
                    while len(got) < 2 and time.monotonic() < deadline:
                        try:
                            conn.drain_events(timeout=1)
                        except socket.timeout:
                            pass
            emit(got=got)
        """)
        for i in range(3)
    ]
    wait_for(lambda: all(lines(c) for c in consumers), 60, what="three consumer processes ready")
    with Connection(env.url) as conn:
        producer = Producer(conn)
        producer.publish({"n": 1}, exchange="news", routing_key="")
        producer.publish({"n": 2}, exchange="news", routing_key="")
    for c in consumers:
        assert c.popen.wait(60) == 0, c.output()
        assert lines(c)[-1] == {"got": [{"n": 1}, {"n": 2}]}


def test_competing_consumer_processes_get_each_message_once(env: Env) -> None:
    n = 60
    with Connection(env.url) as conn:
        queue = Queue("work", Exchange("work", "direct"), "work")
        producer = Producer(conn)
        queue(conn.default_channel).declare()
        code = """
            got = []

            def work(body, m):
                time.sleep(0.02)  # the task's work: a loaded machine let one process take all 60
                got.append(body)
                m.ack()

            with Connection(URL) as conn:
                queue = Queue("work", Exchange("work", "direct"), "work")
                with Consumer(conn, [queue], callbacks=[work], prefetch_count=5):
                    emit(ready=True)
                    while True:
                        try:
                            conn.drain_events(timeout=0.5)
                        except socket.timeout:
                            if os.path.exists(os.environ["BTEST_DONE"]):
                                break
            emit(got=got)
        """
        done = env.workdir / "done"
        consumers = [spawn_py(env, f"c{i}", code, BTEST_DONE=str(done)) for i in range(2)]
        wait_for(lambda: all(lines(c) for c in consumers), 60, what="two consumer processes ready")
        for i in range(n):
            producer.publish(i, exchange="work", routing_key="work")
        wait_for(lambda: env.sql("SELECT COUNT(*) FROM jobs WHERE state = 'completed'")[0][0] == n, 60,
                 what="every message acked")
        done.touch()
    got = []
    for c in consumers:
        assert c.popen.wait(60) == 0, c.output()
        got.append(lines(c)[-1]["got"])
    assert sorted(got[0] + got[1]) == list(range(n))  # each once: no loss, no duplicate
    assert got[0] and got[1], "both processes should have consumed"
    for bodies in got:
        assert bodies == sorted(bodies)  # each process sees its share in publish order


def test_requeue_in_one_process_is_delivered_in_another(env: Env) -> None:
    with Connection(env.url) as conn:
        conn.SimpleQueue("jobs").put({"job": 1})
    first = run_py(env, """
        with Connection(URL) as conn:
            q = conn.SimpleQueue("jobs")
            m = q.get(timeout=5)
            emit(body=m.payload)
            m.requeue()
    """)
    assert first == [{"body": {"job": 1}}]
    second = run_py(env, """
        with Connection(URL) as conn:
            q = conn.SimpleQueue("jobs")
            m = q.get(timeout=5)
            emit(body=m.payload)
            m.ack()
            try:
                q.get(timeout=0.2)
                emit(extra=True)
            except q.Empty:
                emit(empty=True)
    """)
    assert second == [{"body": {"job": 1}}, {"empty": True}]
    assert env.sql("SELECT state, attempts FROM jobs") == [("completed", 1)]  # the same row, once


def test_ack_and_reject_in_one_process_are_final_for_every_other(env: Env) -> None:
    with Connection(env.url) as conn:
        q = conn.SimpleQueue("final")
        q.put("acked")
        q.put("rejected")
    out = run_py(env, """
        with Connection(URL, transport_options={"max_retries": 0}) as conn:
            q = conn.SimpleQueue("final")
            a = q.get(timeout=5); a.ack()
            r = q.get(timeout=5); r.reject(requeue=False)
            emit(acked=a.payload, rejected=r.payload)
    """)
    assert out == [{"acked": "acked", "rejected": "rejected"}]
    with Connection(env.url) as conn:
        q = conn.SimpleQueue("final")
        with pytest.raises(q.Empty):
            q.get(timeout=0.3)
        assert q.qsize() == 0
    assert env.sql("SELECT state FROM jobs ORDER BY id") == [("completed",), ("dead",)]


def test_message_of_a_killed_consumer_is_redelivered_to_another_process(env: Env) -> None:
    """An unacked message held by a SIGKILLed process comes back once its lease runs out."""
    with Connection(env.url) as conn:
        conn.SimpleQueue("held").put("precious")
    holder = spawn_py(env, "holder", """
        with Connection(URL, transport_options={"visibility_timeout": 1.0}) as conn:
            q = conn.SimpleQueue("held")
            m = q.get(timeout=10)
            emit(holding=m.payload)
            time.sleep(600)
    """)
    wait_for(lambda: lines(holder), 60, what="the holder to take the message")
    assert env.sql("SELECT state FROM jobs") == [("processing",)]
    holder.kill_group()
    with Connection(env.url, transport_options={"visibility_timeout": 1.0}) as conn:
        q = conn.SimpleQueue("held")
        m = wait_for(lambda: _get_or_none(q), 30, interval=0.2, what="the message to come back")
        assert m.payload == "precious"
        m.ack()
    assert env.sql("SELECT state, attempts FROM jobs") == [("completed", 2)]


def _get_or_none(q: Any) -> Any:
    try:
        return q.get(timeout=0.5)
    except q.Empty:
        return None


def test_drain_events_delivers_one_message_per_call(url: str) -> None:
    """kombu's Connection.drain_events waits for *a single event*. kombu.pidbox.Mailbox._collect
    counts one reply per call (``for i in range(limit): drain_events(timeout)``), so when two
    replies are delivered by one call, ``app.control.ping(limit=2)`` / ``inspect(destination=[a, b])``
    wait the whole timeout although both replies arrived."""
    got: list[str] = []
    with Connection(url) as conn:
        queue = Queue("one-by-one")
        with Consumer(conn, [queue], callbacks=[lambda body, m: got.append(body)], no_ack=True):
            producer = Producer(conn)
            producer.publish("a", routing_key=queue.name, declare=[queue])
            producer.publish("b", routing_key=queue.name, declare=[queue])
            conn.drain_events(timeout=5)
            assert got == ["a"]
            conn.drain_events(timeout=5)
            assert got == ["a", "b"]
            with pytest.raises(socket.timeout):
                conn.drain_events(timeout=0.2)


FORK_DURING_WRITE = """
import os, sqlite3, sys, threading, time
from queuectl_kombu import JobStore

path = sys.argv[1]
store = JobStore(path)
store.open()
inside = threading.Event()

def keeper():  # like the housekeeper thread: a short write transaction
    with store.db.write() as conn:
        conn.execute("UPDATE queues SET last_used_at = last_used_at")
        inside.set()
        time.sleep(1.0)

t = threading.Thread(target=keeper)
t.start()
inside.wait()
pid = os.fork()  # like a prefork pool growing or replacing a process meanwhile
if pid == 0:
    time.sleep(1.5)  # the parent's transaction is committed by now
    conn = sqlite3.connect(path, timeout=3, isolation_level=None)  # a new connection
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        print("child: write lock taken", flush=True)
    except sqlite3.OperationalError as exc:
        print(f"child: {exc}", flush=True)
    os._exit(0)
t.join()
os.waitpid(pid, 0)
"""


def test_child_forked_during_a_write_can_write(env: Env) -> None:
    """SQLite keeps lock state per process (shared by all connections to one file); a fork copies
    the parent's in-progress write lock into the child, where no connection will ever release it.
    In a prefork worker this stalls every database write of that pool process (the task_failure
    handler keep_error, tasks that send tasks) for 30 s and then fails."""
    from queuectl_kombu import JobStore

    if env.broker != "sqlite":
        pytest.skip("SQLite's per-process lock state (PostgreSQL: test_postgresql.py forks with connections open)")
    JobStore(str(env.db)).open()
    out = subprocess.run([sys.executable, "-c", FORK_DURING_WRITE, str(env.db)], capture_output=True, text=True,
                         timeout=60, cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "child: write lock taken"
