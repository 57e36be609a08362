"""`queuectl dlq list|retry|purge`, `queuectl config show|get|set` and the help of every command."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from queuectl.cli import cli as cli_group
from queuectl_kombu import JobState, JobStore

OWNER = "test-owner"


@pytest.fixture
def dead(cli: Callable[..., Result], db: Path) -> JobStore:
    """Jobs x, y, z dead after 3 attempts, w pending."""
    for key in ("x", "y", "z", "w"):
        assert cli("enqueue", "--id", key, "--command", f"exit 1 # {key}", "--max-retries", "2").exit_code == 0
    store = JobStore(str(db))
    now = time.time()
    for round_ in range(3):
        store.clock = lambda round_=round_: now + 10 * round_  # each retry is due in the next round: no sleeping
        for claimed in store.claim(["celery"], 3, OWNER, 60):
            store.fail(claimed.id, OWNER, "CommandFailed: command exited with code 1", backoff_base=2)
    store.clock = time.time
    assert {j.task_id for j in store.list_jobs(JobState.DEAD)} == {"x", "y", "z"}
    return store


def test_dlq_list(cli: Callable[..., Result], dead: JobStore) -> None:
    rows = json.loads(cli("dlq", "list", "--format", "json").stdout)
    assert [(r["id"], r["state"], r["attempts"], r["last_error"]) for r in rows] == [
        (k, "dead", 3, "CommandFailed: command exited with code 1") for k in ("x", "y", "z")
    ]
    two = cli("dlq", "list", "--format", "csv", "--limit", "2").stdout
    assert [r["id"] for r in csv.DictReader(io.StringIO(two))] == ["x", "y"]
    table = cli("dlq", "list").stdout.splitlines()
    assert table[0].split()[:5] == ["ID", "QUEUE", "ATTEMPTS", "TASK", "CALL"]
    assert [line.split()[:3] for line in table[1:]] == [[k, "celery", "3"] for k in ("x", "y", "z")]


def test_dlq_retry_one(cli: Callable[..., Result], dead: JobStore) -> None:
    result = cli("dlq", "retry", "y")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "job y is pending again\n")
    job = dead.find_job("y")
    assert (job.state, job.attempts) == (JobState.PENDING, 0)
    assert [r["id"] for r in json.loads(cli("dlq", "list", "--format", "json").stdout)] == ["x", "z"]
    again = cli("dlq", "retry", "y")
    assert (again.exit_code, again.stderr) == (1, "Error: job y is pending, not dead\n")


def test_dlq_retry_all(cli: Callable[..., Result], dead: JobStore) -> None:
    result = cli("dlq", "retry", "--all")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "3 dead job(s) back to pending\n")
    assert [(j.task_id, j.state, j.attempts) for j in dead.list_jobs()] == [
        ("x", JobState.PENDING, 0), ("y", JobState.PENDING, 0), ("z", JobState.PENDING, 0), ("w", JobState.PENDING, 0),
    ]
    assert cli("dlq", "retry", "--all").stderr == "0 dead job(s) back to pending\n"


def test_dlq_purge(cli: Callable[..., Result], dead: JobStore) -> None:
    result = cli("dlq", "purge")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "deleted 3 dead job(s)\n")
    assert [j.task_id for j in dead.list_jobs()] == ["w"]
    assert cli("dlq", "list", "--format", "json").stdout == "[]\n"


def test_config_show_get_set(cli: Callable[..., Result], db: Path) -> None:
    assert cli("config", "get", "max-retries").stdout == "3\n"
    result = cli("config", "set", "max-retries", "5")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "max-retries = 5\n")
    assert cli("config", "set", "backoff_base", "1.5").stderr == "backoff-base = 1.5\n"  # either spelling
    assert cli("config", "set", "retention", "0").exit_code == 0
    assert cli("config", "get", "max_retries").stdout == "5\n"
    assert cli("config", "get", "backoff-base").stdout == "1.5\n"
    assert JobStore(str(db)).settings(fresh=True) == {
        "max_retries": 5, "backoff_base": 1.5, "visibility_timeout": 30.0, "retention": 0.0,
    }
    shown = json.loads(cli("config", "show", "--format", "json").stdout)
    assert [(r["key"], r["value"], r["default"]) for r in shown] == [
        ("max-retries", 5, 3), ("backoff-base", 1.5, 2.0), ("visibility-timeout", 30.0, 30.0),
        ("retention", 0.0, 86400.0),
    ]
    table = cli("config", "show").stdout.splitlines()
    assert table[0].split() == ["KEY", "VALUE", "DEFAULT", "DESCRIPTION"]
    assert [line.split()[:3] for line in table[1:]] == [
        ["max-retries", "5", "3"], ["backoff-base", "1.5", "2"], ["visibility-timeout", "30", "30"],
        ["retention", "0", "86400"],
    ]
    rows = list(csv.DictReader(io.StringIO(cli("config", "show", "--format", "csv").stdout)))
    assert rows[1] == {"key": "backoff-base", "value": "1.5", "default": "2", "description": rows[1]["description"]}


COMMANDS = [
    ["enqueue"], ["run"], ["worker"], ["worker", "start"], ["worker", "stop"], ["status"], ["list"], ["show"],
    ["dlq"], ["dlq", "list"], ["dlq", "retry"], ["dlq", "purge"], ["config"], ["config", "show"],
    ["config", "get"], ["config", "set"], ["cancel"], ["queue"], ["queue", "list"], ["queue", "pause"],
    ["queue", "resume"],
]


def test_main_help_lists_every_command_with_an_example(cli: Callable[..., Result]) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    commands = result.stdout.split("Commands:\n")[1].split("\n\n")[0]
    assert [line.split()[0] for line in commands.splitlines()] == sorted(cli_group.commands)
    examples = [line.strip() for line in result.stdout.split("Examples:\n")[1].splitlines()]
    for path in COMMANDS:
        if path not in (["worker"], ["dlq"], ["config"], ["queue"], ["queue", "list"], ["queue", "resume"]):
            assert any(line.startswith(f"queuectl {' '.join(path)}") for line in examples), path


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p))
def test_every_command_help_has_an_example(cli: Callable[..., Result], path: list[str]) -> None:
    result = cli(*path, "--help")
    assert (result.exit_code, result.stderr) == (0, "")
    assert f"Usage: queuectl {' '.join(path)} " in result.stdout
    example = result.stdout.split("Examples:\n")[1].splitlines()[0]
    assert example.strip().startswith(f"queuectl {' '.join(path)}")
