"""Writers of a SQLite file take turns (turns.py): an flock on the -wal file held from BEGIN
IMMEDIATE to COMMIT, which a waiting writer sleeps on in the kernel; and, SQLite's automatic
checkpoint being off, a WAL that stays bounded all the same: checkpointed by the writers, or by
the housekeeper they wake."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from queuectl_kombu import JobStore, NewJob
from queuectl_kombu.db import CHECKPOINT_BYTES
from queuectl_kombu.notify import ChangeWaiter
from queuectl_kombu.rules import WAL_LIMIT_BYTES

from tests.support.waiting import wait_for

#: A child that opens the file, enters a write transaction, says so, and commits when told.
HOLDER = textwrap.dedent("""
    import sys
    from queuectl_kombu import JobStore, NewJob
    store = JobStore(sys.argv[1])
    with store.db.write() as conn:
        store._insert(conn, [NewJob(queue="held", payload="{}")], False, set())
        print("holding", flush=True)
        sys.stdin.readline()
    print("committed", flush=True)
""")

#: A child that publishes one job and says so.
PUBLISHER = textwrap.dedent("""
    import sys
    from queuectl_kombu import JobStore, NewJob
    JobStore(sys.argv[1]).publish(NewJob(queue="after", payload="{}"))
    print("published", flush=True)
""")


@pytest.fixture
def store(db_path: str) -> Iterator[JobStore]:
    s = JobStore(db_path)
    s.open()  # the file and its -wal file exist from here on
    yield s
    s.close()


def _child(script: str, db_path: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, db_path], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _turn_is_free(db_path: str) -> bool:
    fd = os.open(db_path + "-wal", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # and the flock with it
    return True


def _waits_for_turn(pid: int, db_path: str) -> bool:
    """Whether `pid` is blocked on an flock of the -wal file (/proc/locks: '->' lines)."""
    inode = os.stat(db_path + "-wal").st_ino
    with open("/proc/locks") as f:
        return any("->" in line and " FLOCK " in line and f" {pid} " in line and f":{inode} " in line
                   for line in f)


def _count(store: JobStore, queue: str) -> int:
    return int(store.db.connection().execute("SELECT COUNT(*) FROM jobs WHERE queue = ?", (queue,)).fetchone()[0])


def test_a_writer_holds_the_turn_and_the_next_one_sleeps_on_it(store: JobStore, db_path: str) -> None:
    holder = _child(HOLDER, db_path)
    publisher = None
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        assert not _turn_is_free(db_path)
        publisher = _child(PUBLISHER, db_path)
        # the second writer sleeps on the turn, not in SQLite's busy handler
        wait_for(lambda: _waits_for_turn(publisher.pid, db_path), 30,
                 what="the publisher to wait on the -wal file's flock")
        assert _count(store, "after") == 0
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "committed\n"
        assert publisher.wait(30) == 0
        assert (_count(store, "held"), _count(store, "after")) == (1, 1)
        assert _turn_is_free(db_path)
    finally:
        for child in (holder, publisher):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()


def test_a_writer_killed_in_its_turn_leaves_it_and_the_file_free(store: JobStore, db_path: str) -> None:
    holder = _child(HOLDER, db_path)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        assert not _turn_is_free(db_path)
        os.kill(holder.pid, signal.SIGKILL)
        assert holder.wait(30) == -signal.SIGKILL
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert _turn_is_free(db_path)
    store.publish(NewJob(queue="after", payload="{}"))
    assert (_count(store, "held"), _count(store, "after")) == (0, 1)  # its transaction never committed


def test_a_writer_that_takes_no_turn_is_waited_for(store: JobStore, db_path: str) -> None:
    import sqlite3

    other = sqlite3.connect(db_path, isolation_level=None)  # the sqlite3 shell, say: no turn
    other.execute("BEGIN IMMEDIATE")
    publisher = _child(PUBLISHER, db_path)
    try:
        # the publisher holds the turn (nobody else wants it) and waits in SQLite's busy handler
        wait_for(lambda: not _turn_is_free(db_path), 30, what="the publisher to take its turn")
        assert publisher.poll() is None
        other.execute("ROLLBACK")
        assert publisher.wait(30) == 0
    finally:
        other.close()
        if publisher.poll() is None:
            publisher.kill()
            publisher.wait()
    assert _count(store, "after") == 1


def test_the_wal_stays_bounded_with_no_automatic_checkpoint(store: JobStore, db_path: str) -> None:
    assert store.db.connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    payload = '{"x": "' + "y" * 4000 + '"}'
    largest = 0
    for _ in range(6):  # 6 x 1,000 jobs of 4 KB: about 3 times the WAL's limit, publishes only
        for _ in range(1_000):
            store.publish(NewJob(queue="big", payload=payload))
        largest = max(largest, store.db.wal_size())
    assert largest <= 2 * CHECKPOINT_BYTES + 1024 * 1024
    # claims and acks of a process with no housekeeper checkpoint themselves too
    for _ in range(60):
        jobs = store.claim(["big"], 100, "w1", 60)
        store.ack_many([job.id for job in jobs], "w1", retention=3600)
        largest = max(largest, store.db.wal_size())
    assert _count(store, "big") == 6_000
    assert largest <= WAL_LIMIT_BYTES + 1024 * 1024
    assert Path(db_path).stat().st_size > 6_000 * 4_000  # checkpointed into the file


def test_a_write_to_a_second_file_inside_a_turn_takes_no_second_turn(store: JobStore, tmp_path: Path) -> None:
    # holding one turn while waiting for another could deadlock with a process doing the
    # opposite: flock has no timeout (SQLite's busy handler, which the second write waits in, has)
    other = JobStore(str(tmp_path / "other.db"))
    other.open()
    try:
        with other.db._turns.turn() as alone:
            assert alone
        with store.db.write():
            with other.db._turns.turn() as second:
                assert not second
            other.publish(NewJob(queue="inner", payload="{}"))
        assert _count(other, "inner") == 1
        with other.db._turns.turn() as again:
            assert again
    finally:
        other.close()


def _watched_commit(store: JobStore, monkeypatch: pytest.MonkeyPatch, write: Callable[[], None]) -> ChangeWaiter:
    """A watcher of the file that reads the events of `write`'s COMMIT as they come, as a watcher
    woken by the -wal file's first write may, before the commit is visible to other connections.
    (It is drained right after COMMIT, still inside the writer's turn: every event the COMMIT
    made is gone, as it would be for a watcher that looked a moment sooner.) Returns it."""
    waiter = store.db.change_waiter()
    waiter.drain()
    execute = store.db._execute_locking

    def commit_and_drain(conn: Any, statement: str) -> None:
        execute(conn, statement)
        if statement == "COMMIT":
            waiter.drain()

    monkeypatch.setattr(store.db, "_execute_locking", commit_and_drain)
    write()
    monkeypatch.undo()
    return waiter


def test_a_commit_wakes_a_watcher_that_looked_before_it_was_visible(
        store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite writes a commit's frames to the -wal file, then makes it visible: the end of the
    writer's turn, after the COMMIT, wakes the watchers once more. Without it the watcher above
    slept until the next commit or its 1 s timer (a round trip of 1,000 ms in the bench)."""
    stamp = store.work_stamp()
    waiter = _watched_commit(store, monkeypatch, lambda: store.publish(NewJob(queue="w", payload="{}")))
    try:
        assert waiter.wait(5) is True
        assert store.work_stamp() != stamp  # and what woke it is visible
    finally:
        waiter.close()


