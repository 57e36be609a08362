"""`queuectl enqueue` (JSON, options, --file) and `queuectl run`: only the id on stdout, and the job
in the database exactly as described."""

from __future__ import annotations

import base64
import json
import os
import pty
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import Result

from queuectl_kombu import JobState, JobStore
from queuectl_kombu import Job
from queuectl_kombu import MAX_RETRIES_HEADER, UNIQUE_HEADER

from .conftest import Processes


def job_of(db: Path, key: str) -> Job:
    store = JobStore(str(db))
    try:
        return store.find_job(key)
    finally:
        store.close()


def body_of(job: Job) -> list:
    message = job.message()
    return json.loads(base64.b64decode(message["body"]))


def test_json_form_prints_only_the_id(cli: Callable[..., Result], db: Path) -> None:
    result = cli("enqueue", '{"id":"job1","command":"echo hi","max_retries":3}')
    assert (result.exit_code, result.stdout, result.stderr) == (0, "job1\n", "")
    job = job_of(db, "job1")
    assert (job.task_name, job.queue, job.state, job.priority, job.attempts, job.max_retries) == (
        "queuectl.run_shell", "celery", JobState.PENDING, 0, 0, 3,
    )
    assert job.task_call() == ([], {"command": "echo hi"})
    headers = job.message()["headers"]
    assert (headers["task"], headers["id"], headers[MAX_RETRIES_HEADER], headers[UNIQUE_HEADER]) == (
        "queuectl.run_shell", "job1", 3, 1,
    )


def test_every_option(cli: Callable[..., Result], db: Path, tmp_path: Path) -> None:
    before = time.time()
    result = cli(
        "enqueue", "--command", "make test", "--id", "build-7", "--max-retries", "5", "--priority", "7",
        "--queue", "batch", "--delay", "60", "--timeout", "30", "--cwd", str(tmp_path),
        "--env", "A=1", "--env", "B=x=y",
    )
    assert (result.exit_code, result.stdout, result.stderr) == (0, "build-7\n", "")
    job = job_of(db, "build-7")
    assert (job.queue, job.priority, job.max_retries, job.state) == ("batch", 7, 5, JobState.PENDING)
    assert before + 59 <= job.next_run_at <= time.time() + 61
    assert job.task_call() == (
        [], {"command": "make test", "cwd": str(tmp_path), "env": {"A": "1", "B": "x=y"}, "timeout": 30.0}
    )


def test_json_form_with_every_key(cli: Callable[..., Result], db: Path) -> None:
    job_json = json.dumps({
        "id": "nightly", "command": "backup.sh", "max_retries": 0, "priority": 9, "queue": "ops",
        "run_at": "2030-01-31T14:00:00+02:00", "timeout": 3600, "cwd": "/srv", "env": {"TARGET": "s3"},
    })
    assert cli("enqueue", job_json).stdout == "nightly\n"
    job = job_of(db, "nightly")
    assert job.next_run_at == datetime(2030, 1, 31, 12, 0, tzinfo=timezone.utc).timestamp()
    assert (job.queue, job.priority, job.max_retries) == ("ops", 9, 0)
    assert job.task_call() == ([], {"command": "backup.sh", "cwd": "/srv", "env": {"TARGET": "s3"}, "timeout": 3600.0})


def test_naive_run_at_means_utc(cli: Callable[..., Result], db: Path) -> None:
    assert cli("enqueue", "--command", "true", "--id", "n", "--run-at", "2030-01-31T12:00:00").exit_code == 0
    assert job_of(db, "n").next_run_at == datetime(2030, 1, 31, 12, 0, tzinfo=timezone.utc).timestamp()


def test_without_an_id_a_uuid_is_made(cli: Callable[..., Result], db: Path) -> None:
    result = cli("enqueue", '{"command":"echo hi"}')
    job_id = result.stdout.strip()
    assert result.stdout == f"{uuid.UUID(job_id)}\n"
    assert job_of(db, job_id).task_call() == ([], {"command": "echo hi"})


def test_run_is_the_short_form(cli: Callable[..., Result], db: Path) -> None:
    result = cli("run", "--id", "r1", "--priority", "2", "echo hi")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "r1\n", "")
    job = job_of(db, "r1")
    assert (job.priority, job.task_call()) == (2, ([], {"command": "echo hi"}))


