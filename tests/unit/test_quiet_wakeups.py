"""What a worker's wake-ups cost on a SQLite file: its looks at the spool read the directory again
only after something in it changed (an inotify watch of the spool's own), its own claims and acks
do not make it look for work again, and its housekeeper's checkpoints let the WAL restart from its
beginning instead of growing until a TRUNCATE stops every writer (issue 19)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from kombu import Connection, Consumer, Queue

from queuectl_kombu import JobStore, NewJob
from queuectl_kombu.db import CHECKPOINT_BYTES
from queuectl_kombu.notify import DirWatch
from queuectl_kombu.rules import WAL_LIMIT_BYTES
from tests.support.waiting import wait_for

ROOT = str(Path(__file__).resolve().parents[2])


def _job(i: int, queue: str = "q") -> NewJob:
    return NewJob(queue=queue, payload=json.dumps({"n": i}), task_id=f"t-{i}", task_name="tasks.add")


def _run(code: str, *args: str) -> None:
    """`code` in a new Python process (the repository on its path), which must succeed."""
    subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, check=True, timeout=60,
                   env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.fixture
def store(sqlite_store: JobStore) -> JobStore:
    """SQLite only (tests/unit/conftest.py)."""
    return sqlite_store


def test_a_dir_watch_reports_a_write_once_and_then_nothing(tmp_path: Path) -> None:
    watch = DirWatch(str(tmp_path))
    assert watch.active
    assert not watch.changed()
    with open(tmp_path / "f", "ab") as f:
        f.write(b"x")
    assert watch.changed()
    assert not watch.changed()  # read: reported once
    (tmp_path / "f").unlink()
    assert watch.changed()
    watch.close()
    assert not watch.active and watch.changed()  # no watch: always "changed"


def test_a_forked_child_never_reads_its_parents_dir_events(store: JobStore) -> None:
    spool = store.db.spool
    assert spool is not None and spool.make_dir()
    spool.watch()
    watch = spool._watch
    assert watch is not None and watch.active and not watch.changed()
    store.publish_spooled([_job(1)])  # an event waits in the parent's queue
    pid = os.fork()
    if pid == 0:  # the child: its copy says "changed" without reading; its spool dropped the watch
        os._exit(0 if (not watch.active and watch.changed() and spool._watch is None) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert watch.changed()  # still the parent's to read
    assert not watch.changed()


def test_a_watched_spool_sees_every_publish_another_process_spools(store: JobStore) -> None:
    spool = store.db.spool
    assert spool is not None and spool.make_dir()
    spool.watch()
    assert not spool.has_new()
    for i in range(3):  # each a publish of another process, spooled while a writer has the turn
        _run("""
            import sys
            from queuectl_kombu import JobStore, NewJob
            s = JobStore(sys.argv[1])
            assert s.publish_spooled([NewJob(queue="q", payload="{}", task_id="p-" + sys.argv[2])])
            """, store.path, str(i))
        assert spool.has_new()  # the cached listing is not trusted after a change
        assert [j.task_id for j in store.claim(["q"], 10, "w", 30)] == [f"p-{i}"]
        assert not spool.has_new()


def test_own_claims_and_acks_leave_the_work_stamp_and_work_moves_it(store: JobStore) -> None:
    """A worker's own claim or ack brings no work: after one, its next wake-up (the commit's own
    inotify event) finds the same work stamp and looks for nothing. A publish, a requeue and a
    spooled publish moved in by a claim are work."""
    db = store.db
    store.publish_many([_job(1), _job(2)])
    stamp, work = store.work_stamp(), db.work_commits
    (job,) = store.claim(["q"], 1, "w", 30)
    assert not store.ack_many([job.id], "w")
    assert (store.work_stamp(), db.work_commits) == (stamp, work)
    (job,) = store.claim(["q"], 1, "w", 30)
    assert db.work_commits == work
    assert store.requeue(job.id, "w")
    assert db.work_commits > work and store.work_stamp() != stamp
    work = db.work_commits
    store.publish_many([_job(3)])
    assert db.work_commits > work
    store.publish_spooled([_job(4, "other")])
    work = db.work_commits
    store.claim(["q"], 10, "w", 30)  # a claim (no work) that moves the spooled publish in (work)
    assert db.work_commits > work


def test_a_claim_that_took_less_than_it_could_needs_no_look_until_something_changes(db_path: str) -> None:
    """A worker's claim that found fewer messages than it had room for records the stamp it saw:
    the wake-up by its own commit then finds nothing new and costs no look. A publish after it
    is new."""
    got: list[str] = []
    with Connection(f"sqlite:///{db_path}") as conn:
        queue = Queue("pq")
        with Consumer(conn, [queue], callbacks=[lambda body, message: None]) as consumer:
            channel = consumer.channel
            producer = conn.Producer()
            producer.publish({"n": 1}, routing_key="pq", declare=[queue])
            assert channel.deliver(lambda message, name: got.append(message), 4) == 1  # room for 4
            assert channel.nothing_new()  # before: a look at every wake-up after a claim
            producer.publish({"n": 2}, routing_key="pq")
            assert not channel.nothing_new()
            assert channel.deliver(lambda message, name: got.append(message), 4) == 1
    assert len(got) == 2


def _wal_frames(db_path: str) -> int:
    """The frames in the WAL now: mxFrame of the wal-index header, a 32-bit integer in native byte
    order at offset 16 of the -shm file (https://www.sqlite.org/walformat.html)."""
    with open(db_path + "-shm", "rb") as f:
        return int.from_bytes(f.read(20)[16:20], sys.byteorder)


def _wal_restarts(db_path: str) -> int:
    """How many times the WAL was started again from its beginning: the checkpoint sequence
    number of the -wal file's header, big-endian at offset 12 (the same page)."""
    with open(db_path + "-wal", "rb") as f:
        return int.from_bytes(f.read(16)[12:16], "big")


def test_the_housekeepers_checkpoint_lets_the_wal_restart_under_a_steady_load(store: JobStore) -> None:
    """Two processes publish without pause and a third reads, as producers, workers and result
    waiters do, while this one checkpoints as a worker's housekeeper does: after each checkpoint
    the writers' next commits start the WAL again from its beginning, nearly always. (Before: a
    commit landed during most copies, the WAL restarted after few checkpoints, and in a round
    trip it grew until the truncating checkpoint at WAL_LIMIT_BYTES stopped every writer.)"""
    stop = store.path + ".stop"
    code = """
        import os, sys, time
        from queuectl_kombu import JobStore, NewJob
        s = JobStore(sys.argv[1])
        i = 0
        while not os.path.exists(sys.argv[2]):
            s.publish_many([NewJob(queue="q", payload="x" * 1500, task_id=f"b-{i}")])
            i += 1
            time.sleep(0.0003)  # a steady load of small publishes, below its own checkpoints' size
        """
    reader = """
        import os, sys, time
        from queuectl_kombu import JobStore
        s = JobStore(sys.argv[1]); c = s.db.connection()
        while not os.path.exists(sys.argv[2]):
            c.execute("PRAGMA data_version").fetchone()
            c.execute("SELECT COUNT(*) FROM jobs WHERE queue = 'none'").fetchone()
            time.sleep(0.0002)
        """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(c), store.path, stop], cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=ROOT)) for c in (code, code, reader)]
    outcomes: list[bool] = []
    try:
        wait_for(lambda: os.path.exists(store.path + "-shm") and _wal_frames(store.path) > 1000, 60,
                 what="the writer to fill the WAL")
        while len(outcomes) < 24:
            # as the housekeeper is woken: at about 4 MiB, well below where the writers would
            # checkpoint themselves (8 MiB)
            wait_for(lambda: _wal_frames(store.path) > 1000, 60, what="the writers to write on", interval=0.001)
            restarts = _wal_restarts(store.path)
            busy, frames, _ = store.checkpoint()
            if not busy:  # (the writer checkpoints too at times)
                # the writers go on: they start the WAL again (restarted), or pile frames up on it
                outcomes.append(_restarted_after(store.path, restarts, frames))
    finally:
        open(stop, "w").close()
        for proc in procs:
            proc.wait(30)
    assert [proc.returncode for proc in procs] == [0, 0, 0]
    assert outcomes.count(True) >= 14, outcomes  # here 18 to 24 of 24; before, 0 to 8


