"""What the CLI and the dashboard show of jobs: a job as a row, its result and output tails,
listings without control messages, counts per queue."""

from __future__ import annotations

import json
from typing import Any

from celery import Celery

from queuectl_kombu import Job, JobState, JobStore, is_control_queue

from ..shell import CommandFailed
from ..tasks import RUN_SHELL
from .output import iso_time

#: Table and CSV columns of job listings.
LIST_COLUMNS = ("id", "state", "queue", "attempts", "task", "call", "next_run_at", "updated_at")
DLQ_COLUMNS = ("id", "queue", "attempts", "task", "call", "last_error", "updated_at")


def job_key(job: Job) -> str:
    """The id users see: the Celery task id, else the row id."""
    return job.task_id or str(job.id)


def describe_call(job: Job) -> tuple[str, list[Any] | None, dict[str, Any] | None]:
    """(what the job runs, args, kwargs): the command of a shell job, name(args) of any task."""
    call = job.task_call()
    if call is None:
        return (job.task_name or "", None, None)
    args, kwargs = call
    if job.task_name == RUN_SHELL:
        command = kwargs.get("command", args[0] if args else "")
        return (str(command), args, kwargs)
    parts = [json.dumps(a, ensure_ascii=False) for a in args]
    parts += [f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in kwargs.items()]
    short = (job.task_name or "?").rsplit(".", 1)[-1]
    return (f"{short}({', '.join(parts)})", args, kwargs)


def job_row(job: Job) -> dict[str, Any]:
    """Every field of a job, JSON-able, times in ISO 8601 UTC."""
    call, args, kwargs = describe_call(job)
    waiting = job.state in (JobState.PENDING, JobState.FAILED)
    return {
        "id": job_key(job),
        "row_id": job.id,
        "state": job.state.value,
        "queue": job.queue,
        "task": job.task_name,
        "call": call,
        "args": args,
        "kwargs": kwargs,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_retries": job.max_retries,
        "next_run_at": iso_time(job.next_run_at) if waiting else None,
        "created_at": iso_time(job.created_at),
        "updated_at": iso_time(job.updated_at),
        "last_error": job.last_error,
    }


def visible_jobs(
    store: JobStore, state: JobState | None = None, queue: str | None = None, limit: int | None = None
) -> list[Job]:
    """Jobs in id order, leaving out Celery's control messages unless `queue` names one."""
    jobs_only = queue is None or not is_control_queue(queue)
    return store.list_jobs(state, queue, limit, jobs_only=jobs_only)


def queue_counts(store: JobStore) -> dict[str, dict[str, int]]:
    """Jobs per queue and state (control queues left out), from one grouped count."""
    return {
        queue: {state.value: n for state, n in counts.items()}
        for queue, counts in sorted(store.counts_by_queue().items())
        if not is_control_queue(queue)
    }


def state_totals(per_queue: dict[str, dict[str, int]]) -> dict[str, int]:
    """Jobs per state over every queue, zero included, and their total."""
    totals = {state.value: 0 for state in JobState}
    for counts in per_queue.values():
        for state, n in counts.items():
            totals[state] += n
    totals["total"] = sum(totals.values())
    return totals


def task_result(app: Celery, job: Job) -> dict[str, Any] | None:
    """The job's result from the app's result backend (what its AsyncResult reads), or None when
    it has none."""
    if not job.task_id:
        return None
    meta = app.backend.get_task_meta(job.task_id)
    if meta.get("status") == "PENDING" and not meta.get("date_done"):
        return None  # Celery reports an unknown task as PENDING
    value = meta.get("result")
    result: dict[str, Any] = {"state": meta.get("status"), "date_done": _date(meta.get("date_done"))}
    if isinstance(value, CommandFailed):
        result["error"] = str(value)
        if value.outcome:
            result["value"] = value.outcome
    elif isinstance(value, BaseException):
        result["error"] = f"{type(value).__name__}: {value}"
    else:
        result["value"] = value
    return result


def output_tails(value: Any) -> list[tuple[str, str, int | None]]:
    """(stream, its last bytes, its whole size) of a run_shell result's stdout and stderr that are
    not empty; nothing for any other value."""
    if not isinstance(value, dict):
        return []
    return [(stream, value[stream], value.get(stream + "_bytes")) for stream in ("stdout", "stderr")
            if isinstance(value.get(stream), str) and value[stream]]


def _date(value: Any) -> str | None:
    if value is None:
        return None
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return text.replace("+00:00", "Z")