def test_bulk_file_in_batches(cli: Callable[..., Result], db: Path, tmp_path: Path) -> None:
    lines = []
    for i in range(2500):
        job: dict = {"command": f"echo {i}"}
        if i % 100 == 0:
            job.update(id=f"b-{i}", max_retries=1, priority=5)
        if i % 500 == 1:
            job["queue"] = "other"
        lines.append(json.dumps(job))
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n\n")
    result = cli("enqueue", "--file", str(path), "--batch-size", "1000", "--queue", "bulk", "--delay", "0")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "enqueued 2500 jobs\n")
    store = JobStore(str(db))
    per_queue = {q: c[JobState.PENDING] for q, c in store.counts_by_queue().items()}
    assert per_queue == {"bulk": 2495, "other": 5}
    special = store.find_job("b-700")
    assert (special.max_retries, special.priority, special.queue) == (1, 5, "bulk")
    assert special.task_call() == ([], {"command": "echo 700"})
    assert store.list_jobs(limit=1)[0].task_call() == ([], {"command": "echo 0"})
    store.close()


def test_bulk_messages_are_what_apply_async_sends(cli: Callable[..., Result], db: Path, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text('{"id":"bulk","command":"echo hi","max_retries":2,"priority":3}\n')
    assert cli("enqueue", "--file", str(path)).exit_code == 0
    assert cli("enqueue", '{"id":"single","command":"echo hi","max_retries":2,"priority":3}').exit_code == 0
    bulk, single = job_of(db, "bulk"), job_of(db, "single")
    m_bulk, m_single = bulk.message(), single.message()
    assert set(m_bulk) == set(m_single)
    assert set(m_bulk["headers"]) - {UNIQUE_HEADER} == set(m_single["headers"]) - {UNIQUE_HEADER}
    assert set(m_bulk["properties"]) == set(m_single["properties"])
    for key in ("content-type", "content-encoding"):
        assert m_bulk[key] == m_single[key]
    assert m_bulk["properties"]["priority"] == m_single["properties"]["priority"] == 3
    assert m_bulk["properties"]["delivery_info"] == m_single["properties"]["delivery_info"]
    assert body_of(bulk) == body_of(single)
    assert (bulk.max_retries, bulk.priority) == (single.max_retries, single.priority) == (2, 3)


def test_bulk_from_stdin(cli: Callable[..., Result], db: Path) -> None:
    result = cli("enqueue", "--file", "-", input='{"id":"s1","command":"echo 1"}\n{"command":"echo 2"}\n')
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "enqueued 2 jobs\n")
    assert job_of(db, "s1").task_call() == ([], {"command": "echo 1"})


def test_empty_file_enqueues_nothing(cli: Callable[..., Result], db: Path, tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    result = cli("enqueue", "--file", str(path))
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "enqueued 0 jobs\n")
    assert not db.exists()


def test_default_database_is_in_the_data_directory(cli: Callable[..., Result], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUEUECTL_DB")
    default = tmp_path / "xdg" / "queuectl" / "queuectl.db"
    assert json.loads(cli("status", "--format", "json").stdout)["database"] == str(default)
    assert not (tmp_path / "xdg").exists()  # reading creates nothing
    assert cli("run", "--id", "d1", "echo").stdout == "d1\n"
    assert job_of(default, "d1").task_call() == ([], {"command": "echo"})


def test_bulk_shows_progress_on_a_terminal(procs: Processes, db: Path, tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(f'{{"command":"echo {i}"}}\n' for i in range(3000)))
    leader, follower = pty.openpty()
    with open(tmp_path / "out", "wb") as out:
        proc = subprocess.Popen([procs.exe, "enqueue", "--file", str(path), "--batch-size", "1000"], env=procs.env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=follower, start_new_session=True)
    os.close(follower)
    seen = b""
    while True:  # read the terminal until the command closes it
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait(60) == 0
    text = seen.decode(errors="replace")
    assert "enqueuing" in text and "3000/3000" in text
    assert text.rstrip().endswith("enqueued 3000 jobs")
    assert (tmp_path / "out").read_text() == ""
