"""enqueue_in: messages written through the application's connection commit or roll back with
its data, on both engines; workers see them, and are woken, only after the commit."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, chain, group

from queuectl_kombu import InvalidInput, JobStore, enqueue_in, install_schema
from tests.support.waiting import wait_for

from .conftest import Queue


def test_a_commit_publishes_the_messages_with_the_data(queue: Queue, producer: Celery) -> None:
    conn = queue.connect()
    conn.execute(f"INSERT INTO orders (id) VALUES ({queue.mark})", (1,))
    with enqueue_in(conn):
        producer.send_task("orders.confirm", (1,))
        producer.signature("orders.confirm").delay(1)
    assert queue.jobs() == 0, "another connection saw messages of an open transaction"
    conn.commit()
    assert queue.jobs() == 2
    assert queue.orders() == {1}
    conn.close()


def test_a_rollback_publishes_nothing(queue: Queue, producer: Celery) -> None:
    conn = queue.connect()
    conn.execute(f"INSERT INTO orders (id) VALUES ({queue.mark})", (1,))
    with enqueue_in(conn):
        producer.send_task("orders.confirm", (1,))
    conn.rollback()
    assert queue.jobs() == 0
    assert queue.orders() == set()
    # the connection goes on working, and the next transaction publishes
    conn.execute(f"INSERT INTO orders (id) VALUES ({queue.mark})", (2,))
    with enqueue_in(conn):
        producer.send_task("orders.confirm", (2,))
    conn.commit()
    assert queue.jobs() == 1
    conn.close()


def test_an_exception_inside_the_block_rolls_everything_back(queue: Queue, producer: Celery) -> None:
    conn = queue.connect()
    with pytest.raises(RuntimeError, match="payment refused"):
        with conn:  # sqlite3 and psycopg alike: commit on success, roll back on an exception
            conn.execute(f"INSERT INTO orders (id) VALUES ({queue.mark})", (1,))
            with enqueue_in(conn):
                producer.send_task("orders.confirm", (1,))
                raise RuntimeError("payment refused")
    assert queue.jobs() == 0
    assert queue.orders() == set()


def test_nested_savepoints_keep_or_drop_their_own_messages(queue: Queue, producer: Celery) -> None:
    conn = queue.connect()
    conn.execute(f"INSERT INTO orders (id) VALUES ({queue.mark})", (1,))
    with enqueue_in(conn):
        producer.send_task("orders.confirm", (1,), task_id="outer")
        conn.execute("SAVEPOINT gift")
        producer.send_task("orders.confirm", (2,), task_id="dropped")
        conn.execute("ROLLBACK TO SAVEPOINT gift")  # the application drops its inner step
        conn.execute("RELEASE SAVEPOINT gift")
        conn.execute("SAVEPOINT wrap")
        producer.send_task("orders.confirm", (3,), task_id="kept")
        conn.execute("RELEASE SAVEPOINT wrap")
    conn.commit()
    conn.close()
    assert queue.task_ids() == ["kept", "outer"]


def test_a_failed_publish_rolls_back_only_its_own_savepoint(queue: Queue, producer: Celery) -> None:
    from queuectl_kombu import UNIQUE_HEADER, DuplicateJob

    conn = queue.connect()
    conn.execute(f"INSERT INTO orders (id) VALUES ({queue.mark})", (1,))
    with enqueue_in(conn):
        producer.send_task("orders.confirm", (1,), task_id="confirm-1")
        with pytest.raises(DuplicateJob):
            producer.send_task("orders.confirm", (1,), task_id="confirm-1", headers={UNIQUE_HEADER: True})
    conn.commit()
    assert queue.jobs() == 1
    assert queue.orders() == {1}
    conn.close()


def test_canvas_and_apply_async_go_through_the_application_connection(queue: Queue, producer: Celery) -> None:
    confirm = producer.signature("orders.confirm")
    conn = queue.connect()
    with enqueue_in(conn):
        group(confirm.clone((i,)) for i in range(3)).apply_async()
        chain(confirm.clone((10,)), confirm.clone((11,), immutable=True)).apply_async()  # the chain's first task is sent
        confirm.clone((12,)).apply_async(countdown=60)
    assert queue.jobs() == 0
    conn.rollback()
    assert queue.jobs() == 0
    with enqueue_in(conn):
        group(confirm.clone((i,)) for i in range(3)).apply_async()
        chain(confirm.clone((10,)), confirm.clone((11,), immutable=True)).apply_async()
        confirm.clone((12,)).apply_async(countdown=60)
    conn.commit()
    assert queue.jobs() == 5
    conn.close()


def test_an_autocommit_connection_commits_each_publish(queue: Queue, producer: Celery) -> None:
    if queue.is_postgres:
        import psycopg

        conn: Any = psycopg.connect(queue.target, autocommit=True)
    else:
        conn = sqlite3.connect(queue.target, isolation_level=None)
    with enqueue_in(conn):
        producer.send_task("orders.confirm", (1,))
        assert queue.jobs() == 1
    assert not (conn.in_transaction if isinstance(conn, sqlite3.Connection) else conn.info.transaction_status)
    conn.close()


def test_a_sqlalchemy_session_commits_or_rolls_back_its_messages(queue: Queue, producer: Celery) -> None:
    sa = pytest.importorskip("sqlalchemy")
    from sqlalchemy.orm import Session

    url = queue.target.replace("postgresql://", "postgresql+psycopg://", 1) if queue.is_postgres \
        else f"sqlite:///{queue.target}"
    engine = sa.create_engine(url)
    try:
        with Session(engine) as session:
            session.execute(sa.text("INSERT INTO orders (id) VALUES (1)"))
            with enqueue_in(session):
                producer.send_task("orders.confirm", (1,))
            session.rollback()
        assert (queue.jobs(), queue.orders()) == (0, set())
        with Session(engine) as session, session.begin():
            session.execute(sa.text("INSERT INTO orders (id) VALUES (2)"))
            with enqueue_in(session):
                producer.send_task("orders.confirm", (2,))
            assert queue.jobs() == 0
        assert (queue.jobs(), queue.orders()) == (1, {2})
        with engine.begin() as connection:  # a Connection, not a Session
            connection.execute(sa.text("INSERT INTO orders (id) VALUES (3)"))
            with enqueue_in(connection):
                producer.send_task("orders.confirm", (3,))
        assert (queue.jobs(), queue.orders()) == (2, {2, 3})
    finally:
        engine.dispose()


def test_workers_see_the_message_only_after_the_commit(queue: Queue, producer: Celery, start_worker: Any) -> None:
    worker = start_worker()
    conn = queue.connect()
    conn.execute(f"INSERT INTO orders (id) VALUES ({queue.mark})", (7,))
    with enqueue_in(conn):
        producer.send_task("orders.confirm", (7,))
    # the worker is up and waiting: what it can see is what another connection sees
    assert queue.jobs() == 0 and queue.ran() == []
    conn.commit()
    conn.close()
    wait_for(lambda: queue.ran() == [7], 30, what="orders.confirm(7) to run once after the commit",
             on_fail=worker.tail)


def test_bad_connections_get_a_clear_error(queue: Queue, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="takes a sqlite3 or psycopg connection"):
        with enqueue_in(object()):
            pass
    other = sqlite3.connect(tmp_path / "app.db")
    with pytest.raises(InvalidInput, match="has no queuectl database open"):
        with enqueue_in(other):
            pass
    other.close()


def test_a_queue_file_attached_to_the_application_file(tmp_path: Path) -> None:
    queue_file, app_file = tmp_path / "queue.db", tmp_path / "app.db"
    install_schema(queue_file)
    producer = Celery("producer", broker=f"sqlite:///{queue_file}")
    conn = sqlite3.connect(app_file)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.execute("ATTACH DATABASE ? AS queue", (str(queue_file),))
    conn.execute("INSERT INTO orders (id) VALUES (1)")
    with enqueue_in(conn):
        producer.send_task("orders.confirm", (1,))
    conn.rollback()
    assert conn.execute("SELECT COUNT(*) FROM queue.jobs").fetchone()[0] == 0
    conn.execute("INSERT INTO orders (id) VALUES (2)")
    with enqueue_in(conn):
        producer.send_task("orders.confirm", (2,))
    conn.commit()
    check = sqlite3.connect(queue_file)
    assert check.execute("SELECT COUNT(*) FROM jobs WHERE task_name = 'orders.confirm'").fetchone()[0] == 1
    check.close()
    # a table of the application named like one of the queue's would hide it: refused
    conn.execute("CREATE TABLE main.jobs (x)")
    conn.commit()
    with pytest.raises(InvalidInput, match="hidden by the table"):
        with enqueue_in(conn):
            pass
    conn.close()
    producer.close()


def test_install_schema_adopts_an_application_file_others_refuse(tmp_path: Path) -> None:
    from queuectl_kombu import DatabaseUnusable

    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseUnusable, match="queuectl --db .* init"):
        JobStore(str(path)).open()
    install_schema(path)
    JobStore(str(path)).open()
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert {"orders", "jobs", "results"} <= tables


def test_django_atomic_blocks_commit_or_roll_back_their_messages(queue: Queue, tmp_path: Path) -> None:
    pytest.importorskip("django")
    from tests.support.processes import run

    from .conftest import APPS

    done = run([sys.executable, str(APPS / "django_orders.py")], env=queue.env(), timeout=60, cwd=tmp_path)
    assert done.returncode == 0 and "done" in done.stdout, done.stderr
    assert queue.orders() == {1, 3, 5}
    assert queue.task_ids() == ["django-1", "django-3", "django-5"]


def test_the_commit_wakes_the_waiters(queue: Queue, producer: Celery) -> None:
    """What a waiting worker waits on (inotify on the -wal file; the Listener's NOTIFY) fires at
    the application's commit. On PostgreSQL the server delivers the NOTIFY of the publish only
    then: a listener has nothing before it."""
    store = JobStore(queue.target)
    conn = queue.connect()
    producer.send_task("orders.confirm", (0,))  # connected and declared: the next publish is the job alone
    # listening from here on: what committed before (the line above) is never delivered to it
    waiter = store.db.change_waiter()
    try:
        with enqueue_in(conn):
            producer.send_task("orders.confirm", (1,))
        if queue.is_postgres:
            assert not waiter.drain(), "a notification left before the commit"
        conn.commit()
        assert waiter.wait(10), "the commit woke no waiter"
    finally:
        conn.close()
        waiter.close()
        store.close()


def test_declarations_rolled_back_with_the_application_are_made_again(queue: Queue) -> None:
    """A topic exchange and its binding, first declared by a publish inside the block, are rolled
    back with the application on SQLite (committed at once on PostgreSQL): the next publish
    still reaches the queue (kombu's cache of declared entities is forgotten at the block's end)."""
    from kombu import Exchange
    from kombu import Queue as KombuQueue

    app = Celery("router", broker=queue.url)
    mail = KombuQueue("mail", Exchange("mail", type="topic"), routing_key="mail.#")
    app.conf.task_queues = [mail]
    app.conf.task_routes = {"orders.confirm": {"queue": "mail", "routing_key": "mail.confirm"}}
    try:
        conn = queue.connect()
        with enqueue_in(conn):
            app.send_task("orders.confirm", (1,), task_id="rolled-back")
        conn.rollback()
        conn.close()
        app.send_task("orders.confirm", (2,), task_id="after")
        store = JobStore(queue.target)
        placed = {j.task_id: j.queue for j in store.list_jobs(jobs_only=True)}
        store.close()
        assert placed == {"after": "mail"}
    finally:
        app.close()


def test_a_publish_to_another_database_inside_the_block_is_refused(queue: Queue, tmp_path: Path) -> None:
    """Inside enqueue_in every publish must join the application's transaction: one to a queue
    elsewhere (another file; a SQLite queue while the connection is PostgreSQL's) would commit on
    its own, so it is refused, and nothing of it is written."""
    other = tmp_path / "other.db"
    install_schema(other)
    app = Celery("elsewhere", broker=f"sqlite:///{other}")
    conn = queue.connect()
    try:
        with enqueue_in(conn):
            with pytest.raises(InvalidInput, match="would not be part of the application's transaction"):
                app.send_task("orders.confirm", (1,))
        conn.rollback()
        store = JobStore(str(other))
        assert store.list_jobs(jobs_only=True) == []
        store.close()
    finally:
        conn.close()
        app.close()


def test_another_thread_waiting_for_the_file_does_not_stall_the_block(queue: Queue, producer: Celery) -> None:
    """SQLite: while the application's transaction holds the file's write lock, another thread of
    the process publishing on its own waits for it; the block's own publish must not wait for
    that thread in turn (it would, for the busy timeout, under the process's write lock)."""
    if queue.is_postgres:
        pytest.skip("SQLite's file-wide write lock")
    import threading

    from queuectl_kombu import db as dbmod

    producer.send_task("orders.confirm", (0,))  # connected and declared
    conn = sqlite3.connect(queue.target, timeout=30, check_same_thread=False)
    conn.execute("INSERT INTO orders (id) VALUES (1)")  # the application holds the write lock
    other: dict[str, Any] = {}

    def publish_on_its_own() -> None:
        try:
            producer.send_task("orders.confirm", (2,))
            other["done"] = True
        except Exception as exc:  # noqa: BLE001 - reported below
            other["error"] = exc

    thread = threading.Thread(target=publish_on_its_own)
    thread.start()

    def other_thread_waits_under_the_process_lock() -> bool:
        if dbmod._write_lock.acquire(blocking=False):
            dbmod._write_lock.release()
            return False
        return True

    wait_for(other_thread_waits_under_the_process_lock, 10, what="the other thread to wait for the file")
    block: dict[str, Any] = {}

    def publish_in_the_block() -> None:  # in a thread, so that a stall is seen before the busy timeout (30 s)
        with enqueue_in(conn):
            producer.send_task("orders.confirm", (1,))
        block["done"] = True

    mine = threading.Thread(target=publish_in_the_block)
    mine.start()
    wait_for(lambda: block.get("done"), 10, what="the block's publish (it waits for the other thread's busy timeout)")
    mine.join(30)
    assert "done" not in other and "error" not in other  # still waiting for the application's commit
    conn.commit()
    conn.close()
    thread.join(20)
    assert other == {"done": True}
    assert queue.jobs() == 3


def test_an_attached_queue_beside_an_application_autoincrement_table(tmp_path: Path) -> None:
    """The application's own sqlite_sequence (an AUTOINCREMENT table) must not hide the queue's:
    a message routed to two queues gets both ids right."""
    from kombu import Exchange
    from kombu import Queue as KombuQueue

    queue_file, app_file = tmp_path / "queue.db", tmp_path / "app.db"
    install_schema(queue_file)
    app = Celery("fanout", broker=f"sqlite:///{queue_file}")
    fan = Exchange("fan", type="fanout")
    with app.connection_for_write() as connection:  # two queues bound to one fanout exchange
        for name in ("a", "b"):
            KombuQueue(name, fan, channel=connection.default_channel).declare()
    conn = sqlite3.connect(app_file)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, note TEXT)")
    conn.execute("INSERT INTO orders (note) VALUES ('x')")
    conn.commit()
    conn.execute("ATTACH DATABASE ? AS queue", (str(queue_file),))
    conn.execute("INSERT INTO orders (note) VALUES ('y')")
    with enqueue_in(conn), app.producer_or_acquire() as producer:
        producer.publish({"n": 1}, exchange=fan, routing_key="", headers={"id": "fanned"}, serializer="json")
    conn.commit()
    conn.close()
    store = JobStore(str(queue_file))
    jobs = sorted((j.queue, j.id) for j in store.list_jobs(jobs_only=True) if j.task_id == "fanned")
    store.close()
    app.close()
    assert [q for q, _ in jobs] == ["a", "b"] and len({i for _, i in jobs}) == 2


def test_postgresql_lent_publishes_count_in_rows_of_their_own(queue: Queue, producer: Celery) -> None:
    """The stats count of a publish inside the block goes to a row of the application session's
    own (shard 16 + its pid): a worker's ack never waits for an open application transaction."""
    if not queue.is_postgres:
        pytest.skip("PostgreSQL's stats shards")
    conn = queue.connect()
    with enqueue_in(conn):
        producer.send_task("orders.confirm", (1,))
    pid = conn.info.backend_pid
    conn.commit()
    conn.close()
    shards = {int(r) for r in [queue.scalar("SELECT string_agg(shard::text, ',') FROM queuectl.stats "
                                            "WHERE event = 'published'")] for r in str(r).split(",")}
    assert 16 + pid in shards


def test_postgresql_an_application_temp_table_named_jobs_hides_nothing(queue: Queue, producer: Celery) -> None:
    if not queue.is_postgres:
        pytest.skip("PostgreSQL's pg_temp on the search path")
    conn = queue.connect()
    conn.execute("CREATE TEMP TABLE jobs (x int)")
    with enqueue_in(conn):
        producer.send_task("orders.confirm", (1,))
    conn.commit()
    assert conn.execute("SELECT COUNT(*) FROM pg_temp.jobs").fetchone()[0] == 0
    conn.close()
    assert queue.jobs() == 1


def test_postgresql_unique_task_ids_need_read_committed(queue: Queue, producer: Celery) -> None:
    from queuectl_kombu import UNIQUE_HEADER

    if not queue.is_postgres:
        pytest.skip("PostgreSQL's isolation levels")
    conn = queue.connect()
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    with enqueue_in(conn):
        with pytest.raises(InvalidInput, match="needs a READ COMMITTED transaction"):
            producer.send_task("orders.confirm", (1,), task_id="u-1", headers={UNIQUE_HEADER: True})
        producer.send_task("orders.confirm", (2,), task_id="plain")  # without the header: fine
    conn.commit()
    conn.close()
    assert queue.task_ids() == ["plain"]


def test_a_publish_from_another_thread_with_the_same_context_is_not_lent(queue: Queue, producer: Celery) -> None:
    """contextvars are copied into asyncio.to_thread's thread: the block still belongs to the
    thread that entered it, and the application's connection is never used from another."""
    import contextvars
    import threading

    conn = queue.connect()
    seen: dict[str, Any] = {}
    with enqueue_in(conn):
        from queuectl_kombu import enqueue

        context = contextvars.copy_context()
        thread = threading.Thread(target=lambda: seen.setdefault("loan", context.run(enqueue.current)))
        thread.start()
        thread.join(10)
    conn.rollback()
    conn.close()
    assert seen == {"loan": None}
