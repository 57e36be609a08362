"""Issue 7, part 3: faults of the file system and of the database file.

(a) The disk fills up: producers get a clear error, nothing is half-written, and the queue
    resumes (publish and consume) once space returns. A small tmpfs is mounted for it (skipped,
    with the reason, where mounting is not permitted) and always unmounted in teardown.
(b) The database file is deleted, or replaced, under a running worker: a clear error, not
    silent loss.
(c) A worker pointed at a read-only database fails at start with one line naming the path.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.spool import spooled_task_ids
from tests.support.waiting import wait_for

from .crashkit import Mount, Rig, record_figures

#: A publish client: one apply_async per id (without Celery's publish retries unless CRASH_RETRY=1),
#: prints one JSON line per attempt.
PUBLISH = """
import json, os, sys, crashapp
seconds = float(os.environ.get("CRASH_SLEEP", "0"))
retry = os.environ.get("CRASH_RETRY") == "1"
for task_id in sys.argv[1:]:
    try:
        crashapp.work.apply_async((seconds,), task_id=task_id, retry=retry)
        print(json.dumps({"id": task_id, "ok": True}), flush=True)
    except Exception as exc:
        print(json.dumps({"id": task_id, "ok": False, "error": f"{type(exc).__module__}.{type(exc).__name__}: {exc}"}),
              flush=True)
