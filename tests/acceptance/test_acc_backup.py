"""`queuectl backup` while real workers drain the file, and a restore from it: the copy opens
sound, holds no running job, and a worker started on it runs exactly the tasks that were not
completed in the snapshot, each once; no task is lost."""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import pytest

from queuectl_kombu import JobState, JobStore
from tests.support.paths import queuectl_executable
from tests.support.processes import child_env, run
from tests.support.reading import rows

TASKS = 20_000
#: Completed tasks before the backup is taken: the drain is well under way, far from its end.
COMPLETED_BEFORE_BACKUP = 3_000
ACKS_LATE = {"task_acks_late": True, "worker_prefetch_multiplier": 4}


def queuectl(*args: str) -> tuple[int, str, str]:
    proc = run([queuectl_executable(), *args], env=child_env(unset=["QUEUECTL_DB"]), timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.slow
def test_a_backup_taken_mid_drain_restores_every_task_not_completed(harness, tmp_path: Path) -> None:
    harness.conf = ACKS_LATE
    gate = tmp_path / "gate-open"
    # first in the queue: a task that runs until the test opens its gate, so that at least one
    # job is processing when the backup is taken (with acks_late, besides the prefetched ones)
    gate_id = harness.send(f"import qapp; print(qapp.app.send_task('acc.gate', ('gate', {str(gate)!r})).id)")
    producer = harness.start_producer(TASKS, "r")
    harness.wait_producers([producer], timeout=90)
    source = harness.store()
    published = {j.task_id for j in source.list_jobs()}
    assert len(published) == TASKS + 1 and gate_id in published

    first = [harness.start_worker(pool="prefork", concurrency=2, quiet=True) for _ in range(2)]
    harness.wait_for(lambda: [e for e in harness.events("start") if e.task_id == gate_id], 30,
                     what="the gate task to start")
    harness.wait_for(lambda: source.counts()[JobState.COMPLETED] >= COMPLETED_BEFORE_BACKUP, 60,
                     what=lambda: f"{COMPLETED_BEFORE_BACKUP} completed, have {source.counts()}")

    # the doctor on the live file: sound, and it saw the drain's writes
    code, out, err = queuectl("--db", str(harness.db), "doctor", "--format", "json")
    assert (code, err) == (0, ""), out
    doctor = json.loads(out)
    assert doctor["ok"] and doctor["problems"] == []
    assert sum(doctor["jobs"].values()) == TASKS + 1 and doctor["jobs"]["completed"] >= COMPLETED_BEFORE_BACKUP
    assert doctor["rate"]["events"]["completed"] > 0 and doctor["lock_wait"] is not None

    dest = tmp_path / "backup.db"
    code, out, err = queuectl("--db", str(harness.db), "backup", str(dest))
    assert code == 0, err
    line = re.fullmatch(rf"wrote {re.escape(str(dest))}: (\d+) pending, 0 processing, (\d+) completed, 0 failed, "
                        r"0 dead; (\d+) processing job\(s\) put back to pending\n", out)
    assert line, out
    pending, completed, recovered = map(int, line.groups())
    assert err.count(": lease expired after attempt ") == recovered  # one WARNING each

    # the snapshot: sound, nothing running, every published task in it
    assert rows(dest, "PRAGMA integrity_check") == [("ok",)]
    states = dict(rows(dest, "SELECT task_id, state FROM jobs"))
    assert set(states) == published
    assert collections.Counter(states.values()) == {"pending": pending, "completed": completed}
    assert completed >= COMPLETED_BEFORE_BACKUP and pending + completed == TASKS + 1
    assert states[gate_id] == "pending"  # it was running: recovered, with its attempt counted
    assert rows(dest, f"SELECT attempts FROM jobs WHERE task_id = '{gate_id}'") == [(1,)]
    # the gate, and the others then running, prefetched, or acked in a worker's ack buffer only
    assert recovered >= 1
    assert rows(dest, "SELECT COUNT(*) FROM consumers") == [(0,)]
    not_completed = {task_id for task_id, state in states.items() if state != "completed"}

    for worker in first:  # the backup is taken: the first file and its workers may go (a warm
        worker.kill_group()  # shutdown of a busy prefork pool can take 30 s)
    gate.touch()  # the gate task returns at once where it runs again
    source.close()

    restore = harness.start_worker(pool="prefork", concurrency=2, quiet=True, db=dest, name="restore")
    backup = JobStore(str(dest))
    harness.wait_for(lambda: backup.counts()[JobState.COMPLETED] == TASKS + 1, 120, interval=0.2,
                     what=lambda: f"{TASKS + 1} completed in the backup, have {backup.counts()}")
    assert backup.counts() == {**{s: 0 for s in JobState}, JobState.COMPLETED: TASKS + 1}
    runs = collections.Counter(e.task_id for e in harness.events("run") if e.pgid == restore.pgid)
    assert set(runs) == not_completed  # what was not completed ran, and nothing else
    assert set(runs.values()) == {1}  # each once
    backup.close()
