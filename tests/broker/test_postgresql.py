"""What only a database server can do to a worker: its connections cut by the server
(pg_terminate_backend), the server unreachable while a client publishes, a worker SIGKILLed
while other processes go on against the same database, and a fork with connections open. Real workers, a real PostgreSQL database
of each test's own."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import psycopg
import pytest
from celery.exceptions import OperationalError
from kombu import Connection

import queuectl_kombu  # noqa: F401  (the postgresql:// scheme)
from queuectl_kombu import DatabaseUnreachable, JobStore, NewJob
from tests.support.peers import free_port
from tests.support.waiting import wait_for

from .kit import Env, wait_answering


@pytest.fixture
def pg_env(tmp_path: Path, pg_url: str) -> Iterator[Env]:
    """A broker on a PostgreSQL database of this test's own; its processes stopped after."""
    e = Env(tmp_path, broker="postgresql", pg_url=pg_url)
    yield e
    e.close()


def terminate_sessions(url: str) -> int:
    """End every other session on the database, as a DBA or a failover would; how many."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
    return len(rows)


def test_a_worker_whose_connections_are_cut_reconnects_and_loses_nothing(pg_env: Env) -> None:
    worker = pg_env.worker("w1", pool=("-P", "prefork", "-c", "2"))
    app = pg_env.app()
    wait_answering(worker, app)
    before = [app.send_task("b.record", args=(f"before-{i}",)).id for i in range(20)]
    wait_for(lambda: {r.task_id for r in pg_env.runs("run")} >= set(before), 60, what="the first tasks to run")

    assert terminate_sessions(pg_env.url) > 0
    after = [app.send_task("b.record", args=(f"after-{i}",)).id for i in range(50)]
    wait_for(lambda: {r.task_id for r in pg_env.runs("run")} >= set(after), 60, interval=0.1,
             what="the tasks published after the cut to run", on_fail=worker.tail)

    runs = Counter(r.task_id for r in pg_env.runs("run"))
    assert {t: n for t, n in runs.items() if n > 1} == {}  # nothing was in flight: each ran once
    assert set(runs) == set(before) | set(after)
    assert pg_env.sql("SELECT state, COUNT(*) FROM jobs WHERE queue = 'celery' GROUP BY state") == [("completed", 70)]
    assert "reconnecting" in worker.output() or "Connection to broker lost" in worker.output()
    wait_answering(worker, app)  # its remote control came back too


@contextlib.contextmanager
def proxy(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A TCP relay 127.0.0.1:port -> the test server (socat), stopped by its process group."""
    relay = subprocess.Popen(
        ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "TCP:127.0.0.1:5432"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def listening() -> bool:
            with contextlib.closing(socket.socket()) as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0
        wait_for(listening, 10, what="socat to listen")
        yield relay
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(relay.pid, signal.SIGKILL)
        relay.wait(10)


def test_a_publish_while_the_server_is_unreachable_fails_loudly_then_goes_through(pg_url: str) -> None:
    """The server goes away between two publishes (the relay to it is killed): the publish raises
    a connection error naming the server once kombu's retries are spent, and is not in the
    database; once the server is back the same connection publishes again. Nothing is dropped
    in silence."""
    if not shutil.which("socat"):
        pytest.skip("socat is not installed (the relay that plays the outage)")
    port = free_port()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{port}")
    with Connection(url) as conn:
        with proxy(port):
            queue = conn.SimpleQueue("outage")
            queue.put("first")
        # the relay is gone: every connection to the server through it is cut
        with pytest.raises((OperationalError, DatabaseUnreachable, psycopg.OperationalError)) as failed:
            producer = conn.Producer()
            publish = conn.ensure(producer, producer.publish, max_retries=2, interval_start=0.1, interval_step=0.1)
            publish("lost?", routing_key="outage", exchange="")
        assert f"127.0.0.1:{port}" in str(failed.value) or "connection" in str(failed.value).lower()
        with proxy(port):
            producer = conn.Producer()
            publish = conn.ensure(producer, producer.publish, max_retries=5, interval_start=0.1, interval_step=0.2)
            publish("second", routing_key="outage", exchange="")
    assert len(JobStore(pg_url).list_jobs()) == 2  # the failed publish left no row
    with Connection(pg_url) as conn:
        queue = conn.SimpleQueue("outage")
        got = [queue.get(timeout=10) for _ in range(2)]
        assert [m.payload for m in got] == ["first", "second"]
        for m in got:
            m.ack()


def test_a_sigkilled_worker_s_tasks_run_on_another_after_the_lease(pg_env: Env) -> None:
    """acks_late tasks held by a worker killed with SIGKILL come back to a live worker once their
    lease runs out (2 s here), each counted as a second attempt; none is lost."""
    pg_env.conf = {"task_acks_late": True, "worker_prefetch_multiplier": 1,
                   "broker_transport_options": {"visibility_timeout": 2.0}}
    victim = pg_env.worker("victim", pool=("-P", "prefork", "-c", "2"))
    app = pg_env.app()
    wait_answering(victim, app)
    tags = [f"long-{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    ids = [app.send_task("b.sleepy", args=(tag, 30.0)).id for tag in tags]
    wait_for(lambda: {r.task_id for r in pg_env.runs("start")} >= set(ids), 60, what="both tasks to start")
    victim.kill_group()
    survivor = pg_env.worker("survivor", pool=("-P", "prefork", "-c", "2"))
    wait_answering(survivor, app)
    # the survivor recovers the expired leases and runs both again (the victim's runs never ended:
    # a second start of each is the redelivery)
    wait_for(lambda: Counter(r.task_id for r in pg_env.runs("start")) == Counter({i: 2 for i in ids}), 60,
             interval=0.1, what="both tasks to start again on the survivor", on_fail=survivor.tail)
    rows = pg_env.sql("SELECT task_id, state, attempts, last_error FROM jobs WHERE task_name = 'b.sleepy' ORDER BY id")
    assert [(t, s, a) for t, s, a, _ in rows] == [(i, "processing", 2) for i in ids]
    # recovered by a housekeeper (the survivor's or the test's client's), which says whose lease ran out
    assert all(e.startswith("lease of ") and e.endswith(" expired") for *_, e in rows), rows


def _publish_in_child(store: JobStore, done: Any) -> None:
    # the parent's store and connections, inherited: the child opens its own, and its exit
    # (finalisers and all) must not end the parent's session
    store.publish_many([NewJob(queue="fork", payload="{}", task_id="child")])
    from queuectl_kombu import postgres
    assert postgres._abandoned  # the parent's connection, kept aside
    for inherited in postgres._abandoned:
        inherited.close()  # what a finaliser at the child's exit would do: harmless on /dev/null
    done.set()


def test_a_forked_child_never_uses_or_ends_its_parents_connection(pg_url: str) -> None:
    store = JobStore(pg_url)
    store.publish_many([NewJob(queue="fork", payload="{}", task_id="parent-1")])
    session = store.db.connection().execute("SELECT pg_backend_pid()").fetchone()[0]
    context = multiprocessing.get_context("fork")
    done = context.Event()
    child = context.Process(target=_publish_in_child, args=(store, done))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and done.is_set()
    # the same session still serves the parent: the child neither wrote on it nor closed it
    assert store.db.connection().execute("SELECT pg_backend_pid()").fetchone()[0] == session
    store.publish_many([NewJob(queue="fork", payload="{}", task_id="parent-2")])
    assert [j.task_id for j in store.list_jobs()] == ["parent-1", "child", "parent-2"]
    store.close()


def _claim_plan(store: JobStore) -> str:
    from queuectl_kombu import postgres
    from queuectl_kombu.sql import QUERIES

    text = postgres.translate(QUERIES["claim"]).replace("%(queue)s", "'q'").replace("%(now)s", "1e12")
    text = text.replace("%(limit)s", "10").replace("%(owner)s", "'w'").replace("%(lease_expires_at)s", "1e12")
    return " ".join(str(r[0]) for r in store.db.connection().raw.execute("EXPLAIN " + text).fetchall())


def test_the_planner_statistics_are_kept_without_autovacuum(pg_url: str) -> None:
    """The housekeeper's keep_statistics analyzes the jobs table once enough of it changed
    (autovacuum is off on this server, as the bench found: a claim then sorted all 17,000 waiting
    rows, 66 ms, instead of reading jobs_ready in order, 0.2 ms), and not again until more did."""
    store = JobStore(pg_url)
    store.publish_many([NewJob(queue="q", payload="{}") for _ in range(5000)])
    wait_for(lambda: store.db.connection().execute(
        "SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relid = to_regclass('jobs')"
    ).fetchone()[0] >= 5000, 10, what="the server's counts to show the inserts")
    assert store.keep_statistics() is True
    assert store.keep_statistics() is False  # nothing changed since
    plan = _claim_plan(store)
    assert "Index Scan using jobs_ready" in plan and "Sort" not in plan, plan
    store.close()


def test_the_event_loop_watches_the_listener_again_after_it_reconnects(pg_url: str) -> None:
    """The server ends the Listener's session: its next drain connects again, and the event loop
    watches the new socket, even when it got the old one's descriptor number (it usually does)."""
    from kombu.asynchronous import Hub

    from queuectl_kombu.loop import LoopLink

    store = JobStore(pg_url)
    store.open()
    listener = store.db.change_waiter()
    hub = Hub()
    link = LoopLink(lambda: None, lambda: [])
    link.register(hub, listener, 0.01)
    try:
        assert listener.fileno() in hub.readers
        generation = listener.generation
        backend = listener._raw.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        wait_for(lambda: listener.drain() and listener.generation > generation, 10,
                 what="the Listener to notice and connect again")
        link.watch(listener)
        assert listener.fileno() in hub.readers
        assert hub.readers[listener.fileno()][0] is link.on_change
        store.publish_many([NewJob(queue="q", payload="{}")])  # and it hears the next commit
        assert listener.wait(10) is True
    finally:
        link.unregister()
        link.close()
        hub.close()
        listener.close()
        store.close()


def test_result_keys_compare_in_byte_order(pg_url: str) -> None:
    """A chord counter's part marks are found by a range of keys around char(31): the results'
    key is in the C collation, whatever the database's (en_US would ignore control characters)."""
    store = JobStore(pg_url)
    store.open()
    (collation,) = store.db.connection().execute(
        "SELECT collation_name FROM information_schema.columns "
        "WHERE table_schema = 'queuectl' AND table_name = 'results' AND column_name = 'key'"
    ).fetchone()
    assert collation == "C"
    store.close()


def test_a_listener_its_thread_left_idle_is_drained_by_the_keeper(pg_url: str) -> None:
    """A thread that took a change stamp once (a dashboard thread, a web thread after one
    result.get()) keeps a LISTEN session it never reads: the keeper drains it once it has been
    idle for KEEP_IDLE, so the server's shared notification queue keeps moving; a Listener in use
    (its thread waiting on it) is left alone."""
    import threading

    from queuectl_kombu import postgres

    store = JobStore(pg_url)
    idle: list[Any] = []
    worker = threading.Thread(target=lambda: idle.append(store.db.thread_waiter()) or store.change_stamp())
    worker.start()
    worker.join(10)
    (listener,) = idle
    busy = store.db.change_waiter()
    before = listener.count
    store.publish_many([NewJob(queue="q", payload="{}")])
    wait_for(lambda: select_readable(listener.fileno()), 10, what="the notification to reach the idle listener")
    # (other tests' listeners in this process may be idle long enough: only these two are looked at)
    postgres.keep_listeners(now=time.monotonic())
    assert listener.count == before  # not idle long enough yet
    with busy._lock:  # its thread is inside wait(): the keeper must not touch it
        postgres.keep_listeners(now=time.monotonic() + postgres.KEEP_IDLE + 1)
        assert listener.count == before + 1
        assert busy.count == 0
    busy.close()
    store.close()


def select_readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])


def test_a_workers_writes_skip_the_wal_flush_and_publishes_wait_for_it(pg_url: str) -> None:
    """write(durable=False), a worker's claims, acks and results: synchronous_commit off for that
    transaction only; every other write waits for the flush (a publish that returned survives a
    server crash)."""
    store = JobStore(pg_url)
    show = "SELECT current_setting('synchronous_commit')"
    with store.db.write(durable=False) as conn:
        assert conn.execute(show).fetchone()[0] == "off"
    with store.db.write() as conn:
        assert conn.execute(show).fetchone()[0] == "on"
    assert store.db.connection().execute(show).fetchone()[0] == "on"
    store.close()
