"""Steering a real worker pool from the command line: `queuectl cancel` of waiting and running jobs
(the running command's whole process group killed by its worker, the job dead and retried by
`dlq retry`), a task revoked through Celery itself (never completed), and `queuectl queue pause`
and `resume` (the pause skips every claim, outlives a worker restart, shows in status)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

from queuectl.app import make_app
from queuectl.cli.remote import pid_running
from queuectl_kombu import CANCELLED, JobState, JobStore

from tests.support.waiting import wait_for

from .conftest import Processes


def _state(store: JobStore, key: str) -> tuple[JobState, str | None]:
    job = store.find_job(key)
    return job.state, job.last_error


def test_cancel_a_running_job_kills_its_process_group_and_dlq_retry_runs_it_again(
        procs: Processes, cli: Callable[..., Result], db: Path, tmp_path: Path) -> None:
    procs.start_detached("--count", "2")
    marker, pids = tmp_path / "marker", tmp_path / "pids"
    # The first run starts a grandchild and waits for it; the run after the retry just prints.
    command = (f"if [ -e {marker} ]; then echo second run; "
               f"else touch {marker}; (sleep 60; echo never) & echo $! > {pids}; wait; fi")
    assert cli("run", "--id", "long", command).exit_code == 0
    store = JobStore(str(db))
    wait_for(lambda: pids.exists() and pids.read_text().strip(), 30, what="job long to start its grandchild")
    grandchild = int(pids.read_text())

    result = cli("cancel", "long")
    assert (result.exit_code, result.stderr) == (0, "job long: cancelled (was running)\n")
    assert _state(store, "long") == (JobState.DEAD, CANCELLED)
    wait_for(lambda: not pid_running(grandchild), 10, what=f"the job's grandchild {grandchild} to be killed")
    shown = json.loads(cli("show", "long", "--format", "json").stdout)
    assert (shown["state"], shown["last_error"], shown["result"]["state"]) == ("dead", "cancelled", "REVOKED")
    assert [row["id"] for row in json.loads(cli("dlq", "list", "--format", "json").stdout)] == ["long"]

    # The worker lives on, and forgets the revoke for the retry: the job runs again.
    assert cli("dlq", "retry", "long").exit_code == 0
    wait_for(lambda: store.find_job("long").state is JobState.COMPLETED, 30, what="the retried job to complete")
    assert json.loads(cli("show", "long", "--format", "json").stdout)["result"]["value"]["stdout"] == "second run\n"
    again = cli("cancel", "long")
    assert (again.exit_code, again.stderr) == (1, "Error: job long: already finished, completed; nothing changed\n")
    assert store.event_totals()[("celery", "cancelled")] == 1
    store.close()


def test_cancel_a_queue_waiting_and_running_jobs_at_once(procs: Processes, cli: Callable[..., Result],
                                                         db: Path, tmp_path: Path) -> None:
    procs.start_detached("--queues", "slow")
    started = tmp_path / "started"
    for key in ("s1", "s2", "s3"):
        assert cli("run", "--id", key, "--queue", "slow", f"echo {key} >> {started}; sleep 60").exit_code == 0
    store = JobStore(str(db))
    wait_for(lambda: started.exists() and started.read_text() == "s1\n", 30, what="the first job to start")
    assert cli("run", "--id", "other", "--queue", "elsewhere", "true").exit_code == 0  # not consumed, not cancelled

    result = cli("cancel", "--queue", "slow")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        "cancelled 2 waiting job(s) of queue slow (2 pending): now dead, 'dlq retry' runs them again",
        "job s1: cancelled (was running)",
    ]
    assert {key: _state(store, key) for key in ("s1", "s2", "s3", "other")} == {
        "s1": (JobState.DEAD, CANCELLED), "s2": (JobState.DEAD, CANCELLED), "s3": (JobState.DEAD, CANCELLED),
        "other": (JobState.PENDING, None),
    }
    nothing = cli("cancel", "--queue", "slow", "--state", "pending")
    assert (nothing.exit_code, nothing.stderr) == (0, "no jobs to cancel of queue slow\n")
    assert started.read_text() == "s1\n"  # the cancelled waiting jobs never ran
    store.close()


def test_a_task_revoked_through_celery_does_not_show_up_as_completed(procs: Processes, cli: Callable[..., Result],
                                                                     db: Path) -> None:
    procs.start_detached()
    assert cli("queue", "pause", "celery").exit_code == 0
    assert cli("run", "--id", "doomed", "echo never").exit_code == 0
    app = make_app(str(db))
    try:
        # AsyncResult.revoke() is this call; reply and limit: the worker holds the revoke once it answers
        replies = app.control.revoke("doomed", reply=True, timeout=10, limit=1)
        assert len(replies) == 1, replies
    finally:
        app.close()
    assert cli("queue", "resume", "celery").exit_code == 0
    store = JobStore(str(db))
    wait_for(lambda: store.find_job("doomed").state is not JobState.PENDING, 30, what="the worker to take the job")
    wait_for(lambda: _state(store, "doomed") == (JobState.DEAD, CANCELLED), 10, what="the revoked job to be dead")
    store.close()


def test_pause_skips_every_claim_across_a_restart_until_resume(procs: Processes, cli: Callable[..., Result],
                                                               db: Path) -> None:
    procs.start_detached("--queues", "celery,side")
    paused = cli("queue", "pause", "celery")
    assert (paused.exit_code, paused.stderr) == (0, "queue celery paused\n")
    assert cli("run", "--id", "held", "echo held").exit_code == 0
    store = JobStore(str(db))

    def side_job_done(key: str) -> None:
        # A job published after `held`, on the other queue of the same worker: once it completed,
        # the worker has looked at both queues since `held` was published.
        assert cli("run", "--id", key, "--queue", "side", "true").exit_code == 0
        wait_for(lambda: store.find_job(key).state is JobState.COMPLETED, 30, what=f"job {key} to complete")
        assert store.find_job("held").state is JobState.PENDING

    side_job_done("side1")
    status = json.loads(cli("status", "--format", "json").stdout)
    assert status["paused_queues"] == ["celery"]
    assert "celery (paused)" in cli("status", "--no-workers").stdout
    queues = {row["queue"]: row for row in json.loads(cli("queue", "list", "--format", "json").stdout)}
    assert (queues["celery"]["paused"], queues["celery"]["pending"], queues["celery"]["consumers"]) == (True, 1, 1)
    assert queues["side"]["paused"] is False

    # The pause is in the file: a new worker skips the queue too.
    assert procs.run("worker", "stop").returncode == 0
    procs.start_detached("--queues", "celery,side")
    side_job_done("side2")

    resumed = cli("queue", "resume", "celery")
    assert (resumed.exit_code, resumed.stderr) == (0, "queue celery resumed\n")
    wait_for(lambda: store.find_job("held").state is JobState.COMPLETED, 30, what="the held job to run after resume")
    assert json.loads(cli("status", "--format", "json", "--no-workers").stdout)["paused_queues"] == []
    store.close()
