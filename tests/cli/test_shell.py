"""run_shell and run_command: exit code, duration, output tails, environment, cwd, timeouts (and a
SIGTERM to the process running it) that kill the whole process group, and no shell for anything
but the job's own command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from queuectl.cli.remote import pid_running
from queuectl.shell import OUTPUT_LIMIT, CommandFailed, CommandTimedOut, check_outcome, run_command
from queuectl.tasks import run_shell

from tests.support.paths import REPO
from tests.support.processes import child_env
from tests.support.waiting import wait_for


def test_success_returns_a_json_able_outcome() -> None:
    result = run_shell("echo out; echo err >&2")
    assert json.loads(json.dumps(result)) == result
    assert {k: v for k, v in result.items() if k != "duration"} == {
        "command": "echo out; echo err >&2", "exit_code": 0, "stdout": "out\n", "stderr": "err\n",
        "stdout_bytes": 4, "stderr_bytes": 4, "timed_out": False,
    }
    assert 0 <= result["duration"] < 10


def test_non_zero_exit_fails_with_the_code_and_the_stderr_tail() -> None:
    with pytest.raises(CommandFailed) as info:
        run_shell("echo partial; echo 'disk full' >&2; exit 3")
    assert str(info.value) == "command exited with code 3; stderr: disk full"
    assert info.value.outcome is not None
    assert (info.value.outcome["exit_code"], info.value.outcome["stdout"]) == (3, "partial\n")


def test_output_keeps_the_last_64_kib_of_each_stream() -> None:
    # 200,000 numbered bytes on stdout, 100,000 on stderr: only the tails are kept.
    outcome = run_command(
        "python3 -c \"import sys; sys.stdout.write(''.join('%09d\\n' % i for i in range(20000))); "
        "sys.stderr.write('e' * 99999 + 'E')\""
    )
    assert OUTPUT_LIMIT == 65536
    assert (outcome.exit_code, outcome.stdout_bytes, outcome.stderr_bytes) == (0, 200000, 100000)
    assert len(outcome.stdout) == OUTPUT_LIMIT and len(outcome.stderr) == OUTPUT_LIMIT
    assert outcome.stdout.endswith("000019998\n000019999\n")
    assert outcome.stderr.endswith("eeeE")


def test_failure_message_quotes_only_the_end_of_a_long_stderr() -> None:
    with pytest.raises(CommandFailed) as info:
        run_shell("python3 -c \"import sys; sys.stderr.write('x' * 10000 + 'LAST')\"; exit 7")
    message = str(info.value)
    assert message.startswith("command exited with code 7; stderr: xxx")
    assert message.endswith("xLAST") and len(message) == len("command exited with code 7; stderr: ") + 2000


def test_environment_is_added_to_the_workers_and_cwd_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_WORKER", "kept")
    result = run_shell('printf "%s %s %s" "$FROM_WORKER" "$ADDED" "$(pwd)"', cwd=str(tmp_path), env={"ADDED": "yes"})
    assert result["stdout"] == f"kept yes {tmp_path}"


def test_no_user_string_but_the_command_reaches_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = f"$(touch {marker}); `touch {marker}`"
    weird_dir = tmp_path / "a dir; touch pwned"
    weird_dir.mkdir()
    result = run_shell('printf "%s" "$HOSTILE"', cwd=str(weird_dir), env={"HOSTILE": hostile})
    assert result["stdout"] == hostile
    assert not marker.exists() and not (weird_dir / "pwned").exists()


def test_missing_cwd_fails_the_job(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed) as info:
        run_shell("true", cwd=str(tmp_path / "gone"))
    assert str(info.value) == f"cannot run the command in {tmp_path / 'gone'}: No such file or directory"


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The shell starts a grandchild (sleep in a subshell) and waits: both must die at the timeout.
    command = f"(sleep 60; echo never) & echo $! > {pids}; echo started >&2; wait"
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as info:
        run_shell(command, timeout=1.0)
    elapsed = time.monotonic() - started
    assert str(info.value) == "command timed out after 1s and its process group was killed; stderr: started"
    assert info.value.outcome is not None and info.value.outcome["timed_out"] is True
    assert 1.0 <= elapsed < 10
    grandchild = int(pids.read_text())
    wait_for(lambda: not pid_running(grandchild), 5, what=f"process {grandchild} to be killed")


def test_background_children_of_a_finished_command_do_not_hang_it(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    started = time.monotonic()
    outcome = run_command(f"sleep 60 & echo $! > {pids}; echo done")
    assert (outcome.exit_code, outcome.stdout) == (0, "done\n")
    assert time.monotonic() - started < 10
    leftover = int(pids.read_text())
    wait_for(lambda: not pid_running(leftover), 5, what=f"left-over process {leftover} to be killed")


def test_check_outcome_passes_a_success_through() -> None:
    outcome = run_command("exit 0")
    assert check_outcome(outcome) == outcome.as_dict()


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (its SigCgt mask in /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_sigterm_to_the_process_running_a_command_kills_its_group_too(tmp_path: Path) -> None:
    # What Celery's revoke(terminate=True) does to a prefork pool process (SIGTERM at its default
    # action there): the command runs in a session of its own, which the signal does not reach.
    pids = tmp_path / "pids"
    script = f"from queuectl.shell import run_command; run_command('(sleep 60) & echo $! > {pids}; wait')"
    proc = subprocess.Popen([sys.executable, "-c", script], env=child_env(REPO), start_new_session=True)
    try:
        wait_for(lambda: pids.exists() and pids.read_text().strip(), 30, what="the command to start")
        grandchild = int(pids.read_text())
        # run_command catches SIGTERM once the command has started: a loaded machine can run the
        # command's first line before that (CI once did, and the signal found nobody to kill)
        wait_for(lambda: _catches(proc.pid, signal.SIGTERM), 30, what="run_command's SIGTERM handler")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == -signal.SIGTERM  # it still dies of the signal, as Celery expects
        wait_for(lambda: not pid_running(grandchild), 5, what=f"process {grandchild} to be killed")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
