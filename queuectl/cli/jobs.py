"""`queuectl status`, `list` and `show`: what the database holds and who works on it."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from queuectl_kombu import Job, JobNotFound, JobState

from ..tasks import RUN_SHELL
from .context import state
from .options import STATES, format_option, limit_option, queue_filter_option, timeout_option
from .output import age, emit_rows, iso_time, json_text, number, table
from .remote import live_workers
from .views import LIST_COLUMNS, job_row, output_tails, queue_counts, state_totals, task_result, visible_jobs

WORKER_COLUMNS = ("name", "pid", "concurrency", "active", "active_jobs")


@click.command()
@format_option(("table", "json"))
@click.option("--workers/--no-workers", "ask_workers", default=True, show_default=True,
              help="Ask the live workers what they run (waits up to --timeout).")
@timeout_option(1.0, "workers to answer")
def status(fmt: str, ask_workers: bool, timeout: float) -> None:
    """Show jobs per state and per queue, the paused queues, the oldest pending job's age and the
    live workers.

    \b
    Examples:
      queuectl status
      queuectl status --format json | jq .jobs.dead
    """
    cli_state = state()
    store = cli_state.existing_jobstore()
    per_queue = queue_counts(store) if store is not None else {}
    paused = store.paused_queues() if store is not None else []
    totals = state_totals(per_queue)
    oldest: Job | None = None
    if store is not None and totals[JobState.PENDING.value]:
        first = visible_jobs(store, JobState.PENDING, None, 1)
        oldest = first[0] if first else None
    workers = live_workers(cli_state.celery(), timeout) if ask_workers and store is not None else []
    now = time.time()
    data: dict[str, Any] = {
        "database": cli_state.db_name,
        "jobs": totals,
        "queues": per_queue,
        "paused_queues": paused,
        "oldest_pending": None if oldest is None else {
            "id": job_row(oldest)["id"], "created_at": iso_time(oldest.created_at),
            "age": round(now - oldest.created_at, 3),
        },
        "workers": [w.as_dict() for w in workers],
    }
    if fmt == "json":
        click.echo(json_text(data))
        return
    click.echo(f"database: {cli_state.db_name}\n")
    click.echo(table([{"state": s, "jobs": n} for s, n in totals.items()], ("state", "jobs")))
    if per_queue:
        rows = [{"queue": f"{q} (paused)" if q in paused else q, **counts} for q, counts in per_queue.items()]
        click.echo("\n" + table(rows, ("queue", *STATES)))
    if paused:
        click.echo(f"\npaused queues: {', '.join(paused)} (workers take none of their jobs; "
                   "queuectl queue resume NAME)")
    if oldest is not None:
        click.echo(f"\noldest pending job: {data['oldest_pending']['id']}, waiting {age(now - oldest.created_at)}")
    if not ask_workers:
        return
    if workers:
        rows = [{**w.as_dict(), "active_jobs": ", ".join(w.active)} for w in workers]
        click.echo("\n" + table(rows, WORKER_COLUMNS))
    else:
        click.echo("\nworkers: none answered")


@click.command("list")
@click.option("--state", "state_name", type=click.Choice(STATES), help="Only jobs in this state.")
@queue_filter_option
@limit_option()
@format_option()
def list_jobs(state_name: str | None, queue: str | None, limit: int, fmt: str) -> None:
    """List jobs, oldest first, of any Celery task (shell jobs show their command).

    \b
    Examples:
      queuectl list --state pending
      queuectl list --state failed --queue batch --limit 20 --format json
      queuectl list --format csv --limit 0 > jobs.csv
    """
    store = state().existing_jobstore()
    jobs = [] if store is None else visible_jobs(
        store, JobState(state_name) if state_name else None, queue, limit or None
    )
    emit_rows([job_row(job) for job in jobs], LIST_COLUMNS, fmt)


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _show_table(row: dict[str, Any], retries: int) -> str:
    kwargs = row.get("kwargs") or {}
    lines: list[tuple[str, Any]] = [("id", row["id"]), ("task", row["task"]), ("state", row["state"]),
                                    ("queue", row["queue"]), ("priority", row["priority"])]
    lines.append(("attempts", f"{row['attempts']} (max retries {retries})"))
    if row["task"] == RUN_SHELL:
        lines.append(("command", row["call"]))
        lines += [(key, kwargs[key]) for key in ("cwd", "env", "timeout") if kwargs.get(key) is not None]
    else:
        lines += [("call", row["call"]), ("args", row["args"]), ("kwargs", row["kwargs"])]
    lines += [("next run", row["next_run_at"]), ("last error", row["last_error"]),
              ("created", row["created_at"]), ("updated", row["updated_at"])]
    result = row.get("result")
    if result is None:
        lines.append(("result", None))
    else:
        lines.append(("result", f"{result['state']} at {result['date_done']}"))
        if "error" in result:
            lines.append(("error", result["error"]))
        value = result.get("value")
        if row["task"] == RUN_SHELL and isinstance(value, dict):
            lines += [("exit code", value.get("exit_code")), ("duration", f"{number(value.get('duration'))}s")]
        elif "value" in result:
            lines.append(("value", value))
    width = max(len(k) for k, _ in lines) + 2
    text = [f"{(k + ':').ljust(width)}{_value(v)}" for k, v in lines]
    value = (result or {}).get("value")
    if row["task"] == RUN_SHELL and isinstance(value, dict):
        for stream, tail, size in output_tails(value):
            text.append(f"{stream} (last {len(tail.encode())} of {size} bytes):")
            text += ["  " + line for line in tail.rstrip("\n").split("\n")]
    return "\n".join(text)


@click.command()
@click.argument("job_id", metavar="ID")
@format_option(("table", "json"))
def show(job_id: str, fmt: str) -> None:
    """Show one job: its command or call, state, attempts, next run, last error, output tail,
    result and timestamps.

    ID is the job's id (a Celery task id), or the row number shown as id by jobs without one.

    \b
    Examples:
      queuectl show job1
      queuectl show job1 --format json | jq -r .result.value.stdout
    """
    cli_state = state()
    store = cli_state.existing_jobstore()
    if store is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    job = store.find_job(job_id)
    row = job_row(job)
    row["result"] = task_result(cli_state.celery(), job)
    retries = job.max_retries if job.max_retries is not None else store.settings()["max_retries"]
    if fmt == "json":
        click.echo(json_text(row))
    else:
        click.echo(_show_table(row, retries))
