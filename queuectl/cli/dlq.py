"""`queuectl dlq list|retry|purge`: the dead-letter queue (jobs whose retries ran out)."""

from __future__ import annotations

import click

from queuectl_kombu import InvalidTransition, JobNotFound, JobState

from .context import state
from .options import format_option, limit_option, queue_filter_option
from .output import emit_rows, note
from .views import DLQ_COLUMNS, job_key, job_row, visible_jobs


@click.group()
def dlq() -> None:
    """The dead-letter queue: jobs that failed more than max-retries times.

    \b
    Examples:
      queuectl dlq list
      queuectl dlq retry job1
      queuectl dlq purge
    """


@dlq.command("list")
@queue_filter_option
@limit_option()
@format_option()
def dlq_list(queue: str | None, limit: int, fmt: str) -> None:
    """List dead jobs, oldest first, with their last error.

    \b
    Examples:
      queuectl dlq list
      queuectl dlq list --format json | jq -r '.[].id'
    """
    store = state().existing_jobstore()
    jobs = [] if store is None else visible_jobs(store, JobState.DEAD, queue, limit or None)
    emit_rows([job_row(job) for job in jobs], DLQ_COLUMNS, fmt)


@dlq.command("retry")
@click.argument("job_id", metavar="[ID]", required=False)
@click.option("--all", "retry_all", is_flag=True, help="Retry every dead job.")
def dlq_retry(job_id: str | None, retry_all: bool) -> None:
    """Move a dead job (or --all) back to pending with its attempts reset.

    \b
    Examples:
      queuectl dlq retry job1
      queuectl dlq retry --all
    """
    if (job_id is None) == (not retry_all):
        raise click.UsageError("give one job ID or --all" if job_id is None else "give a job ID or --all, not both")
    store = state().existing_jobstore()
    if retry_all:
        count = 0 if store is None else len(store.dlq_retry_all())
        note(f"{count} dead job(s) back to pending")
        return
    assert job_id is not None
    if store is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    job = store.find_job(job_id)
    if job.state is not JobState.DEAD:
        raise InvalidTransition(f"job {job_key(job)} is {job.state.value}, not dead")
    store.dlq_retry(job.id)
    note(f"job {job_key(job)} is pending again")


@dlq.command("purge")
def dlq_purge() -> None:
    """Delete every dead job.

    \b
    Examples:
      queuectl dlq purge
    """
    store = state().existing_jobstore()
    count = 0 if store is None else store.dlq_purge()
    note(f"deleted {count} dead job(s)")