"""


def publish(rig: Rig, ids: list[str], db: Path | None = None, seconds: float = 0.0,
            retry: bool = False) -> list[dict]:
    """Publish `ids` (crash.work sleeping `seconds`) from a separate client process; one result per id."""
    env = rig.env(db=db, CRASH_SLEEP=str(seconds), CRASH_RETRY="1" if retry else "0")
    done = rig.run([sys.executable, "-c", PUBLISH, *ids], 120, env)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def ends(rig: Rig) -> Counter:
    events, malformed = rig.events()
    assert not malformed
    return Counter(e.task_id for e in events if e.event == "end")


def wait_ran(rig: Rig, ids: list[str], timeout: float = 60.0) -> None:
    wait_for(lambda: all(ends(rig)[i] for i in ids), timeout, what=f"{len(ids)} jobs to run", interval=0.1,
             on_fail=rig.describe)


# -- (a) the disk fills up ------------------------------------------------------------------------


LEASE = 3.0  # a lease that is not renewed comes back quickly


@pytest.fixture
def small_fs(tmp_path: Path, rig: Rig):
    # 6 MB: what the filler frees must outlast the WAL that the writes after it add before a
    # checkpoint (schema 3 writes more pages a commit: the stats table, jobs_queue_state)
    mount = Mount(tmp_path / "small", size="6m")
    yield mount
    rig.close()  # the processes holding files on it go first
    mount.unmount()


@pytest.fixture
def full_rig(rig: Rig, small_fs: Mount) -> Rig:
    """A rig whose database lives on the small file system (logs stay outside it)."""
    rig.db = small_fs.where / "queue.db"
    rig.conf = {"broker_transport_options": {"visibility_timeout": LEASE}}
    rig.mount = small_fs  # type: ignore[attr-defined]
    return rig


@pytest.mark.slow
def test_disk_full_clear_error_nothing_half_written_then_resumes(full_rig: Rig) -> None:
    rig = full_rig
    small_fs: Mount = rig.mount  # type: ignore[attr-defined]
    worker = rig.worker(concurrency=2)
    before = [f"before-{i}" for i in range(20)]
    assert all(r["ok"] for r in publish(rig, before))
    wait_ran(rig, before)

    filler = small_fs.fill()
    assert small_fs.free_bytes() < 8192

    # 1. single publishes through Celery: each one stored or refused with a clear error
    attempts = publish(rig, [f"full-{i}" for i in range(200)])
    refused = [a for a in attempts if not a["ok"]]
    accepted = [a["id"] for a in attempts if a["ok"]]
    assert refused, "the file system is full but every publish succeeded"
    # with Celery's default publish retry policy too: the same error, not a hang
    t = time.monotonic()
    [retried] = publish(rig, ["full-retried"], retry=True)
    retried_seconds = time.monotonic() - t
    if not retried["ok"]:
        refused.append(retried)
    else:
        accepted.append(retried["id"])
    for a in refused:  # SQLite's words, or the spool's (a publish is a line of the spool first)
        assert any(words in a["error"] for words in ("database or disk is full", "QueuectlError",
                                                      "No space left on device")), a
    # 2. the CLI: one line, exit code 1, nothing written
    cli = rig.run_cli("enqueue", "--id", "full-cli", "--command", "true")
    assert cli.returncode == 1, cli
    assert cli.stdout == "" and cli.stderr.count("\n") == 1 and cli.stderr.startswith("Error: "), cli.stderr
    assert "full" in cli.stderr, cli.stderr
    cli_error = cli.stderr.strip()
    # 3. a bulk enqueue: each batch all or nothing
    bulk = rig.tmp / "bulk.jsonl"
    bulk.write_text("".join(json.dumps({"id": f"bulk-{i}", "command": "true", "queue": "later", "delay": 3600})
                            + "\n" for i in range(600)))
    bulk_run = rig.run_cli("enqueue", "--file", str(bulk), "--batch-size", "100")
    assert bulk_run.returncode == 1 and bulk_run.stderr.startswith("Error: "), bulk_run

    # nothing half-written: the file is intact, and it and its spool (publishes written there
    # and not yet moved in: moving them in is a write, which the full disk refuses) hold exactly
    # what was acknowledged
    assert rig.integrity() == "ok"
    rows = {r[0] for r in rig.sql("SELECT task_id FROM jobs WHERE queue IN ('celery', 'later')")}
    spooled = spooled_task_ids(rig.db)
    assert not {a["id"] for a in refused} & (rows | set(spooled)), "a refused publish left a row or a line"
    assert "full-cli" not in rows
    bulk_rows = len([r for r in rows if r.startswith("bulk-")])
    assert bulk_rows % 100 == 0, f"{bulk_rows} rows of the bulk file: not whole batches"
    assert rows | set(spooled) == set(before) | set(accepted) | {f"bulk-{i}" for i in range(bulk_rows)}
    assert worker.alive(), worker.tail()

    # space returns: publishing and consuming work again, without restarting anything
    filler.unlink()
    after = [f"after-{i}" for i in range(20)]
    results = publish(rig, after)
    assert all(r["ok"] for r in results), results
    cli = rig.run_cli("enqueue", "--id", "after-cli", "--command", "true")
    assert cli.returncode == 0, cli.stderr
    wait_ran(rig, after + accepted, timeout=30)
    wait_for(lambda: rig.sql("SELECT state FROM jobs WHERE task_id = 'after-cli'") == [("completed",)], 30,
             what="the CLI job to complete", on_fail=rig.describe)
    runs = ends(rig)
    assert all(runs[i] == 1 for i in before + accepted + after), "a job ran twice"
    assert rig.integrity() == "ok"
    assert worker.alive(), worker.tail()
    full_warnings = sum("disk is full" in line for line in worker.output().splitlines())
    record_figures("fault_disk_full_idle_worker", {
        "publishes_refused_while_full": len(refused), "publishes_accepted_while_full": len(accepted),
        "bulk_rows_written_while_full": bulk_rows, "publish_error": refused[0]["error"],
        "cli_error": cli_error, "worker_log_lines_disk_full": full_warnings, "resumed": True,
        "seconds_for_a_publish_with_celery_retries": round(retried_seconds, 1),
    })


@pytest.mark.slow
def test_disk_full_while_jobs_run_worker_resumes_when_space_returns(full_rig: Rig) -> None:
    rig = full_rig
    small_fs: Mount = rig.mount  # type: ignore[attr-defined]
    worker = rig.worker(concurrency=2)
    running = [f"running-{i}" for i in range(2)]
    assert all(r["ok"] for r in publish(rig, running, seconds=1.5))
    wait_for(lambda: sum(e.event == "start" for e in rig.events()[0]) == 2, 30,
             what="both jobs to be running", on_fail=rig.describe)
    filler = small_fs.fill()
    # both runs end while the disk is full: their results, acks or rejects cannot be written
    wait_for(lambda: ends(rig).keys() >= set(running), 30, what="both runs to end", on_fail=rig.describe)
    wait_for(lambda: "disk is full" in worker.output(), 10, what="the worker to meet the full disk",
             on_fail=rig.describe)
    time.sleep(0.5)  # not for correctness: let the worker finish handling the failed writes
    filler.unlink()

    after = [f"after-{i}" for i in range(4)]
    assert all(r["ok"] for r in publish(rig, after))
    # a worker that recovered runs the new jobs, and the interrupted ones again (their outcome was
    # never recorded) within a few leases
    wait_for(lambda: rig.states() == {"completed": len(running + after)}, 4 * LEASE,
             what="every job completed once space returned", interval=0.2, on_fail=rig.describe)
    runs = ends(rig)
    assert all(runs[i] == 1 for i in after)
    assert rig.integrity() == "ok"


# -- (b) the database file deleted or replaced under a running worker ---------------------------


NOTICE_WORDS = ("deleted", "replaced", "moved", "unlinked", "inode")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_database_deleted_or_replaced_under_worker_is_not_silent(rig: Rig, how: str) -> None:
    worker = rig.worker(concurrency=1)
    assert all(r["ok"] for r in publish(rig, ["first"]))
    wait_ran(rig, ["first"])
    if how == "deleted":
        for suffix in ("", "-wal", "-shm"):
            os.unlink(f"{rig.db}{suffix}")
        sent = rig.run_cli("enqueue", "--id", "second", "--command", "true")  # a new file at the path
        assert sent.returncode == 0, sent.stderr
    else:
        # an operator restores another queuectl file (holding one job) with mv, workers running
        other = rig.tmp / "other.db"
        made = rig.run_cli("enqueue", "--id", "restored", "--command", "true", db=other)
        assert made.returncode == 0, made.stderr
        os.replace(other, rig.db)
    log_size = len(worker.output())

    # not silent: the worker exits, or says what happened to its file, or (deleted) serves the new
    # file at its path
    def noticed() -> str:
        if not worker.alive():
            return f"exited with {worker.popen.returncode}"
        for line in worker.output()[log_size:].splitlines():
            if any(level in line for level in ("WARNING", "ERROR", "CRITICAL")) and (
                    str(rig.db) in line or any(word in line for word in NOTICE_WORDS)):
                return f"logged: {line}"
        if how == "deleted" and rig.sql("SELECT state FROM jobs WHERE task_id = 'second'") == [("completed",)]:
            return "ran the job sent to the new file at its path"
        return ""

    outcome = wait_for(noticed, 8, what=f"the worker to notice that its database was {how}",
                       interval=0.2, on_fail=worker.tail)
    record_figures(f"fault_database_{how}", {"worker": outcome})


# -- (c) a read-only database ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["file mode 0400", "read-only file system"])
def test_worker_on_read_only_database_fails_at_start(rig: Rig, tmp_path: Path, how: str) -> None:
    mount = None
    try:
        if how == "read-only file system":
            mount = Mount(tmp_path / "ro", size="4m")
            rig.db = mount.where / "queue.db"
        created = rig.run_cli("config", "set", "max-retries", "3")
        assert created.returncode == 0, created.stderr
        if mount is not None:
            mount.remount("ro")
        else:
            os.chmod(rig.db, 0o400)
        started = time.monotonic()
        worker = rig.worker(app="queuectl", concurrency=1, wait_ready=False)
        rc = worker.wait(30)
        seconds = time.monotonic() - started
        assert rc != 0, worker.tail()
        naming = [line for line in worker.output().splitlines()
                  if str(rig.db) in line and ("CRITICAL" in line or "ERROR" in line)]
        assert naming, f"no error line names {rig.db}:\n{worker.tail()}"
        assert "read-only" in naming[0] or "not writable" in naming[0], naming[0]
        record_figures(f"fault_read_only_{how.split()[0]}", {
            "exit_code": rc, "seconds_to_exit": round(seconds, 1), "error": naming[0].split("] ", 1)[-1]})
    finally:
        if mount is not None:
            rig.close()
            mount.unmount()
