"""`queuectl cancel`: waiting jobs to the dead-letter queue, running ones terminated by their worker."""

from __future__ import annotations

import click

from queuectl_kombu import Cancellation, JobNotFound, JobState, cancel_jobs, cancel_matching

from .completion import complete_queue
from .context import state
from .options import timeout_option
from .output import note

#: The states a job can be cancelled in (--state).
CANCEL_STATES = (JobState.PENDING.value, JobState.FAILED.value, JobState.PROCESSING.value)


@click.command()
@click.argument("job_ids", metavar="[ID]...", nargs=-1)
@click.option("--queue", shell_complete=complete_queue, help="Cancel every pending, failed and running job of this queue (with --state: "
              "those in that state only).")
@click.option("--state", "state_name", type=click.Choice(CANCEL_STATES),
              help="Cancel every job in this state (of --queue, else of every queue).")
@timeout_option(10.0, "running jobs to stop")
def cancel(job_ids: tuple[str, ...], queue: str | None, state_name: str | None, timeout: float) -> None:
    """Cancel jobs: a waiting one (pending, or failed and waiting for a retry) moves to the
    dead-letter queue with the error "cancelled", so `dlq retry` runs it again; a running one is
    terminated by the worker that runs it (Celery's revoke with terminate: the command's whole
    process group is killed) and ends dead, "cancelled". A job that already finished is left as
    it is, and the command says so (exit code 1, as for any job not cancelled).

    ID is the job's id (a Celery task id), or the row number shown as id by jobs without one.

    \b
    Examples:
      queuectl cancel job1 job2
      queuectl cancel --queue batch --state pending
      queuectl cancel --state processing --timeout 30
    """
    if job_ids and (queue is not None or state_name is not None):
        raise click.UsageError("give job IDs or --queue/--state, not both")
    if not job_ids and queue is None and state_name is None:
        raise click.UsageError("give job IDs, or --queue and/or --state to choose the jobs")
    cli_state = state()
    store = cli_state.existing_jobstore()
    if store is None:
        if job_ids:
            raise JobNotFound(f"no job with id {job_ids[0]!r}")
        note("no jobs to cancel")
        return
    app = cli_state.celery()
    if job_ids:
        jobs = [store.find_job(key) for key in job_ids]  # every id is checked before anything changes
        results = cancel_jobs(store, jobs, app, timeout=timeout)
        if len(results) == 1 and not results[0].cancelled:
            raise click.ClickException(results[0].describe())
        for result in results:
            note(result.describe())
    else:
        states = [JobState(state_name)] if state_name else None
        results = cancel_matching(store, app, queue=queue, states=states, timeout=timeout)
        _summary(results, queue)
    failed = [r for r in results if not r.cancelled]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(results)} job(s) not cancelled")


def _summary(results: list[Cancellation], queue: str | None) -> None:
    """One line for the waiting jobs (there may be thousands), one per running job."""
    where = f" of queue {queue}" if queue is not None else ""
    if not results:
        note(f"no jobs to cancel{where}")
        return
    waiting = [r for r in results if r.was is not JobState.PROCESSING]
    if waiting:
        per_state = {s: sum(1 for r in waiting if r.was.value == s) for s in CANCEL_STATES[:2]}
        detail = ", ".join(f"{n} {s}" for s, n in per_state.items() if n)
        note(f"cancelled {len(waiting)} waiting job(s){where} ({detail}): now dead, 'dlq retry' runs them again")
    for result in results:
        if result.was is JobState.PROCESSING:
            note(result.describe())
