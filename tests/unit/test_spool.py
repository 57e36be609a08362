"""The spool (queuectl_kombu/spool.py): a SQLite file's publishes appended to their publisher's own
file, moved into the jobs table by the next write of any process, each exactly once, whoever is
killed when."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from queuectl_kombu import JobState, JobStore, NewJob
from queuectl_kombu import spool as spool_mod
from queuectl_kombu.publishing import UNIQUE_HEADER, message_rows, publish_message, stored_message
from tests.support.waiting import wait_for

ROOT = str(Path(__file__).resolve().parents[2])


def _job(i: int, queue: str = "q") -> NewJob:
    return NewJob(queue=queue, payload=json.dumps({"n": i}), task_id=f"t-{i}", task_name="tasks.add")


def _files(store: JobStore) -> list[str]:
    assert store.db.spool is not None
    return sorted(n for n in os.listdir(store.db.spool.dir) if n.endswith(".jobs"))


def _task_ids(store: JobStore) -> list[str]:
    return [row[0] for row in store.db.connection().execute("SELECT task_id FROM jobs ORDER BY id")]


@pytest.fixture
def store(sqlite_store: JobStore) -> JobStore:
    """SQLite only (tests/unit/conftest.py)."""
    return sqlite_store


def test_a_spooled_publish_is_in_no_table_until_a_write_moves_it_in(store: JobStore) -> None:
    assert store.publish_spooled([_job(1), _job(2, "other")])
    assert store.db.connection().execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0  # a raw read
    (name,) = _files(store)
    with open(os.path.join(store.db.spool.dir, name)) as f:
        header, line = f.read().splitlines()
    assert json.loads(header)["db"] == store.db.spool.token
    assert [row[0] for row in json.loads(line)] == ["q", "other"]  # one line: one publish, two queues
    assert store.counts()[JobState.PENDING] == 2  # a store read moves it in first
    claimed = store.claim(["q"], 10, "w", 30)
    assert [json.loads(j.payload)["n"] for j in claimed] == [1]
    assert store.db.connection().execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 2


def test_any_text_reads_back_from_the_spool_as_it_was_published(store: JobStore) -> None:
    odd = "t-\u00e9\u4e2d\U0001f600"  # accents, CJK, an emoji
    store.publish_spooled([NewJob(queue="q", payload=json.dumps({"s": odd}, ensure_ascii=False), task_id=odd,
                                  task_name=odd)])
    (job,) = store.claim(["q"], 10, "w", 30)
    assert job.task_id == odd and json.loads(job.payload) == {"s": odd}


def test_text_sqlite_cannot_store_is_refused_at_the_publish_and_never_blocks_the_spool(
        store: JobStore, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(UnicodeEncodeError):  # what the insert itself raises
        store.publish_spooled([NewJob(queue="q", payload="x", task_id="bad-\ud800")])
    assert not os.path.isdir(store.db.spool.dir) or not _files(store)
    store.publish_spooled([_job(1)])
    with open(os.path.join(store.db.spool.dir, _files(store)[0]), "ab") as f:  # a line no publisher of ours writes
        f.write(json.dumps([["q", "x", 0, None, "bad-\ud800", None, None, None, 0.0]]).encode() + b"\n")
    store.publish_spooled([_job(2)])
    with caplog.at_level(logging.WARNING, logger="queuectl_kombu.store"):
        assert [j.task_id for j in store.claim(["q"], 10, "w", 30)] == ["t-1", "t-2"]
    assert "skipping an unreadable publish" in caplog.text


def test_a_claim_moves_the_spool_in_and_takes_it_in_one_write(store: JobStore) -> None:
    for i in range(5):
        store.publish_spooled([_job(i)])
    claimed = store.claim(["q"], 3, "w", 30)
    assert [j.task_id for j in claimed] == ["t-0", "t-1", "t-2"]  # FIFO, as published
    assert store.queue_size("q") == 2
    positions = dict(store.db.connection().execute("SELECT name, position FROM spool WHERE name <> ''"))
    (name,) = _files(store)
    assert positions == {name: os.path.getsize(os.path.join(store.db.spool.dir, name))}


@contextlib.contextmanager
def _turn_held_by_another_process(db_path: str) -> Iterator[None]:
    """Another process holds the file's writers' turn (turns.py: an flock on its -wal file)."""
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, db_path + "-wal"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def test_a_publish_through_kombu_waits_for_no_writer(tmp_path: Path) -> None:
    path = str(tmp_path / "k.db")
    with Connection(f"sqlite:///{path}") as conn:
        queue = conn.SimpleQueue("kq")
        queue.put({"hello": 0})  # the turn is free: written to the database at once
        assert not os.path.exists(path + "-spool")
        with _turn_held_by_another_process(path):
            started = time.monotonic()
            queue.put({"hello": 1})  # another writer has the turn: to the spool, no wait
            assert time.monotonic() - started < 5
            assert len(os.listdir(path + "-spool")) == 1
        assert queue.qsize() == 2
        for n in (0, 1):
            message = queue.get(timeout=5)
            assert message.payload == {"hello": n}
            message.ack()
        queue.close()


def test_a_unique_publish_is_written_at_once_after_the_spooled_ones_of_its_process(store: JobStore) -> None:
    plain = stored_message("e30=", {"id": "a", "task": "x"}, exchange="", routing_key="q", priority=0,
                           correlation_id="a")
    unique = stored_message("e30=", {"id": "b", "task": "x", UNIQUE_HEADER: True}, exchange="", routing_key="q",
                            priority=0, correlation_id="b")
    assert store.publish_spooled(message_rows(plain, ["q"]))  # as when another writer had the turn
    publish_message(store, unique, ["q"])
    assert _task_ids(store) == ["a", "b"]  # its write moved the spooled one in first: order kept
    with pytest.raises(Exception, match="already exists"):
        publish_message(store, unique, ["q"])


_PRODUCER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {root!r})
    from queuectl_kombu import JobStore, NewJob
    from queuectl_kombu import spool
    spool.ROTATE_BYTES = int(sys.argv[4])
    store = JobStore({path!r})
    first, count = int(sys.argv[1]), int(sys.argv[2])
    for i in range(first, first + count):
        store.publish_spooled([NewJob(queue="q", payload=json.dumps({{"n": i}}) + " " * int(sys.argv[3]),
                                      task_id="t-%d" % i)])
        os.write(1, b"%d\\n" % i)  # after the publish returned
""")


