"""Issue 7, part 4: security checks with real workers.

* The database and its -wal and -shm files are created 0600, whatever the umask.
* A worker warns loudly (WARNING in its log) when the file is group- or world-writable.
* Pickle is refused unless explicitly enabled: a pickled message published by kombu is not
  executed by a default ``celery -A queuectl`` worker.
* No user string other than the job's own command reaches a shell: a job id, a queue name, an env
  value or a cwd holding ``$(touch ...)`` or ``; touch ...`` runs nothing.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from tests.support.paths import queuectl_executable
from tests.support.waiting import wait_for

from .crashkit import Rig, record_figures

#: Runs the rest of the command line with umask 000 (exec keeps the pid).
UMASK_000 = ["/bin/sh", "-c", 'umask 000; exec "$@"', "sh"]


def mode(path: Path | str) -> str:
    return oct(stat.S_IMODE(os.stat(path).st_mode))


def state_of(rig: Rig, task_id: str) -> str | None:
    rows = rig.sql("SELECT state FROM jobs WHERE task_id = ?", (task_id,))
    return rows[-1][0] if rows else None


def wait_completed(rig: Rig, task_id: str, timeout: float = 30.0) -> None:
    wait_for(lambda: state_of(rig, task_id) == "completed", timeout, what=f"job {task_id} to complete",
             on_fail=rig.describe)


def test_database_wal_and_shm_are_created_0600_whatever_the_umask(rig: Rig) -> None:
    # the worker creates the file, under umask 000
    rig.worker(app="queuectl", concurrency=1, wrapper=UMASK_000)
    done = rig.run_cli("enqueue", "--id", "probe", "--command", "true")
    assert done.returncode == 0, done.stderr
    wait_completed(rig, "probe")
    # the worker holds the file open: the WAL and the shared-memory file exist now
    modes = {suffix or "db": mode(f"{rig.db}{suffix}") for suffix in ("", "-wal", "-shm")}
    assert modes == {"db": "0o600", "-wal": "0o600", "-shm": "0o600"}, modes

    # the CLI creating a file under umask 000
    other = rig.tmp / "cli-made.db"
    made = rig.run([*UMASK_000, queuectl_executable(), "--db", str(other), "run", "true"], 60)
    assert made.returncode == 0, made.stderr
    assert mode(other) == "0o600"
    record_figures("security_file_modes", {"worker_made": modes, "cli_made": mode(other), "umask": "000"})


@pytest.mark.parametrize("chmod", [0o660, 0o606])
def test_worker_warns_when_the_database_is_writable_by_others(rig: Rig, chmod: int) -> None:
    made = rig.run_cli("config", "set", "max-retries", "3")
    assert made.returncode == 0, made.stderr
    os.chmod(rig.db, chmod)
    worker = rig.worker(app="queuectl", concurrency=1)
    warnings = [line for line in worker.output().splitlines() if "WARNING" in line and "writable" in line]
    assert warnings, worker.tail()
    assert str(rig.db) in warnings[0] and ("its group" if chmod == 0o660 else "everyone") in warnings[0], warnings
    record_figures(f"security_warns_{oct(chmod)}", {"warning": warnings[0].split("] ", 1)[-1]})


#: A client that publishes run_shell through kombu with serializer="pickle" (argv: db, marker).
PICKLE_PUBLISHER = """
import sys, uuid
from kombu import Connection, Exchange, Producer
import queuectl_kombu  # the sqlite:// scheme
db, marker = sys.argv[1], sys.argv[2]
task_id = "pickled-" + uuid.uuid4().hex[:8]
body = ((), {"command": "touch " + marker}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
headers = {"lang": "py", "task": "queuectl.run_shell", "id": task_id, "root_id": task_id, "parent_id": None,
           "group": None, "retries": 0, "eta": None, "expires": None, "argsrepr": "()", "kwargsrepr": "{}",
           "origin": "attacker", "ignore_result": False}
with Connection("sqlite:///" + db) as conn:
    producer = Producer(conn.default_channel)
    producer.publish(body, routing_key="celery", exchange=Exchange("celery", type="direct"),
                     serializer="pickle", headers=headers, declare=[], retry=False)
print(task_id)
"""


def test_pickle_is_refused_by_a_default_worker(rig: Rig) -> None:
    worker = rig.worker(app="queuectl", concurrency=1)
    marker = rig.tmp / "pickle-ran"
    sent = rig.run([sys.executable, "-c", PICKLE_PUBLISHER, str(rig.db), str(marker)], 60)
    assert sent.returncode == 0, sent.stderr
    pickled_id = sent.stdout.strip()
    # a JSON job sent after it: once it ran, the worker has dealt with the pickled message
    after = rig.tmp / "json-ran"
    done = rig.run_cli("enqueue", "--id", "after-pickle", "--command", f"touch {after}")
    assert done.returncode == 0, done.stderr
    wait_completed(rig, "after-pickle")
    assert after.exists()
    wait_for(lambda: state_of(rig, pickled_id) not in ("pending", "processing"), 10,
             what="the pickled message to be dealt with", on_fail=rig.describe)
    assert not marker.exists(), "a pickled message was executed"
    refusals = [line for line in worker.output().splitlines()
                if "pickle" in line and ("ContentDisallowed" in line or "Refusing" in line)]
    assert refusals, worker.tail()
    row_state = state_of(rig, pickled_id)

    # the control: the same message IS run by a worker that enables pickle explicitly
    worker.terminate()
    worker.wait(30)
    enabled = rig.tmp / "pickle-ran-when-enabled"
    sent = rig.run([sys.executable, "-c", PICKLE_PUBLISHER, str(rig.db), str(enabled)], 60)
    assert sent.returncode == 0, sent.stderr
    rig.worker(app="crashapp", concurrency=1,
               env=rig.env(conf={"accept_content": ["json", "pickle"]}, C_FORCE_ROOT="1"))
    wait_for(enabled.exists, 30, what="the pickled job to run on a worker that accepts pickle", on_fail=rig.describe)
    record_figures("security_pickle", {"executed_by_default_worker": False, "row_state": row_state,
                                       "worker_says": refusals[0].split("] ", 1)[-1][:200],
                                       "executed_when_pickle_enabled": True})


def test_no_user_string_but_the_command_reaches_a_shell(rig: Rig, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()

    def touch(name: str) -> str:
        return str(marks / name)

    queue = f"q; touch {touch('queue-semicolon')}"
    odd_cwd = tmp_path / f"$(touch {touch('cwd-subst')})"
    odd_cwd.mkdir(parents=True)
    env_value = f"$(touch {touch('env-subst')}); touch {touch('env-semicolon')}"
    out = tmp_path / "out"
    out.mkdir()
    jobs = [
        {"id": f"$(touch {touch('id-subst')})", "command": f"echo id > {out}/1"},
        {"id": f"x; touch {touch('id-semicolon')}", "command": f"echo id > {out}/2"},
        {"id": f"`touch {touch('id-backtick')}`", "command": f"echo id > {out}/3", "queue": queue},
        {"id": "env-job", "command": f"printf '%s' \"$V\" > {out}/env", "env": {"V": env_value}},
        {"id": "cwd-job", "command": f"pwd > {out}/cwd", "cwd": str(odd_cwd)},
    ]
    for job in jobs[:2]:  # one at a time (through Celery's apply_async) ...
        done = rig.run_cli("enqueue", json.dumps(job))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == job["id"]
    bulk = tmp_path / "jobs.jsonl"  # ... and the bulk path
    bulk.write_text("".join(json.dumps(job) + "\n" for job in jobs[2:]))
    done = rig.run_cli("enqueue", "--file", str(bulk))
    assert done.returncode == 0, done.stderr
    # the odd queue name also reaches the worker's command line (a list: no shell)
    rig.worker(app="queuectl", concurrency=1, queues=["celery", queue])
    for job in jobs:
        wait_completed(rig, job["id"])
    shown = rig.run_cli("show", jobs[0]["id"], "--format", "json")
    assert shown.returncode == 0 and jobs[0]["id"] in shown.stdout, shown
    assert sorted(p.name for p in marks.iterdir()) == [], "a user string other than the command ran"
    assert (out / "env").read_text() == env_value  # the value arrived intact, as data
    assert (out / "cwd").read_text().strip() == str(odd_cwd)
    assert all((out / name).read_text().strip() == "id" for name in ("1", "2", "3"))
    record_figures("security_no_injection", {"jobs": len(jobs), "markers_created": 0})
