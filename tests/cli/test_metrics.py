"""The Prometheus metrics (queuectl.metrics.render_metrics, `queuectl metrics`): every name and
value read back with prometheus_client's own parser, from a file built with a settable clock."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from queuectl.metrics import CONTENT_TYPE, render_metrics
from queuectl_kombu import STATS_EVENTS, WAL_LIMIT_BYTES, JobState, JobStore, NewJob
from tests.support.clock import Clock

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """{(sample name, sorted labels): value} of an exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def types(text: str) -> dict[str, str]:
    """{family name: type} of an exposition."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}


@pytest.fixture
def known(db: Path, clock: Clock) -> Iterator[JobStore]:
    """a: 1 pending, 1 completed, 1 dead; b: 1 failed (its retry due 2 s later); later: 1 job due in
    an hour; idle: declared, empty; a control message; then 120 s pass."""
    store = JobStore(str(db), clock=clock)
    store.declare_queue("idle")
    store.publish_many([NewJob(queue="a", payload=str(i), max_retries=0) for i in range(3)])
    done, dead = store.claim(["a"], 2, "w", 30.0)
    store.ack(done.id, "w")
    assert store.fail(dead.id, "w", "boom") is JobState.DEAD
    (b,) = store.publish_many([NewJob(queue="b", payload="b", max_retries=3)])
    store.claim(["b"], 1, "w", 30.0)
    assert store.fail(b, "w", "boom", backoff_base=2) is JobState.FAILED
    store.publish(NewJob(queue="later", payload="eta", next_run_at=clock() + 3600))
    store.publish(NewJob(queue="celery@host.celery.pidbox", payload="{}"))
    clock.advance(120)
    yield store
    store.close()


def test_jobs_per_queue_and_state(known: JobStore) -> None:
    found = samples(render_metrics(known, None).decode())
    jobs = {labels: v for (name, labels), v in found.items() if name == "queuectl_jobs"}
    expected = {"a": {"pending": 1, "completed": 1, "dead": 1}, "b": {"failed": 1}, "later": {"pending": 1}, "idle": {}}
    assert jobs == {
        (("queue", q), ("state", s.value)): expected[q].get(s.value, 0) for q in expected for s in JobState
    }


def test_oldest_pending_age_counts_runnable_jobs_only(known: JobStore) -> None:
    found = samples(render_metrics(known, None).decode())
    ages = {dict(labels)["queue"]: v for (name, labels), v in found.items()
            if name == "queuectl_oldest_pending_age_seconds"}
    # b's failed job became runnable 2 s after a's was published; later's is not due for an hour.
    assert ages == {"a": 120.0, "b": 118.0, "later": 0.0, "idle": 0.0}


def test_event_totals_per_queue_with_every_event(known: JobStore) -> None:
    found = samples(render_metrics(known, None).decode())
    events = {(dict(labels)["queue"], dict(labels)["event"]): v for (name, labels), v in found.items()
              if name == "queuectl_job_events_total"}
    counted = {("a", "published"): 3, ("a", "completed"): 1, ("a", "dead"): 1,
               ("b", "published"): 1, ("b", "failed"): 1, ("later", "published"): 1}
    assert events == {(q, e): counted.get((q, e), 0) for q in ("a", "b", "later", "idle") for e in STATS_EVENTS}


def test_file_queue_and_type_metrics(known: JobStore, db: Path) -> None:
    text = render_metrics(known, None).decode()
    found = samples(text)
    assert found[("queuectl_database_bytes", ())] == os.stat(db).st_size
    assert found[("queuectl_wal_bytes", ())] == os.stat(f"{db}-wal").st_size > 0
    assert found[("queuectl_wal_limit_bytes", ())] == WAL_LIMIT_BYTES
    paused = {dict(labels)["queue"]: v for (name, labels), v in found.items() if name == "queuectl_queue_paused"}
    assert paused == {"a": 0, "b": 0, "later": 0, "idle": 0}
    assert ("queuectl_workers", ()) not in found  # no app: nobody pinged
    assert types(text) == {
        "queuectl_jobs": "gauge", "queuectl_oldest_pending_age_seconds": "gauge", "queuectl_queue_paused": "gauge",
        "queuectl_job_events": "counter", "queuectl_database_bytes": "gauge", "queuectl_wal_bytes": "gauge",
        "queuectl_wal_limit_bytes": "gauge",
    }
    assert CONTENT_TYPE.startswith("text/plain; version=")


def test_a_paused_queue_and_its_cancelled_jobs_show(known: JobStore) -> None:
    assert known.pause_queue("b")
    (job_id,) = known.publish_many([NewJob(queue="a", payload="to cancel")])
    assert [row[0] for row in known.cancel_waiting([job_id])] == [job_id]
    found = samples(render_metrics(known, None).decode())
    paused = {dict(labels)["queue"]: v for (name, labels), v in found.items() if name == "queuectl_queue_paused"}
    assert paused == {"a": 0, "b": 1, "later": 0, "idle": 0}
    assert found[("queuectl_job_events_total", (("event", "cancelled"), ("queue", "a")))] == 1


def test_each_render_reads_the_file_afresh_into_a_registry_of_its_own(known: JobStore, clock: Clock) -> None:
    render_metrics(known, None)
    known.publish(NewJob(queue="a", payload="more"))
    clock.advance(30)
    found = samples(render_metrics(known, None).decode())
    assert found[("queuectl_jobs", (("queue", "a"), ("state", "pending")))] == 2
    assert found[("queuectl_job_events_total", (("event", "published"), ("queue", "a")))] == 4
    assert found[("queuectl_oldest_pending_age_seconds", (("queue", "a"),))] == 150.0
    assert REGISTRY.get_sample_value("queuectl_wal_limit_bytes") is None  # the global registry is left alone


def test_metrics_command_prints_the_exposition(cli: Callable[..., Result], known: JobStore) -> None:
    result = cli("metrics", "--no-workers")
    assert (result.exit_code, result.stderr) == (0, "")
    found = samples(result.stdout)
    assert found[("queuectl_jobs", (("queue", "a"), ("state", "dead")))] == 1
    assert found[("queuectl_job_events_total", (("event", "failed"), ("queue", "b")))] == 1
    assert ("queuectl_workers", ()) not in found


def test_metrics_command_counts_no_worker_when_none_answers(cli: Callable[..., Result], known: JobStore) -> None:
    result = cli("metrics", "--timeout", "0.2")
    assert result.exit_code == 0, result.stderr
    assert samples(result.stdout)[("queuectl_workers", ())] == 0


def test_metrics_of_a_missing_file_is_an_error_and_creates_nothing(cli: Callable[..., Result], db: Path) -> None:
    result = cli("metrics")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"Error: database {db} does not exist\n"
    assert not db.exists()


def test_the_product_modules_import_on_their_own() -> None:
    """The dashboard imports them without the command line: no import circle through queuectl.cli."""
    for module in ("queuectl.metrics", "queuectl.health"):
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stderr) == (0, ""), module
