"""queuectl copy: a queue with jobs in every state copied from SQLite to PostgreSQL and drained
there by a real worker, then copied back; skips, moves, refusals."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner

from queuectl.cli import cli
from queuectl_kombu import JobState, JobStore
from tests.support.processes import Worker, celery_argv
from tests.support.waiting import wait_for
from tests.transactions.conftest import Queue

DAY = 86400.0


def queuectl(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def by_task(target: str) -> dict[str, Any]:
    store = JobStore(target)
    try:
        return {str(job.task_id): job for job in store.list_jobs(jobs_only=True)}
    finally:
        store.close()


def worker_on(queue: Queue, tmp_path: Path, tag: str) -> Worker:
    name = f"copy-{tag}@localhost"
    argv = celery_argv("tapp", "worker", "-P", "solo", "--without-mingle", "--without-gossip", "-l", "INFO",
                       "-n", name)
    return Worker(name, argv, hostname=name, env=queue.env(), cwd=tmp_path, out=tmp_path / f"worker-{tag}.log",
                  ready_timeout=60).wait_ready()  # type: ignore[return-value]


def fill(queue: Queue) -> dict[str, str]:
    """Jobs in every state; the state each task id should have at a destination."""
    app = Celery("filler", broker=queue.url)
    for task_id in ("to-fail", "in-flight", "to-complete"):
        app.send_task("orders.confirm", (0,), task_id=task_id)
    for i in range(1, 6):
        app.send_task("orders.confirm", (i,), task_id=f"pending-{i}")
    app.send_task("orders.confirm", (100,), task_id="scheduled", countdown=DAY)
    app.send_task("orders.confirm", (200,), task_id="to-cancel")
    app.close()
    store = JobStore(queue.target)
    store.declare_queue("reports", {"x-max-priority": 5})
    store.publish_many([__import__("queuectl_kombu").NewJob(queue="reports", payload="{}", task_id="report-1",
                                                             priority=3)])
    store.set_config("max_retries", 7)
    claimed = {job.task_id: job for job in store.claim(["celery"], 3, "gone-worker", 60.0)}
    assert set(claimed) == {"to-fail", "in-flight", "to-complete"}
    assert store.fail(claimed["to-fail"].id, "gone-worker", "boom", backoff_base=DAY) == JobState.FAILED
    assert store.ack(claimed["to-complete"].id, "gone-worker")
    cancelled = store.cancel_waiting([by_task(queue.target)["to-cancel"].id])
    assert len(cancelled) == 1
    store.close()
    return {"to-fail": "failed", "in-flight": "pending", "scheduled": "pending", "to-cancel": "dead",
            "report-1": "pending", **{f"pending-{i}": "pending" for i in range(1, 6)}}


def test_a_queue_in_every_state_goes_to_postgresql_drains_there_and_comes_back(
        db_path: str, pg_url: str, tmp_path: Path) -> None:
    source = Queue(db_path, tmp_path)
    expected = fill(source)
    before = by_task(db_path)

    done = queuectl("copy", db_path, pg_url, "--format", "json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["copied"] == len(expected) and report["requeued"] == 1 and report["skipped"] == []
    assert report["queues"] >= 1 and report["config"] >= 1

    there = by_task(pg_url)
    assert {t: j.state.value for t, j in there.items()} == expected  # nothing completed came along
    for task_id, job in there.items():
        old = before[task_id]
        assert (job.payload, job.priority, job.queue, job.max_retries) == (old.payload, old.priority, old.queue,
                                                                          old.max_retries)
        if task_id != "in-flight":
            assert (job.attempts, job.next_run_at, job.last_error) == (old.attempts, old.next_run_at,
                                                                      old.last_error)
    assert there["in-flight"].attempts == 1 and there["in-flight"].lease_owner is None
    pg = JobStore(pg_url)
    assert pg.settings(fresh=True)["max_retries"] == 7
    assert {q["name"]: q for q in pg.list_queues()}["reports"]["max_priority"] == 5
    pg.close()

    # drained on PostgreSQL by a real worker: every job that was pending (or in flight) runs once
    dest = Queue(pg_url, tmp_path / "pg")
    dest.ran_file = tmp_path / "ran-pg.txt"
    worker = worker_on(dest, tmp_path, "pg")
    try:
        wait_for(lambda: sorted(dest.ran()) == [0, 1, 2, 3, 4, 5], 60, what="the pending jobs to run on PostgreSQL",
                 on_fail=worker.tail)
        after = by_task(pg_url)
        assert after["to-cancel"].state == JobState.DEAD
        assert after["scheduled"].state == JobState.PENDING and after["scheduled"].next_run_at > time.time() + DAY / 2
        assert after["to-fail"].state == JobState.FAILED
    finally:
        worker.stop()

    # and back, into a new SQLite file: what was not completed comes back as it is
    back = str(tmp_path / "back.db")
    done = queuectl("copy", pg_url, back)
    assert done.exit_code == 0, done.output
    assert "copied 4 jobs" in done.output
    returned = by_task(back)
    assert {t: j.state.value for t, j in returned.items()} == {
        "to-fail": "failed", "scheduled": "pending", "to-cancel": "dead", "report-1": "pending"}
    assert returned["scheduled"].next_run_at == before["scheduled"].next_run_at

    # a second copy skips every job (reported), duplicating none
    again = queuectl("copy", pg_url, back)
    assert again.exit_code == 0 and "skipped 4 jobs" in again.output, again.output
    assert len(by_task(back)) == 4


def test_move_empties_the_source_and_a_rerun_moves_nothing(db_path: str, tmp_path: Path) -> None:
    source = Queue(db_path, tmp_path)
    expected = fill(source)
    dest = str(tmp_path / "dest.db")
    done = queuectl("copy", "--move", db_path, dest)
    assert done.exit_code == 0, done.output
    assert f"moved: {len(expected)} jobs deleted" in done.output
    assert {t: j.state.value for t, j in by_task(dest).items()} == expected
    assert {t: j.state.value for t, j in by_task(db_path).items()} == {"to-complete": "completed"}  # not copied, kept
    assert queuectl("copy", "--move", db_path, dest).exit_code == 0
    assert len(by_task(dest)) == len(expected)


def test_running_workers_on_the_source_are_refused_without_force(db_path: str, tmp_path: Path) -> None:
    source = Queue(db_path, tmp_path)
    Celery("p", broker=source.url).send_task("orders.confirm", (1,), task_id="one", countdown=DAY)
    dest = tmp_path / "dest.db"
    worker = worker_on(source, tmp_path, "src")
    try:
        refused = queuectl("copy", db_path, str(dest))
        assert refused.exit_code == 1
        assert "stop the workers first, or pass --force" in refused.output
        assert not dest.exists() or by_task(str(dest)) == {}
        forced = queuectl("copy", "--force", db_path, str(dest))
        assert forced.exit_code == 0, forced.output
        assert "one" in by_task(str(dest))
    finally:
        worker.stop()


@pytest.mark.parametrize("args, code, message", [
    (["same.db", "same.db"], 2, "the source and the destination are the same database"),
    (["missing.db", "dest.db"], 1, "no such file"),
])
def test_bad_copies_get_one_line_and_write_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   args: list[str], code: int, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "same.db").touch() if args[0] == "same.db" else None
    done = queuectl("copy", *args)
    assert done.exit_code == code
    assert message in done.output and len(done.output.strip().splitlines()) == 1
    assert not (tmp_path / "missing.db").exists() and not (tmp_path / "dest.db").exists()


def test_messages_without_a_task_id_are_not_copied_twice(db_path: str, tmp_path: Path) -> None:
    from queuectl_kombu import NewJob

    Queue(db_path, tmp_path)
    store = JobStore(db_path)
    store.publish_many([NewJob(queue="plain", payload='{"n": 1}'), NewJob(queue="plain", payload='{"n": 2}')])
    store.close()
    dest = str(tmp_path / "dest.db")
    for _ in range(2):
        assert queuectl("copy", db_path, dest).exit_code == 0
    copied = JobStore(dest)
    assert sorted(j.payload for j in copied.list_jobs(queue="plain")) == ['{"n": 1}', '{"n": 2}']
    copied.close()


def test_move_keeps_a_job_whose_task_id_the_destination_gives_another_message(db_path: str, tmp_path: Path) -> None:
    from queuectl_kombu import NewJob

    Queue(db_path, tmp_path)
    dest = str(tmp_path / "dest.db")
    Queue(dest, tmp_path / "d")
    for path, payload in ((db_path, '{"mine": 1}'), (dest, '{"theirs": 1}')):
        store = JobStore(path)
        store.publish_many([NewJob(queue="celery", payload=payload, task_id="same-id")])
        store.close()
    done = queuectl("copy", "--move", db_path, dest)
    assert done.exit_code == 0 and "skipped 1 jobs" in done.output and "moved: 0 jobs" in done.output, done.output
    assert "the destination gives the task id to another message" in done.output
    assert [j.payload for j in JobStore(db_path).list_jobs(jobs_only=True)] == ['{"mine": 1}']


def test_the_same_postgresql_database_named_two_ways_is_refused(pg_url: str) -> None:
    Queue(pg_url, Path("/tmp"))
    other = pg_url.replace("127.0.0.1", "localhost", 1)
    assert other != pg_url
    done = queuectl("copy", "--move", pg_url, other)
    assert done.exit_code == 2 and "the source and the destination are the same database" in done.output


def test_one_task_id_in_two_queues_and_twice_in_one(db_path: str, pg_url: str, tmp_path: Path) -> None:
    """Presence is looked up per batch of task ids, per (task id, queue): a message routed to two
    queues is two jobs, and a second copy of it in the same queue of the source is skipped."""
    from queuectl_kombu import NewJob

    Queue(db_path, tmp_path)
    store = JobStore(db_path)
    store.publish_many([NewJob(queue="a", payload='{"m": 1}', task_id="fan"),
                        NewJob(queue="b", payload='{"m": 1}', task_id="fan")])
    store.publish_many([NewJob(queue="a", payload='{"m": 1}', task_id="fan")])  # published again
    store.close()
    done = queuectl("copy", "--format", "json", db_path, pg_url)
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["copied"] == 2 and report["skipped"] == [{"task_id": "fan", "queue": "a"}]
    dest = JobStore(pg_url)
    assert sorted(j.queue for j in dest.list_jobs(jobs_only=True)) == ["a", "b"]
    dest.close()