def _producer(path: str, first: int, count: int, pad: int = 0, rotate: int = spool_mod.ROTATE_BYTES) -> subprocess.Popen[bytes]:
    code = _PRODUCER.format(root=ROOT, path=path)
    return subprocess.Popen([sys.executable, "-c", code, str(first), str(count), str(pad), str(rotate)],
                            stdout=subprocess.PIPE)


def test_files_rotated_and_left_while_a_consumer_reads_lose_nothing(store: JobStore) -> None:
    """Publishers that start a new file every few lines and exit, while a consumer claims: every
    publish becomes one job (a file closed between the look at its size and the look at its lock
    used to be deleted unread)."""
    procs = [_producer(store.path, k * 10_000, 2_000, pad=200, rotate=4_000) for k in range(3)]
    claimed: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (any(p.poll() is None for p in procs) or store.db.spool.has_new()):
        claimed += [j.task_id for j in store.claim(["q"], 50, "w", 300)]
    for proc in procs:
        assert proc.wait(30) == 0
    while batch := store.claim(["q"], 1000, "w", 300):
        claimed += [j.task_id for j in batch]
    assert len(claimed) == len(set(claimed)) == 6_000
    assert set(claimed) == {f"t-{k * 10_000 + i}" for k in range(3) for i in range(2_000)}


