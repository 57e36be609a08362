"""`python -m queuectl` is the `queuectl` command, and click's shell completion works through the
CLI's own group (QueuectlGroup.main): the scripts for bash, zsh and fish, and the values it
completes (commands, choices, config keys, the database's queues). Real subprocesses, as a
shell runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from .conftest import Processes


def python_m(procs: Processes, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m queuectl ARGS` with this interpreter, in the test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "queuectl", *args], env=env or procs.env, capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL, start_new_session=True,
    )


def complete(procs: Processes, line: str, *, shell: str = "bash") -> list[str]:
    """What click's completion answers for the command line `line` (completing its last word;
    a line ending in a space completes a new, empty word), one `type,value` item per line."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    env = dict(procs.env, COMP_WORDS=line, COMP_CWORD=str(cword), _QUEUECTL_COMPLETE=f"{shell}_complete")
    proc = subprocess.run([procs.exe], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, start_new_session=True)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    return [item for item in proc.stdout.splitlines() if item]


# -- python -m queuectl ------------------------------------------------------------------------------


def test_python_m_is_the_console_script(procs: Processes) -> None:
    for args in (["--help"], ["--version"], ["worker", "--help"]):
        module, script = python_m(procs, *args), procs.run(*args)
        assert module.returncode == 0, module.stderr
        assert (module.returncode, module.stdout, module.stderr) == (script.returncode, script.stdout, script.stderr)
    assert python_m(procs, "--help").stdout.startswith("Usage: queuectl [OPTIONS] COMMAND [ARGS]...")
    assert python_m(procs, "--version").stdout.startswith("queuectl, version ")


def test_python_m_runs_a_command(procs: Processes, db: Path) -> None:
    added = python_m(procs, "enqueue", "--id", "job1", "--command", "echo hi")
    assert (added.returncode, added.stdout, added.stderr) == (0, "job1\n", "")
    assert db.exists()
    rows = json.loads(python_m(procs, "list", "--format", "json").stdout)
    assert [(row["id"], row["state"]) for row in rows] == [("job1", "pending")]


@pytest.mark.parametrize("args, code", [
    (["list", "--state", "bogus"], 2),  # click's usage error
    (["enqueue", '{"id":"x"}'], 2),  # the CLI's own bad input
    (["bogus"], 2),  # no such command
    (["show", "missing"], 1),  # a failed operation
    ([], 2),  # no command: the help, exit 2
])
def test_python_m_exit_codes_are_the_console_scripts(procs: Processes, args: list[str], code: int) -> None:
    module, script = python_m(procs, *args), procs.run(*args)
    assert module.returncode == code, module.stderr
    assert (module.returncode, module.stdout, module.stderr) == (script.returncode, script.stdout, script.stderr)


# -- shell completion ------------------------------------------------------------------------------


@pytest.mark.parametrize("shell, marker", [
    ("bash", "complete -o nosort -F _queuectl_completion queuectl"),
    ("zsh", "compdef _queuectl_completion queuectl"),
    ("fish", "complete --no-files --command queuectl --arguments"),
])
def test_completion_scripts(procs: Processes, db: Path, shell: str, marker: str) -> None:
    env = dict(procs.env, _QUEUECTL_COMPLETE=f"{shell}_source")
    proc = subprocess.run([procs.exe], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, start_new_session=True)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert marker in proc.stdout
    assert "_QUEUECTL_COMPLETE" in proc.stdout
    assert not db.exists()  # a completion touches no database
    # `python -m queuectl` answers to the same variable (its program name is queuectl)
    assert python_m(procs, env=env).stdout == proc.stdout


def test_completion_of_commands_and_choices(procs: Processes, db: Path) -> None:
    assert complete(procs, "queuectl dl") == ["plain,dlq"]
    assert complete(procs, "queuectl dlq ") == ["plain,list", "plain,purge", "plain,retry"]
    assert complete(procs, "queuectl list --state p") == ["plain,pending", "plain,processing"]
    assert complete(procs, "queuectl cancel --state ") == ["plain,pending", "plain,failed", "plain,processing"]
    assert complete(procs, "queuectl status --format j") == ["plain,json"]
    assert complete(procs, "queuectl config get ") == [
        "plain,backoff-base", "plain,max-retries", "plain,retention", "plain,visibility-timeout"]
    assert complete(procs, "queuectl config set max") == ["plain,max-retries"]
    assert complete(procs, "queuectl --db ") == ["file,"]  # the shell completes file names
    assert complete(procs, "queuectl dl", shell="zsh")[:2] == ["plain", "dlq"]  # then its help
    assert not db.exists()


def test_completion_of_queue_names(procs: Processes, cli: Callable[..., Result], db: Path, tmp_path: Path) -> None:
    assert complete(procs, "queuectl queue pause ") == []  # no database yet: nothing, and none created
    assert not db.exists()
    for queue in ("batch", "celery", "bulk"):
        assert cli("enqueue", "--command", "true", "--queue", queue).exit_code == 0
    assert complete(procs, "queuectl queue pause ") == ["plain,batch", "plain,bulk", "plain,celery"]
    assert complete(procs, "queuectl queue resume b") == ["plain,batch", "plain,bulk"]
    assert complete(procs, "queuectl list --queue c") == ["plain,celery"]
    assert complete(procs, "queuectl enqueue --queue bu") == ["plain,bulk"]
    assert complete(procs, "queuectl cancel --queue ba") == ["plain,batch"]
    assert complete(procs, "queuectl worker start -Q celery,b") == ["plain,celery,batch", "plain,celery,bulk"]
    # --db on the command line wins over QUEUECTL_DB; a file that is not a queuectl database offers nothing
    other = tmp_path / "other.db"
    assert complete(procs, f"queuectl --db {other} queue pause ") == []
    assert not other.exists()
    other.write_text("not a database")
    assert complete(procs, f"queuectl --db {other} queue pause ") == []
