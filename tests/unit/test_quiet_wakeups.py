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
from pathlib import Path

import pytest

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
def store(tmp_path: Path) -> JobStore:
    s = JobStore(str(tmp_path / "quiet.db"))
    s.open()
    yield s
    s.close()


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


def test_a_forked_child_never_reads_its_parents_dir_events(tmp_path: Path) -> None:
    watch = DirWatch(str(tmp_path))
    pid = os.fork()
    if pid == 0:  # the child: its copy says "changed" (it must look) and leaves the events alone
        os._exit(0 if (not watch.active and watch.changed()) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with open(tmp_path / "f", "ab") as f:
        f.write(b"x")
    assert watch.changed() and not watch.changed()
    watch.close()


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
    store.publish_many([_job(1), _job(2)])
    stamp = store.work_stamp()
    (job,) = store.claim(["q"], 1, "w", 30)
    assert store.work_stamp() == stamp
    assert not store.ack_many([job.id], "w")
    assert store.work_stamp() == stamp
    (job,) = store.claim(["q"], 1, "w", 30)
    assert store.requeue(job.id, "w")
    assert store.work_stamp() != stamp
    stamp = store.work_stamp()
    store.publish_many([_job(3)])
    assert store.work_stamp() != stamp
    stamp = store.work_stamp()
    store.publish_spooled([_job(4, "other")])
    assert store.work_stamp() != stamp  # the spool's files changed
    stamp = store.work_stamp()
    store.claim(["q"], 10, "w", 30)  # moves the spooled publish (to another queue) in
    assert store.work_stamp() != stamp


def test_the_housekeepers_checkpoints_let_the_wal_restart_under_a_steady_load(store: JobStore) -> None:
    """Another process publishes without pause while this one checkpoints as a worker's
    housekeeper does (whenever the -wal file has grown past CHECKPOINT_BYTES): the WAL starts again
    from its beginning each time, so the file stays near CHECKPOINT_BYTES and never creeps up to
    WAL_LIMIT_BYTES, where a TRUNCATE would stop every writer. (Before: a commit landed during
    nearly every copy, and the file grew past 8 MB here; in a round trip, every ~100 trips.)"""
    stop = store.path + ".stop"
    code = """
        import os, sys, time
        from queuectl_kombu import JobStore, NewJob
        s = JobStore(sys.argv[1])
        i = 0
        while not os.path.exists(sys.argv[2]):
            s.publish_many([NewJob(queue="q", payload="x" * 1500, task_id=f"b-{i}")])
            i += 1
            time.sleep(0.0003)  # a steady load of small publishes, not one bulk insert
        """
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), store.path, stop], cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=ROOT))
    largest, checkpoints = 0, 0
    try:

        def checkpointed_enough() -> bool:
            nonlocal largest, checkpoints
            size = store.db.wal_size()
            largest = max(largest, size)
            if size > CHECKPOINT_BYTES:
                store.checkpoint()  # busy at times: the writer checkpoints too
                checkpoints += 1
            return checkpoints >= 16

        wait_for(checkpointed_enough, 120, what="sixteen checkpoints", interval=0.005)
    finally:
        open(stop, "w").close()
        writer.wait(30)
    assert writer.returncode == 0
    # what one cycle wrote past CHECKPOINT_BYTES, not what cycles that failed to restart added up
    assert largest < WAL_LIMIT_BYTES, largest
