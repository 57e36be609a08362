"""Bad input: one `Error: ...` line on stderr, exit 2 for bad usage and 1 for a failed operation,
nothing on stdout, and nothing written (the database unchanged, or not created)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from .conftest import snapshot

NO_DB_CASES = [
    # (arguments, exit code, the one line on stderr)
    (["enqueue", '{"id":"job1","command":'], 2, "Error: malformed JSON: Expecting value at line 1 column 24"),
    (["enqueue", '{"id":"job1","max_retries":3}'], 2, "Error: the job has no command"),
    (["enqueue", '{"command":"   "}'], 2, 'Error: command must be a non-empty string, not "   "'),
    (["enqueue", "[1, 2]"], 2, "Error: a job must be a JSON object, not list"),
    (
        ["enqueue", '{"command":"echo","colour":"red"}'], 2,
        "Error: unknown key 'colour' (known: id, command, max_retries, priority, queue, delay, run_at, "
        "timeout, cwd, env)",
    ),
    (["enqueue", '{"command":"echo","priority":10}'], 2, "Error: priority must be between 0 and 9, not 10"),
    (["enqueue", '{"command":"echo","max_retries":true}'], 2, "Error: max_retries must be a whole number, not true"),
    (["enqueue", '{"command":"echo","delay":5,"run_at":"2030-01-01T00:00:00Z"}'], 2,
     "Error: give delay or run_at, not both"),
    (["enqueue", '{"command":"echo","run_at":"tomorrow"}'], 2,
     'Error: run_at must be an ISO 8601 time such as 2030-01-31T12:00:00Z, not "tomorrow"'),
    (["enqueue", '{"command":"echo","env":{"A":1}}'], 2, "Error: env value of A must be a string, not 1"),
    (["enqueue", '{"command":"echo","queue":"celery@vm.celery.pidbox"}'], 2,
     "Error: queue 'celery@vm.celery.pidbox' is reserved for Celery's remote control and events"),
    (["enqueue", "--command", "echo", "--max-retries", "-1"], 2, "Error: max_retries must be between 0 and 10000, not -1"),
    (["enqueue", "--command", "echo", "--max-retries", "20000"], 2,
     "Error: max_retries must be between 0 and 10000, not 20000"),
    (["enqueue", '{"command":"echo","max_retries":20000}'], 2, "Error: max_retries must be between 0 and 10000, not 20000"),
    (["enqueue", "--command", "echo", "--timeout", "0"], 2, "Error: timeout must be greater than 0, not 0"),
    (["enqueue", "--command", "echo", "--priority", "high"], 2,
     "Error: Invalid value for '--priority': 'high' is not a valid integer. (see 'queuectl enqueue --help')"),
    (["enqueue", "--command", "echo", "--env", "NOEQUALS"], 2,
     "Error: Invalid value for '--env': 'NOEQUALS' is not NAME=VALUE (see 'queuectl enqueue --help')"),
    (["enqueue", '{"command":"echo"}', "--priority", "3"], 2,
     "Error: give the job as JSON or with options, not both (see 'queuectl enqueue --help')"),
    (["enqueue"], 2, "Error: give one job as JSON, or --command, or --file (see 'queuectl enqueue --help')"),
    (["run", "echo", "--delay", "-5"], 2, "Error: delay must be at least 0, not -5"),
    (["list", "--state", "bogus"], 2,
     "Error: Invalid value for '--state': 'bogus' is not one of 'pending', 'processing', 'completed', "
     "'failed', 'dead'. (see 'queuectl list --help')"),
    (["list", "--limit", "-3"], 2,
     "Error: Invalid value for '--limit': -3 is not in the range x>=0. (see 'queuectl list --help')"),
    (["list", "--format", "xml"], 2,
     "Error: Invalid value for '--format': 'xml' is not one of 'table', 'json', 'csv'. "
     "(see 'queuectl list --help')"),
    (["config", "set", "max-retries", "-1"], 2, "Error: max-retries must be at least 0, not '-1'"),
    (["config", "set", "backoff-base", "fast"], 2, "Error: backoff-base must be a number, not 'fast'"),
    (["config", "set", "backoff-base", "0.5"], 2, "Error: backoff-base must be at least 1, not '0.5'"),
    (["config", "set", "visibility-timeout", "0"], 2, "Error: visibility-timeout must be greater than 0, not '0'"),
    (["config", "set", "retention", "nan"], 2, "Error: retention must be a finite number, not 'nan'"),
    (["config", "set", "colour", "red"], 2,
     "Error: unknown config key 'colour' (known: backoff-base, max-retries, retention, visibility-timeout)"),
    (["config", "get", "colour"], 2,
     "Error: unknown config key 'colour' (known: backoff-base, max-retries, retention, visibility-timeout)"),
    (["dlq", "retry"], 2, "Error: give one job ID or --all (see 'queuectl dlq retry --help')"),
    (["dlq", "retry", "job1", "--all"], 2, "Error: give a job ID or --all, not both (see 'queuectl dlq retry --help')"),
    (["dlq", "retry", "missing"], 1, "Error: no job with id 'missing'"),
    (["show", "missing"], 1, "Error: no job with id 'missing'"),
    (["cancel"], 2, "Error: give job IDs, or --queue and/or --state to choose the jobs (see 'queuectl cancel --help')"),
    (["cancel", "job1", "--queue", "q"], 2, "Error: give job IDs or --queue/--state, not both (see 'queuectl cancel --help')"),
    (["cancel", "--state", "dead"], 2,
     "Error: Invalid value for '--state': 'dead' is not one of 'pending', 'failed', 'processing'. "
     "(see 'queuectl cancel --help')"),
    (["cancel", "missing"], 1, "Error: no job with id 'missing'"),
    (["queue", "pause", "batch"], 1, "Error: no queue named 'batch' (queuectl queue list shows them)"),
    (["queue", "resume", "batch"], 1, "Error: no queue named 'batch' (queuectl queue list shows them)"),
    (["worker", "start", "--count", "0"], 2,
     "Error: Invalid value for '--count' / '-c': 0 is not in the range x>=1. (see 'queuectl worker start --help')"),
]


def assert_one_error_line(result: Result, code: int, line: str) -> None:
    assert (result.exit_code, result.stderr, result.stdout) == (code, line + "\n", "")


@pytest.mark.parametrize(("args", "code", "line"), NO_DB_CASES, ids=[" ".join(c[0])[:60] for c in NO_DB_CASES])
def test_bad_input_creates_no_database(cli: Callable[..., Result], db: Path, args: list[str], code: int,
                                       line: str) -> None:
    result = cli(*args)
    assert_one_error_line(result, code, line)
    assert not db.exists()
    assert list(db.parent.iterdir()) == []  # no -wal, no -shm, no data directory either


@pytest.fixture
def populated(cli: Callable[..., Result], db: Path) -> str:
    """A database holding job1 (pending), job2 (dead) and a setting; returns its snapshot."""
    from queuectl_kombu import JobStore

    assert cli("enqueue", '{"id":"job1","command":"echo hi","max_retries":3}').stdout == "job1\n"
    assert cli("enqueue", "--id", "job2", "--command", "exit 1", "--max-retries", "0").stdout == "job2\n"
    assert cli("config", "set", "max-retries", "2").exit_code == 0
    store = JobStore(str(db))
    job = store.find_job("job2")
    claimed = store.claim(["celery"], 10, "test-owner", 30)
    assert [c.id for c in claimed] == [store.find_job("job1").id, job.id]
    store.requeue(claimed[0].id, "test-owner")
    store.fail(job.id, "test-owner", "exit 1")
    store.close()
    before = snapshot(db)
    assert before is not None and "job1" in before
    return before


WITH_DB_CASES = [
    (["enqueue", '{"id":"job1","command":"echo again"}'], 1, "Error: a job with id 'job1' already exists"),
    (["enqueue", "--id", "job2", "--command", "echo again"], 1, "Error: a job with id 'job2' already exists"),
    (["run", "--id", "job1", "echo"], 1, "Error: a job with id 'job1' already exists"),
    (["enqueue", '{"id":"job3","command":"echo", "priority": -1}'], 2,
     "Error: priority must be between 0 and 9, not -1"),
    (["dlq", "retry", "job1"], 1, "Error: job job1 is pending, not dead"),
    (["dlq", "retry", "nope"], 1, "Error: no job with id 'nope'"),
    (["config", "set", "max-retries", "many"], 2, "Error: max-retries must be a whole number, not 'many'"),
    (["config", "set", "max-retries", "2.5"], 2, "Error: max-retries must be a whole number, not '2.5'"),
    (["config", "set", "retention", "-60"], 2, "Error: retention must be at least 0, not '-60'"),
    (["cancel", "job2"], 1, "Error: job job2: already finished, dead: exit 1; nothing changed"),
    (["cancel", "job1", "nope"], 1, "Error: no job with id 'nope'"),
    (["queue", "pause", "celery", "nope"], 1, "Error: no queue named 'nope' (queuectl queue list shows them)"),
    (["queue", "pause", "celery.pidbox"], 2,
     "Error: 'celery.pidbox' is a queue of Celery's remote control or events: it cannot be paused"),
    (["list", "--state", "waiting"], 2,
     "Error: Invalid value for '--state': 'waiting' is not one of 'pending', 'processing', 'completed', "
     "'failed', 'dead'. (see 'queuectl list --help')"),
]


@pytest.mark.parametrize(("args", "code", "line"), WITH_DB_CASES, ids=[" ".join(c[0])[:60] for c in WITH_DB_CASES])
def test_bad_input_leaves_the_database_unchanged(cli: Callable[..., Result], db: Path, populated: str,
                                                 args: list[str], code: int, line: str) -> None:
    result = cli(*args)
    assert_one_error_line(result, code, line)
    assert snapshot(db) == populated


def test_bulk_file_with_a_bad_line_writes_nothing(cli: Callable[..., Result], db: Path, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"command":"echo 1"}\n{"command":"echo 2"}\n\n{"id":"x","command":}\n{"command":"echo 4"}\n')
    result = cli("enqueue", "--file", str(jobs))
    assert_one_error_line(result, 2, f"Error: {jobs} line 4: malformed JSON: Expecting value at line 1 column 21")
    assert not db.exists()


def test_bulk_file_repeating_an_id_writes_nothing(cli: Callable[..., Result], db: Path, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id":"a","command":"echo 1"}\n{"id":"b","command":"echo 2"}\n{"id":"a","command":"echo 3"}\n')
    result = cli("enqueue", "--file", str(jobs))
    assert_one_error_line(result, 2, f"Error: {jobs} line 3: id 'a' is already used on line 1")
    assert not db.exists()


def test_bulk_file_with_an_existing_id_writes_nothing(cli: Callable[..., Result], db: Path, populated: str,
                                                      tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    lines = [f'{{"id":"new{i}","command":"echo {i}"}}\n' for i in range(2500)]
    jobs.write_text("".join(lines) + '{"id":"job2","command":"x"}\n')
    result = cli("enqueue", "--file", str(jobs), "--batch-size", "1000")
    assert_one_error_line(result, 1, f"Error: {jobs} line 2501: a job with id 'job2' already exists")
    assert snapshot(db) == populated


def test_missing_bulk_file(cli: Callable[..., Result], db: Path, tmp_path: Path) -> None:
    result = cli("enqueue", "--file", str(tmp_path / "nope.jsonl"))
    assert_one_error_line(result, 2, f"Error: cannot read {tmp_path / 'nope.jsonl'}: No such file or directory")
    assert not db.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["enqueue", "--command", "echo hi"],
        ["run", "echo hi"],
        ["status"],
        ["list"],
        ["config", "set", "max-retries", "1"],
        ["dlq", "purge"],
        ["worker", "start", "--detach"],
    ],
    ids=lambda a: " ".join(a),
)
def test_unreachable_database_path(cli: Callable[..., Result], tmp_path: Path, args: list[str]) -> None:
    missing_dir = tmp_path / "no" / "such" / "dir"
    result = cli("--db", str(missing_dir / "q.db"), *args)
    assert_one_error_line(
        result, 1, f"Error: cannot open database {missing_dir / 'q.db'}: directory {missing_dir} does not exist"
    )
    assert not (tmp_path / "no").exists()


def test_database_path_under_a_file(cli: Callable[..., Result], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = cli("--db", str(blocker / "q.db"), "enqueue", "--command", "echo")
    assert_one_error_line(
        result, 1, f"Error: cannot open database {blocker / 'q.db'}: directory {blocker} does not exist"
    )
    assert blocker.read_text() == "not a directory"


def test_not_a_database(cli: Callable[..., Result], tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("x" * 4096)
    result = cli("--db", str(other), "status", "--no-workers")
    assert_one_error_line(result, 1, f"Error: cannot open database {other}: the file is not a SQLite database")
    assert other.read_text() == "x" * 4096


def test_traceback_only_with_verbose(cli: Callable[..., Result], populated: str) -> None:
    quiet = cli("dlq", "retry", "nope")
    assert "Traceback" not in quiet.stderr
    loud = cli("-v", "dlq", "retry", "nope")
    assert loud.exit_code == 1
    assert loud.stderr.startswith("Traceback (most recent call last):\n")
    assert "queuectl_kombu.exceptions.JobNotFound: no job with id 'nope'" in loud.stderr
    assert loud.stderr.endswith("\nError: no job with id 'nope'\n")


@pytest.mark.parametrize(("last", "message"), [
    ('{"id":"x","command":}', "line 12001: malformed JSON: Expecting value at line 1 column 21"),
    ('{"id":"new7","command":"x"}', "line 12001: id 'new7' is already used on line 8"),
    ('{"id":"job2","command":"x"}', "line 12001: a job with id 'job2' already exists"),
    ('{"command":"x","priority":12}', "line 12001: priority must be between 0 and 9, not 12"),
])
def test_bulk_file_is_one_transaction(cli: Callable[..., Result], db: Path, populated: str, tmp_path: Path,
                                      last: str, message: str) -> None:
    """Into an existing database the file is checked as it is written, in one transaction: a bad
    last line, past the first 5,000-job statement, leaves the database as it was."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f'{{"id":"new{i}","command":"echo {i}"}}\n' for i in range(12000)) + last + "\n")
    result = cli("enqueue", "--file", str(jobs))
    assert_one_error_line(result, 1 if "already exists" in message else 2, f"Error: {jobs} {message}")
    assert snapshot(db) == populated