def test_producers_killed_mid_stream_lose_no_returned_publish_and_none_is_moved_in_twice(store: JobStore) -> None:
    path = store.path
    procs = [_producer(path, k * 100_000, 100_000, pad=3000) for k in range(3)]
    # a worker's claims running meanwhile: ingests race with the appends
    claimed: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(claimed) < 300:
        claimed += [j.task_id for j in store.claim(["q"], 50, "w", 300)]
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    returned: set[str] = set()
    for proc in procs:
        out, _ = proc.communicate(timeout=30)
        returned |= {f"t-{int(x)}" for x in out.split()}
    assert len(returned) >= 300
    while batch := store.claim(["q"], 1000, "w", 300):
        claimed += [j.task_id for j in batch]
    assert len(claimed) == len(set(claimed))  # none twice
    assert returned <= set(claimed)  # every publish that returned
    assert len(set(claimed) - returned) <= 3  # at most the one each producer was inside when killed
    store.publish_spooled([_job(0, "again")])
    assert store.claim(["again"], 1, "w", 300)
    assert len(_files(store)) == 1  # ours: the killed publishers' files were read to their end and deleted
    store.publish_spooled([_job(1, "again")])
    assert store.claim(["again"], 1, "w", 300)
    # the rows of the deleted files are forgotten by the next write: ours and the database's number
    assert store.db.connection().execute("SELECT COUNT(*) FROM spool").fetchone()[0] == 2


def test_half_a_line_left_by_a_killed_publisher_is_dropped_with_its_file(store: JobStore, caplog: pytest.LogCaptureFixture) -> None:
    store.publish_spooled([_job(1)])
    (name,) = _files(store)
    spool = store.db.spool
    spool._close()  # as if its process had died: nobody holds the file
    with open(os.path.join(spool.dir, name), "ab") as f:
        f.write(b'[["q","{\\"n\\": 2}",0,nu')  # killed inside write()
    with caplog.at_level(logging.WARNING, logger="queuectl_kombu.spool"):
        assert [j.task_id for j in store.claim(["q"], 10, "w", 30)] == ["t-1"]
    assert "partly written" in caplog.text
    assert _files(store) == []


def test_a_file_left_by_a_replaced_database_is_not_moved_in(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "r.db")
    old = JobStore(path)
    old.open()
    old.publish_spooled([_job(1)])
    old.db.spool._close()
    old.close()
    os.unlink(path)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    new = JobStore(path)
    new.open()
    with caplog.at_level(logging.WARNING, logger="queuectl_kombu.spool"):
        new.publish_spooled([_job(2)])
        assert [j.task_id for j in new.claim(["q"], 10, "w", 30)] == ["t-2"]
    assert "another database" in caplog.text
    assert len(_files(new)) == 1  # its own, still open
    new.close()


def test_a_publisher_starts_a_new_file_past_the_rotation_size_and_the_old_one_goes(
        store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "ROTATE_BYTES", 2000)
    for i in range(30):
        store.publish_spooled([NewJob(queue="q", payload="x" * 200, task_id=f"t-{i}")])
    assert len(_files(store)) > 2
    assert len(store.claim(["q"], 100, "w", 30)) == 30
    assert len(_files(store)) == 1  # the file in use stays


def test_a_forked_child_spools_to_a_file_of_its_own(store: JobStore) -> None:
    store.publish_spooled([_job(1)])
    pid = os.fork()
    if pid == 0:  # the child: publish, and exit at once
        try:
            store.publish_spooled([_job(2)])
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    store.publish_spooled([_job(3)])
    assert len(_files(store)) == 2
    assert sorted(j.task_id for j in store.claim(["q"], 10, "w", 30)) == ["t-1", "t-2", "t-3"]
    assert len(_files(store)) == 1  # the child's: it exited, read to its end, deleted