def test_a_write_to_a_second_file_inside_a_turn_still_wakes_its_watchers(
        store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = JobStore(str(tmp_path / "other.db"))
    other.open()
    try:
        def nested() -> None:
            with store.db.write():
                other.publish(NewJob(queue="inner", payload="{}"))

        waiter = _watched_commit(other, monkeypatch, nested)
        try:
            assert waiter.wait(5) is True
        finally:
            waiter.close()
    finally:
        other.close()


def test_a_process_with_a_background_checkpointer_only_wakes_it(store: JobStore) -> None:
    wanted = threading.Event()
    done = store.db.checkpoint_in_background(wanted)
    payload = '{"x": "' + "y" * 4000 + '"}'
    try:
        while not wanted.is_set():  # past CHECKPOINT_BYTES: the first write to see it wakes it
            jobs = [store.publish(NewJob(queue="big", payload=payload)) for _ in range(100)]
            claimed = store.claim(["big"], 100, "w1", 60)
            store.ack_many([job.id for job in claimed], "w1", retention=3600)
            assert len(jobs) == len(claimed) == 100
            assert store.db.wal_size() < 4 * CHECKPOINT_BYTES, "nobody woke the checkpointer"
        grown = store.db.wal_size()
        assert grown > CHECKPOINT_BYTES
        for _ in range(3):  # the writers leave the checkpoint to it: the WAL keeps growing
            store.claim(["big"], 1, "w1", 60)
            store.publish(NewJob(queue="big", payload=payload))
        assert store.db.wal_size() > grown
        store.db.checkpoint()  # what the housekeeper does when woken
    finally:
        done()
    wanted.clear()
    for _ in range(2_000):  # on their own again: checkpoints on the writers' path
        store.publish(NewJob(queue="big", payload=payload))
        assert store.db.wal_size() <= WAL_LIMIT_BYTES + 1024 * 1024
    assert not wanted.is_set()


def test_a_worker_s_housekeeper_checkpoints_when_a_write_wakes_it(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import kombu

    from queuectl_kombu import housekeeper

    monkeypatch.setattr(housekeeper, "CHECKPOINT_EVERY", 3600.0)  # no checkpoint on its timer
    store = JobStore.shared(db_path)  # the Database the connection's transport shares
    with kombu.Connection(f"sqlite:///{db_path}") as conn:
        queue = conn.SimpleQueue("start")
        queue.put({"n": 1})
        queue.get(timeout=10).ack()  # a delivery starts the connection's housekeeper
        assert conn.transport._housekeeper is not None and conn.transport._housekeeper.alive()
        before = Path(db_path).stat().st_size  # the jobs reach the file only by a checkpoint
        payload = '{"x": "' + "y" * 4000 + '"}'
        # just past CHECKPOINT_BYTES: not past twice it (a process's own checkpoint) nor past
        # WAL_LIMIT_BYTES (the housekeeper's truncating one on its tick)
        while store.db.wal_size() <= CHECKPOINT_BYTES:
            store.publish(NewJob(queue="big", payload=payload))
        assert store.db.wal_size() < 2 * CHECKPOINT_BYTES
        wait_for(lambda: Path(db_path).stat().st_size > before, 30,
                 what="the housekeeper to checkpoint the WAL into the database file")
        queue.close()


@contextlib.contextmanager
def _inside_a_checkpoint(store: JobStore) -> Iterator[list[tuple[int, int, int]]]:
    """A thread of this process inside a checkpoint of the file (its PRAGMA held by a progress
    handler) until the block ends; yields the list its checkpoint's result goes to."""
    for _ in range(20):  # frames for the checkpoint to copy
        store.publish(NewJob(queue="before", payload="{}"))
    inside, release = threading.Event(), threading.Event()
    checkpointed: list[tuple[int, int, int]] = []

    def hold() -> int:
        inside.set()
        release.wait(30)
        return 0  # go on

    def checkpointer() -> None:
        conn = store.db.connection()  # this thread's own
        conn.set_progress_handler(hold, 1)
        try:
            checkpointed.append(store.db.checkpoint())
        finally:
            conn.set_progress_handler(None, 1)

    ckpt = threading.Thread(target=checkpointer, daemon=True)
    ckpt.start()
    try:
        assert inside.wait(10), "the checkpoint's progress handler never ran"
        yield checkpointed
    finally:
        release.set()
        ckpt.join(30)


def test_a_checkpoint_in_one_thread_does_not_hold_up_the_writes_of_another(store: JobStore) -> None:
    """A worker's housekeeper checkpoints (a copy and two fsyncs) while its event loop claims and
    acks: the claim is not made to wait for the checkpoint to end. The checkpointing thread is held
    inside its PRAGMA until the other thread's publish has committed."""
    published: list[int] = []
    writer = threading.Thread(target=lambda: published.append(store.publish(NewJob(queue="during", payload="{}"))),
                              daemon=True)
    with _inside_a_checkpoint(store) as checkpointed:
        writer.start()
        wait_for(lambda: published, 10, what="a publish while another thread of the process checkpoints")
    writer.join(30)
    assert checkpointed and checkpointed[0][0] == 0, checkpointed  # the checkpoint was not busy
    assert store.get_job(published[0]).queue == "during"


class _WatchedLock:
    """A lock that says when someone first asks for it (then waits for it as the lock would)."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.asked = threading.Event()

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        self.asked.set()
        return bool(self.lock.acquire(*args, **kwargs))

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_fork_waits_for_a_checkpoint_in_another_thread(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child forked while another thread is inside a checkpoint would inherit SQLite's mutexes
    locked: fork() waits for the checkpoint to end (db._before_fork takes the checkpoint's lock).

    The fork is seen waiting through the lock itself, not through sys._current_frames(): on
    CPython 3.11 that call can deadlock its own thread for good (a frame it allocates starts a
    collection that frees a threading.local, which takes the lock the call holds; seen here)."""
    from queuectl_kombu import db

    children: list[int] = []

    def forker() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        children.append(pid)

    fork_thread = threading.Thread(target=forker, daemon=True)
    with _inside_a_checkpoint(store):
        # the checkpoint holds the lock it took; fork() asks for it through the module's name
        watched = _WatchedLock(db._checkpoint_lock)
        monkeypatch.setattr(db, "_checkpoint_lock", watched)
        fork_thread.start()
        wait_for(watched.asked.is_set, 10, what="fork() asking for the checkpoint's lock in db._before_fork",
                 interval=0.01)
        assert not children, "fork() went on while another thread was inside a checkpoint"
    fork_thread.join(30)
    assert len(children) == 1
    _, status = os.waitpid(children[0], 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
