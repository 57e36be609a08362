"""`queuectl worker start` in the foreground (it becomes the Celery worker), `status` while a job
runs, and `worker stop` when no worker runs."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

from queuectl_kombu import JobState, JobStore

from tests.support.waiting import wait_for

from .conftest import Processes


def test_foreground_worker_is_celery_on_the_cli_database(procs: Processes, cli: Callable[..., Result], db: Path,
                                                         tmp_path: Path) -> None:
    proc = procs.start_foreground("--count", "2", "--queues", "fg,bulk")
    out = tmp_path / "worker.out"
    wait_for(lambda: "ready." in out.read_text(errors="replace") or proc.poll() is not None, 60,
             what="the worker to be ready")
    assert proc.poll() is None, out.read_text()
    argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert [a.decode() for a in argv[1:8]] == ["-m", "celery", "-A", "queuectl", "worker", "-c", "2"]
    assert argv[-2:] == [b"-Q", b"fg,bulk"]
    environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
    assert f"QUEUECTL_DB={db}".encode() in environ

    assert cli("enqueue", "--id", "elsewhere", "--command", "true").exit_code == 0  # queue celery: not consumed
    assert cli("run", "--id", "fg1", "--queue", "fg", "echo from fg").exit_code == 0
    jobs = tmp_path / "bulk.jsonl"
    jobs.write_text('{"id":"bulk1","command":"echo from bulk"}\n')
    assert cli("enqueue", "--file", str(jobs), "--queue", "bulk").exit_code == 0
    store = JobStore(str(db))
    for key in ("fg1", "bulk1"):
        wait_for(lambda key=key: store.find_job(key).state is JobState.COMPLETED, 30, what=f"job {key} to complete")
    assert json.loads(cli("show", "bulk1", "--format", "json").stdout)["result"]["value"]["stdout"] == "from bulk\n"

    # A setting changed while the worker runs applies to its next failure, without a restart.
    assert cli("config", "set", "max-retries", "0").exit_code == 0
    assert cli("run", "--id", "once", "--queue", "fg", "exit 4").exit_code == 0
    wait_for(lambda: store.find_job("once").state is JobState.DEAD, 30, what="job once to be dead")
    assert store.find_job("once").attempts == 1

    assert cli("run", "--id", "slow", "--queue", "fg", "sleep 3").exit_code == 0
    wait_for(lambda: store.find_job("slow").state is JobState.PROCESSING, 30, what="job slow to run")
    status = json.loads(cli("status", "--format", "json").stdout)
    [worker] = status["workers"]
    assert (worker["pid"], worker["concurrency"], worker["active"], worker["active_jobs"]) == (proc.pid, 2, 1, ["slow"])
    assert worker["name"].startswith("queuectl-") and worker["hostname"] == os.uname().nodename
    assert status["jobs"]["processing"] == 1 and status["queues"]["fg"]["processing"] == 1

    os.kill(proc.pid, signal.SIGTERM)  # warm shutdown: the running job finishes first
    assert proc.wait(60) == 0
    assert (store.find_job("slow").state, store.find_job("elsewhere").state) == (JobState.COMPLETED, JobState.PENDING)
    store.close()


def test_worker_stop_without_workers(cli: Callable[..., Result], db: Path) -> None:
    nothing = cli("worker", "stop")
    assert (nothing.exit_code, nothing.stdout, nothing.stderr) == (0, "", "no workers running (no database yet)\n")
    assert not db.exists()
    assert cli("enqueue", "--id", "j", "--command", "true").exit_code == 0
    idle = cli("worker", "stop", "--inspect-timeout", "0.3")
    assert (idle.exit_code, idle.stdout, idle.stderr) == (0, "", "no workers running\n")
    assert [(r["id"], r["state"]) for r in json.loads(cli("list", "--format", "json").stdout)] == [("j", "pending")]