def test_a_write_that_fails_leaves_no_half_line(tmp_path: Path) -> None:
    """A full disk (here the file-size limit): the publish raises, nothing of it stays."""
    code = textwrap.dedent(f"""
        import json, os, resource, signal, sys
        sys.path.insert(0, {ROOT!r})
        from queuectl_kombu import JobStore, NewJob
        from queuectl_kombu.spool import SpoolError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        store = JobStore({str(tmp_path / 'full.db')!r}); store.open()
        store.publish_spooled([NewJob(queue="q", payload="small", task_id="a")])
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
        try:
            store.publish_spooled([NewJob(queue="q", payload="x" * 100_000, task_id="big")])
        except SpoolError as exc:
            print("refused:", exc)
        store.publish_spooled([NewJob(queue="q", payload="after", task_id="b")])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "refused: cannot write to the spool" in out.stdout
    store = JobStore(str(tmp_path / "full.db"))
    assert [j.task_id for j in store.claim(["q"], 10, "w", 30)] == ["a", "b"]
    store.close()


def test_without_a_writable_directory_publishes_write_the_database(tmp_path: Path) -> None:
    path = str(tmp_path / "ro.db")
    os.makedirs(path + "-spool")
    open(path + "-spool/x", "w").close()
    os.rename(path + "-spool", path + "-spool-moved")
    open(path + "-spool", "w").close()  # a file where the directory should be
    store = JobStore(path)
    store.open()
    assert store.db.spool is None
    publish_message(store, stored_message("e30=", {"id": "a"}, exchange="", routing_key="q", priority=0,
                                          correlation_id="a"), ["q"])
    assert _task_ids(store) == ["a"]
    store.close()


def test_full_synchronous_spools_too(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "full.db"), synchronous="FULL")
    store.open()
    assert store.db.spool is not None and store.db.spool.fsync
    store.publish_spooled([_job(1)])
    assert [j.task_id for j in store.claim(["q"], 10, "w", 30)] == ["t-1"]
    store.close()


def test_a_write_rolled_back_leaves_the_spool_to_be_moved_in_again(store: JobStore) -> None:
    store.publish_spooled([_job(1)])
    with pytest.raises(RuntimeError):
        with store.db.write():
            raise RuntimeError("boom")
    assert store.db.connection().execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
    assert [j.task_id for j in store.claim(["q"], 10, "w", 30)] == ["t-1"]


def test_a_consumer_is_woken_by_a_spooled_publish(store: JobStore) -> None:
    waiter = store.db.change_waiter()
    try:
        assert store.db.spool.make_dir()  # as a consumer does (transport.waiter)
        waiter.watch_publishes(store.db.spool.dir)
        waiter.drain()
        assert not waiter.wait(0.05)
        store.publish_spooled([_job(1)])
        assert waiter.wait(5)
    finally:
        waiter.close()
    wait_for(lambda: store.queue_size("q") == 1, 5, what="the publish to be counted")


def test_a_backlog_is_moved_in_a_slice_per_write_and_whole_before_a_read(
        store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "TAKE_IN_BYTES", 1000)
    for i in range(50):
        store.publish_spooled([NewJob(queue="q", payload="x" * 100, task_id=f"t-{i}")])
    with store.db.write():
        pass  # any write moves in a slice: a short transaction, whatever the backlog
    moved = store.db.connection().execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    assert 0 < moved < 50
    assert store.queue_size("q") == 50  # a reader moves in the rest, slice by slice
    assert _task_ids(store) == [f"t-{i}" for i in range(50)]  # in publication order


def test_spool_files_take_the_database_files_permissions(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    store = JobStore(str(path))
    store.open()
    os.chmod(path, 0o660)
    store.close()
    store = JobStore(str(path))
    old = os.umask(0o077)
    try:
        store.publish_spooled([_job(1)])
    finally:
        os.umask(old)
    (name,) = _files(store)
    assert os.stat(store.db.spool.dir).st_mode & 0o777 == 0o770
    assert os.stat(os.path.join(store.db.spool.dir, name)).st_mode & 0o777 == 0o660
    store.close()


def test_a_file_closed_after_its_size_was_looked_at_is_read_to_its_end_before_it_goes(store: JobStore) -> None:
    """The race a bulk run found: a file read to its end, then its writer adds lines and closes it
    (a rotation) between the look at its size and the look at its lock. Those lines are read."""
    store.publish_spooled([_job(1)])
    assert [j.task_id for j in store.claim(["q"], 10, "w", 30)] == ["t-1"]
    spool = store.db.spool
    stale = spool.sizes()  # as the reader saw the file
    store.publish_spooled([_job(2)])
    spool._close()  # its writer rotates: nobody holds it any more
    positions = dict(store.db.connection().execute("SELECT name, position FROM spool WHERE name <> ''"))
    spool.sizes = lambda **_: stale  # type: ignore[method-assign]  # the look taken before the append
    (chunk,) = spool.read(positions)
    assert [row[4] for row in chunk.rows] == ["t-2"] and chunk.finished
