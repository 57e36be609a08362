"""`queuectl list`, `show` and `status` on a database holding jobs in every state, shell jobs and
other Celery tasks alike; JSON parsed as JSON, CSV as CSV."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from queuectl.app import make_app
from queuectl.cli.output import iso_time
from queuectl.shell import CommandFailed
from queuectl_kombu import JobState, JobStore, NewJob

OWNER = "test-owner"


@pytest.fixture
def mixed(cli: Callable[..., Result], db: Path) -> JobStore:
    """pending: a, e (queue other), add-1 (a Celery task); completed: b; failed: c; dead: d, mul-1."""
    for job in ('{"id":"a","command":"echo a"}', '{"id":"b","command":"echo hi"}',
                '{"id":"c","command":"exit 2","max_retries":5}', '{"id":"d","command":"exit 1"}',
                '{"id":"e","command":"echo e","queue":"other","priority":4}'):
        assert cli("enqueue", job).exit_code == 0
    app = make_app(str(db))
    app.send_task("proj.add", args=[2, 3], task_id="add-1")
    app.send_task("proj.mul", kwargs={"x": 2, "y": 7}, task_id="mul-1")
    app.close()
    store = JobStore(str(db))
    claimed = {store.get_job(c.id).task_id: c.id for c in store.claim(["celery"], 100, OWNER, 60)}
    assert set(claimed) == {"a", "b", "c", "d", "add-1", "mul-1"}
    store.requeue(claimed["a"], OWNER)
    store.requeue(claimed["add-1"], OWNER)
    store.ack(claimed["b"], OWNER)
    failed = store.fail(claimed["c"], OWNER, "CommandFailed: command exited with code 2", backoff_base=2)
    assert failed is JobState.FAILED
    assert store.fail(claimed["d"], OWNER, "CommandFailed: command exited with code 1", max_retries=0) is JobState.DEAD
    assert store.fail(claimed["mul-1"], OWNER, "ValueError: no", max_retries=0) is JobState.DEAD
    # A remote-control message: never shown as a job.
    store.publish(NewJob(queue="celery@elsewhere.celery.pidbox", payload="{}"))
    return store


def test_list_json(cli: Callable[..., Result], mixed: JobStore) -> None:
    result = cli("list", "--format", "json")
    assert (result.exit_code, result.stderr) == (0, "")
    rows = json.loads(result.stdout)
    assert [(r["id"], r["state"], r["queue"], r["task"], r["call"]) for r in rows] == [
        ("a", "pending", "celery", "queuectl.run_shell", "echo a"),
        ("b", "completed", "celery", "queuectl.run_shell", "echo hi"),
        ("c", "failed", "celery", "queuectl.run_shell", "exit 2"),
        ("d", "dead", "celery", "queuectl.run_shell", "exit 1"),
        ("e", "pending", "other", "queuectl.run_shell", "echo e"),
        ("add-1", "pending", "celery", "proj.add", "add(2, 3)"),
        ("mul-1", "dead", "celery", "proj.mul", 'mul(x=2, y=7)'),
    ]
    c = mixed.find_job("c")
    assert rows[2] == {
        "id": "c", "row_id": c.id, "state": "failed", "queue": "celery", "task": "queuectl.run_shell",
        "call": "exit 2", "args": [], "kwargs": {"command": "exit 2"}, "priority": 0, "attempts": 1,
        "max_retries": 5, "next_run_at": iso_time(c.next_run_at), "created_at": iso_time(c.created_at),
        "updated_at": iso_time(c.updated_at), "last_error": "CommandFailed: command exited with code 2",
    }
    assert rows[5]["args"] == [2, 3] and rows[6]["kwargs"] == {"x": 2, "y": 7}


def test_list_filters(cli: Callable[..., Result], mixed: JobStore) -> None:
    def ids(*args: str) -> list[str]:
        result = cli("list", *args, "--format", "json")
        assert result.exit_code == 0
        return [r["id"] for r in json.loads(result.stdout)]

    assert ids("--state", "pending") == ["a", "e", "add-1"]
    assert ids("--state", "dead") == ["d", "mul-1"]
    assert ids("--state", "processing") == []
    assert ids("--queue", "other") == ["e"]
    assert ids("--state", "pending", "--queue", "celery") == ["a", "add-1"]
    assert ids("--limit", "2") == ["a", "b"]
    assert ids("--limit", "0") == ["a", "b", "c", "d", "e", "add-1", "mul-1"]
    assert len(ids("--queue", "celery@elsewhere.celery.pidbox")) == 1  # asked for by name: shown


def test_list_csv_and_table(cli: Callable[..., Result], mixed: JobStore) -> None:
    result = cli("list", "--state", "dead", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["id", "state", "queue", "attempts", "task", "call", "next_run_at", "updated_at"]
    assert [(r["id"], r["state"], r["attempts"], r["call"], r["next_run_at"]) for r in rows] == [
        ("d", "dead", "1", "exit 1", ""), ("mul-1", "dead", "1", "mul(x=2, y=7)", ""),
    ]
    table = cli("list", "--state", "pending").stdout.splitlines()
    headers = ["ID", "STATE", "QUEUE", "ATTEMPTS", "TASK", "CALL", "NEXT RUN AT", "UPDATED AT"]
    assert re.split(r"\s{2,}", table[0]) == headers
    assert [line.split()[:5] for line in table[1:]] == [
        ["a", "pending", "celery", "0", "queuectl.run_shell"],
        ["e", "pending", "other", "0", "queuectl.run_shell"],
        ["add-1", "pending", "celery", "0", "proj.add"],
    ]


def test_show_a_shell_job(cli: Callable[..., Result], mixed: JobStore) -> None:
    c = mixed.find_job("c")
    result = cli("show", "c")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (
        "id:         c\n"
        "task:       queuectl.run_shell\n"
        "state:      failed\n"
        "queue:      celery\n"
        "priority:   0\n"
        "attempts:   1 (max retries 5)\n"
        "command:    exit 2\n"
        f"next run:   {iso_time(c.next_run_at)}\n"
        "last error: CommandFailed: command exited with code 2\n"
        f"created:    {iso_time(c.created_at)}\n"
        f"updated:    {iso_time(c.updated_at)}\n"
        "result:     -\n"
    )


def test_show_a_result_with_its_output_tail(cli: Callable[..., Result], mixed: JobStore, db: Path) -> None:
    app = make_app(str(db))
    outcome = {"command": "echo hi", "exit_code": 0, "duration": 0.25, "stdout": "hi\nthere\n", "stderr": "",
               "stdout_bytes": 9, "stderr_bytes": 0, "timed_out": False}
    app.backend.mark_as_done("b", outcome)
    failure = CommandFailed("command exited with code 1; stderr: boom", {**outcome, "exit_code": 1, "stderr": "boom\n"})
    app.backend.mark_as_failure("d", failure)
    app.close()
    lines = cli("show", "b").stdout.splitlines()
    assert lines[-6:-3] == [line for line in lines if line.startswith(("result:", "exit code:", "duration:"))]
    assert lines[-6].startswith("result:     SUCCESS at 20")
    assert lines[-5:] == ["exit code:  0", "duration:   0.25s", "stdout (last 9 of 9 bytes):", "  hi", "  there"]
    shown = json.loads(cli("show", "d", "--format", "json").stdout)
    assert shown["state"] == "dead" and shown["attempts"] == 1
    assert shown["result"]["state"] == "FAILURE"
    assert shown["result"]["error"] == "command exited with code 1; stderr: boom"
    assert shown["result"]["value"]["exit_code"] == 1 and shown["result"]["value"]["stderr"] == "boom\n"


def test_show_any_celery_task(cli: Callable[..., Result], mixed: JobStore) -> None:
    shown = json.loads(cli("show", "add-1", "--format", "json").stdout)
    assert (shown["task"], shown["call"], shown["args"], shown["kwargs"], shown["result"]) == (
        "proj.add", "add(2, 3)", [2, 3], {}, None,
    )
    lines = cli("show", "mul-1").stdout.splitlines()
    assert lines[6:9] == ["call:       mul(x=2, y=7)", "args:       []", 'kwargs:     {"x": 2, "y": 7}']
    assert "last error: ValueError: no" in lines


def test_show_by_row_number(cli: Callable[..., Result], mixed: JobStore) -> None:
    row = mixed.find_job("e").id
    assert json.loads(cli("show", str(row), "--format", "json").stdout)["id"] == "e"


def test_status_json(cli: Callable[..., Result], mixed: JobStore, db: Path) -> None:
    result = cli("status", "--no-workers", "--format", "json")
    assert (result.exit_code, result.stderr) == (0, "")
    data = json.loads(result.stdout)
    assert data["database"] == str(db)
    assert data["jobs"] == {"pending": 3, "processing": 0, "completed": 1, "failed": 1, "dead": 2, "total": 7}
    assert data["queues"] == {
        "celery": {"pending": 2, "processing": 0, "completed": 1, "failed": 1, "dead": 2},
        "other": {"pending": 1, "processing": 0, "completed": 0, "failed": 0, "dead": 0},
    }
    a = mixed.find_job("a")
    assert data["oldest_pending"]["id"] == "a"
    assert data["oldest_pending"]["created_at"] == iso_time(a.created_at)
    assert 0 <= data["oldest_pending"]["age"] < 60
    assert data["workers"] == []


def test_status_table(cli: Callable[..., Result], mixed: JobStore, db: Path) -> None:
    lines = cli("status", "--no-workers").stdout.splitlines()
    assert lines[:9] == [
        f"database: {db}", "", "STATE       JOBS", "pending     3", "processing  0", "completed   1",
        "failed      1", "dead        2", "total       7",
    ]
    assert lines[9:13] == [
        "", "QUEUE   PENDING  PROCESSING  COMPLETED  FAILED  DEAD",
        "celery  2        0           1          1       2",
        "other   1        0           0          0       0",
    ]
    assert lines[13] == ""
    assert lines[14].startswith("oldest pending job: a, waiting ")


def test_status_asks_the_workers(cli: Callable[..., Result], mixed: JobStore) -> None:
    lines = cli("status", "--timeout", "0.3").stdout.splitlines()
    assert lines[-2:] == ["", "workers: none answered"]


def test_reading_never_creates_the_database(cli: Callable[..., Result], db: Path) -> None:
    status = json.loads(cli("status", "--format", "json").stdout)
    assert status["jobs"] == {"pending": 0, "processing": 0, "completed": 0, "failed": 0, "dead": 0, "total": 0}
    assert (status["queues"], status["oldest_pending"], status["workers"]) == ({}, None, [])
    assert cli("list").stdout == "ID  STATE  QUEUE  ATTEMPTS  TASK  CALL  NEXT RUN AT  UPDATED AT\n"
    assert cli("list", "--format", "json").stdout == "[]\n"
    assert cli("dlq", "list", "--format", "csv").stdout == "id,queue,attempts,task,call,last_error,updated_at\n"
    assert json.loads(cli("config", "show", "--format", "json").stdout)[0]["value"] == 3
    assert not db.exists()
