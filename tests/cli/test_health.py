"""The health check (queuectl.health.check_health, `queuectl health`): exit 0 and one line when
healthy, exit 1 and one line why when not: no database, a damaged or foreign file, a job waiting
too long, an oversized WAL, no worker answering; and healthy beside a real worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery
from click.testing import Result
from prometheus_client.parser import text_string_to_metric_families

from queuectl.app import make_app
from queuectl.health import DEFAULT_MAX_PENDING_AGE, check_health
from queuectl_kombu import WAL_LIMIT_BYTES, JobStore, NewJob
from tests.support.clock import Clock

from .conftest import Processes


@pytest.fixture
def app(db: Path) -> Iterator[Celery]:
    """A Celery app on the test's database (for the pings of the health check)."""
    celery_app = make_app(str(db))
    yield celery_app
    celery_app.close()


def an_hour_ago() -> float:
    return time.time() - 3600


def test_a_file_with_a_fresh_job_is_healthy_without_workers(db: Path, clock: Clock, app: Celery) -> None:
    store = JobStore(str(db), clock=clock)
    store.publish(NewJob(queue="q", payload="1"))
    clock.advance(DEFAULT_MAX_PENDING_AGE)
    report = check_health(store, app, workers_ok_missing=True)
    assert (report.ok, report.reasons, report.worker) == (True, [], None)
    assert (report.oldest_pending_queue, report.oldest_pending_age) == ("q", DEFAULT_MAX_PENDING_AGE)
    assert report.line() == (f"healthy: {db}: quick check ok, worker answering: not asked, "
                             f"oldest pending job: {DEFAULT_MAX_PENDING_AGE:.0f} s (q), WAL {report.wal_bytes} bytes")


def test_a_job_waiting_too_long_is_unhealthy(db: Path, clock: Clock, app: Celery) -> None:
    store = JobStore(str(db), clock=clock)
    store.publish(NewJob(queue="fresh", payload="1"))
    clock.advance(30)
    store.publish(NewJob(queue="slow", payload="2", next_run_at=clock() - 70))  # due 70 s ago
    report = check_health(store, app, max_pending_age=60, workers_ok_missing=True)
    assert report.reasons == ["the oldest pending job (queue slow) has waited 70 s, more than 60 s"]
    assert not report.ok and report.line() == report.reasons[0]


def test_an_oversized_wal_is_unhealthy(db: Path, app: Celery) -> None:
    store = JobStore(str(db))
    big = "x" * (1024 * 1024)
    ids = store.publish_many([NewJob(queue="q", payload=big) for _ in range(WAL_LIMIT_BYTES // len(big) + 1)])
    store.claim(["q"], len(ids), "w", 60.0)  # nothing waits
    wal = store.db.wal_size()
    assert wal > WAL_LIMIT_BYTES  # one transaction wrote it all; nothing truncated it since
    report = check_health(store, app, workers_ok_missing=True)
    assert report.reasons == [f"the WAL holds {wal} bytes, more than its limit of {WAL_LIMIT_BYTES} "
                              "(a long reader keeps checkpoints from finishing)"]


def test_a_damaged_file_fails_the_quick_check(db: Path, app: Celery) -> None:
    store = JobStore(str(db))
    store.publish_many([NewJob(queue="q", payload="x" * 200, task_id=f"t{i}") for i in range(2000)])
    store.close()  # the WAL is copied into the file
    with open(db, "r+b") as f:  # page 7, the root of an index, overwritten
        f.seek(6 * 4096)
        f.write(b"\xff" * 4096)
    report = check_health(JobStore(str(db)), app, workers_ok_missing=True)
    [reason] = report.reasons
    assert reason.startswith(f"database {db} failed SQLite's quick check: Page 7: btreeInitPage() returns error")
    assert reason.endswith(" more problems)")


def test_a_file_that_is_not_a_database_is_unhealthy(db: Path, app: Celery) -> None:
    db.write_text("not a database\n" * 100)
    report = check_health(JobStore(str(db)), app, workers_ok_missing=True)
    assert report.reasons == [f"database {db} is unusable: cannot open database {db}: "
                              "the file is not a SQLite database"]


def test_health_command_of_a_missing_file(cli: Callable[..., Result], db: Path) -> None:
    result = cli("health")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"Error: unhealthy: database {db} does not exist\n"
    assert not db.exists()


def test_health_command_without_a_worker(cli: Callable[..., Result], db: Path) -> None:
    JobStore(str(db)).publish(NewJob(queue="q", payload="1"))
    result = cli("health", "--timeout", "0.3")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "Error: unhealthy: no worker answered a ping within 0.3 s\n"
    ok = cli("health", "--no-workers-ok")
    assert (ok.exit_code, ok.stderr) == (0, "")
    assert ok.stdout.startswith(f"healthy: {db}: quick check ok, worker answering: not asked, oldest pending job: ")
    assert len(ok.stdout.splitlines()) == 1


def test_health_command_with_an_old_job_and_no_worker(cli: Callable[..., Result], db: Path) -> None:
    JobStore(str(db), clock=an_hour_ago).publish(NewJob(queue="q", payload="1"))
    result = cli("health", "--max-pending-age", "600", "--timeout", "0.2")
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: unhealthy: the oldest pending job (queue q) has waited 36")
    assert line.endswith(" s, more than 600 s; no worker answered a ping within 0.2 s")


def test_healthy_beside_a_real_worker(procs: Processes, db: Path) -> None:
    pid, _ = procs.start_detached("--count", "1", "--queues", "work")
    proc = procs.run("health", "--timeout", "10")
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    [line] = proc.stdout.splitlines()
    assert line.startswith(f"healthy: {db}: quick check ok, worker answering: queuectl-")
    metrics = procs.run("metrics", "--timeout", "5")  # a count waits the whole timeout
    assert metrics.returncode == 0, metrics.stderr
    [workers] = [s.value for f in text_string_to_metric_families(metrics.stdout) for s in f.samples
                 if s.name == "queuectl_workers"]
    assert workers == 1

    # A job left an hour in a queue that the worker does not consume: only that is wrong.
    JobStore(str(db), clock=an_hour_ago).publish(NewJob(queue="elsewhere", payload="1"))
    proc = procs.run("health", "--timeout", "10", "--max-pending-age", "1800")
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert line.startswith("Error: unhealthy: the oldest pending job (queue elsewhere) has waited 36")
    assert line.endswith(" s, more than 1800 s")