def _restarted_after(db_path: str, restarts: int, frames: int) -> bool:
    """Whether the WAL is started again (its header's sequence number moves on) before 500
    more frames are added to the `frames` it had, as the writers go on."""
    outcome: list[bool] = []

    def decided() -> bool:
        if _wal_restarts(db_path) != restarts:
            outcome.append(True)
        elif _wal_frames(db_path) > frames + 500:
            outcome.append(False)
        return bool(outcome)

    wait_for(decided, 60, what="the writers' next commits", interval=0.001)
    return outcome[0]


def test_a_workers_connections_cut_the_wal_back_to_the_checkpoint_size(store: JobStore) -> None:
    """The process whose housekeeper checkpoints cuts the -wal file back to CHECKPOINT_BYTES as
    it restarts it; any other keeps WAL_LIMIT_BYTES (a producer alone would grow it again at each
    of its checkpoints)."""
    conn = store.db.connection()

    def limit() -> int:
        return int(conn.execute("PRAGMA journal_size_limit").fetchone()[0])

    store.publish_many([_job(1)])
    assert limit() == WAL_LIMIT_BYTES
    done = store.db.checkpoint_in_background(threading.Event())
    store.publish_many([_job(2)])
    assert limit() == CHECKPOINT_BYTES
    done()
    store.publish_many([_job(3)])
    assert limit() == WAL_LIMIT_BYTES
