"""Cancel jobs: what `queuectl cancel` and the dashboard's cancel buttons call.

- A waiting job (pending, or failed and waiting for its retry) moves to the dead-letter queue
  with last_error "cancelled", in one transaction (JobStore.cancel_waiting); ``dlq retry`` undoes
  it. No worker holds it: queuectl keeps waiting jobs in the file, never in a worker's memory.
- A running job (processing) is stopped by the worker that runs it, through Celery's remote
  control: ``revoke(terminate=True)``, for shell jobs and any other Celery task alike. The pool
  process is sent SIGTERM (a ``run_shell`` job kills its command's process group first), and the
  worker's ack of the revoked task ends the row dead with "cancelled" (revokes.py). A job that
  was claimed but not started yet is discarded by the worker the same way.
- A job that already finished (completed, or dead) is left as it is, and says so.

The Celery app is the one whose workers consume the file (its remote control goes through the
same broker). Without an app, only waiting jobs can be cancelled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .exceptions import JobNotFound
from .jobs import Job
from .notify import ChangeWaiter
from .postgres import Listener
from .rules import CANCELLED, MAX_WAIT, READY_STATES, SETTLE, is_control_queue
from .states import JobState
from .store import JobStore

logger = logging.getLogger(__name__)

#: The outcomes of a cancel, one per job.
#: The job was cancelled: it is dead with last_error "cancelled" (or deleted: see Cancellation.state).
OUTCOME_CANCELLED = "cancelled"
#: The job had finished (completed or dead) before the cancel reached it: nothing changed.
OUTCOME_FINISHED = "finished"
#: The revoke was sent, but the job was still running at the deadline (its worker does not
#: answer, or its pool cannot terminate a task: solo and threads pools). It is cancelled when a
#: worker that got the revoke takes it again.
OUTCOME_STILL_RUNNING = "still running"
#: A running job that cannot be stopped from here: it has no Celery task id, or no app was given.
OUTCOME_NOT_STOPPABLE = "not stoppable"

#: How long cancel_jobs waits for running jobs to stop, by default (seconds).
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Cancellation:
    """What a cancel did to one job."""

    job_id: int
    task_id: str | None
    queue: str
    #: The job's state when the cancel was asked.
    was: JobState
    #: Its state when the cancel returned; None when the row is gone (completed with retention 0).
    state: JobState | None
    #: One of the OUTCOME_* values.
    outcome: str
    #: The job's last error when the cancel returned.
    last_error: str | None = None

    @property
    def key(self) -> str:
        """The id users see: the Celery task id, else the row id."""
        return self.task_id or str(self.job_id)

    @property
    def cancelled(self) -> bool:
        """Whether the job is cancelled (dead with "cancelled")."""
        return self.outcome == OUTCOME_CANCELLED

    def describe(self) -> str:
        """One line for people: "job build-7: cancelled (was running)"."""
        was = "running" if self.was is JobState.PROCESSING else self.was.value
        if self.outcome == OUTCOME_CANCELLED:
            text = f"cancelled (was {was})"
        elif self.outcome == OUTCOME_FINISHED:
            now = "gone (completed)" if self.state is None else self.state.value
            why = f": {self.last_error}" if self.state is JobState.DEAD and self.last_error else ""
            text = f"already finished, {now}{why}; nothing changed"
        elif self.outcome == OUTCOME_STILL_RUNNING:
            text = ("still running: the revoke was sent but no worker stopped it in time (a worker that "
                    "does not answer, or a solo or threads pool); it is cancelled if a worker takes it again")
        else:
            text = "running, but it has no Celery task id to revoke: only its consumer can stop it"
        return f"job {self.key}: {text}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "id": self.key, "row_id": self.job_id, "queue": self.queue, "was": self.was.value,
            "state": None if self.state is None else self.state.value, "outcome": self.outcome,
            "cancelled": self.cancelled, "last_error": self.last_error,
        }


def cancel_jobs(
    store: JobStore, jobs: Iterable[Job | int], app: Any = None, *, timeout: float = DEFAULT_TIMEOUT,
    signal: str = "SIGTERM",
) -> list[Cancellation]:
    """Cancel each of `jobs` (Job records or row ids), and return what happened to each, in the
    order given (a job named twice is cancelled once).

    Waiting jobs move to the dead-letter queue at once. Running ones are revoked through `app`'s
    remote control with terminate=True and `signal`, and this waits up to `timeout` seconds for
    their workers to end them (woken by each change of the file). Raises JobNotFound for a
    row id that no job has (before anything changes).
    """
    found: dict[int, Job] = {}
    for item in jobs:
        job = store.get_job(item) if isinstance(item, int) else item
        found.setdefault(job.id, job)
    results: dict[int, Cancellation] = {}
    waiting = [job for job in found.values() if job.state in READY_STATES]
    moved = {job_id: task_id for job_id, task_id, _ in store.cancel_waiting([job.id for job in waiting])}
    _mark_revoked(app, [task_id for task_id in moved.values() if task_id])
    running: list[Job] = []
    for job in found.values():
        if job.id in moved:
            results[job.id] = _result(job, JobState.DEAD, OUTCOME_CANCELLED, CANCELLED)
            continue
        current = _current(store, job.id) if job.state in READY_STATES else job  # claimed meanwhile?
        if current is not None and current.state is JobState.PROCESSING:
            running.append(current)
        else:
            results[job.id] = _finished(job, current)
    results.update(_stop_running(store, running, app, timeout=timeout, signal=signal))
    return [results[job_id] for job_id in found]


def cancel_matching(
    store: JobStore, app: Any = None, *, queue: str | None = None, states: Sequence[JobState | str] | None = None,
    timeout: float = DEFAULT_TIMEOUT, signal: str = "SIGTERM",
) -> list[Cancellation]:
    """Cancel every job of `queue` (every queue but Celery's control queues when None) in one of
    `states`: pending, failed and processing when None (finished jobs cannot be cancelled).

    The waiting ones move to the dead-letter queue in one statement per state, however many
    there are; the running ones are revoked as in cancel_jobs. Returns what happened to each job.
    """
    wanted = {JobState(s) for s in (states or (*READY_STATES, JobState.PROCESSING))}
    if queue is not None and is_control_queue(queue):
        return []
    results: list[Cancellation] = []
    for state in READY_STATES:
        if state in wanted:
            moved = store.cancel_waiting(queue=queue, states=[state])
            _mark_revoked(app, [task_id for _, task_id, _ in moved if task_id])
            results += [Cancellation(job_id, task_id, job_queue, state, JobState.DEAD, OUTCOME_CANCELLED, CANCELLED)
                        for job_id, task_id, job_queue in moved]
    if JobState.PROCESSING in wanted:
        running = store.list_jobs(JobState.PROCESSING, queue, jobs_only=True)
        stopped = _stop_running(store, running, app, timeout=timeout, signal=signal)
        results += [stopped[job.id] for job in running]
    return results


def _stop_running(
    store: JobStore, running: list[Job], app: Any, *, timeout: float, signal: str,
) -> dict[int, Cancellation]:
    """Revoke the running jobs with terminate=True, then wait until each leaves processing
    (woken by the file's changes: the worker's write that ends the job is one)."""
    results: dict[int, Cancellation] = {}
    revocable = [job for job in running if job.task_id and app is not None]
    for job in running:
        if not (job.task_id and app is not None):
            results[job.id] = _result(job, JobState.PROCESSING, OUTCOME_NOT_STOPPABLE, job.last_error)
    if not revocable:
        return results
    task_ids = sorted({job.task_id for job in revocable if job.task_id})
    waiter = store.db.change_waiter()  # before the revoke: no change after it goes unseen
    try:
        return {**results, **_wait_stopped(store, revocable, app, waiter, task_ids, timeout=timeout, signal=signal)}
    finally:
        waiter.close()


def _wait_stopped(
    store: JobStore, revocable: list[Job], app: Any, waiter: ChangeWaiter | Listener, task_ids: list[str], *,
    timeout: float, signal: str,
) -> dict[int, Cancellation]:
    results: dict[int, Cancellation] = {}
    app.control.revoke(task_ids, terminate=True, signal=signal)
    logger.info("revoke(terminate=True, signal=%s) sent for %s", signal, ", ".join(task_ids))
    deadline = time.monotonic() + timeout
    left = {job.id: job for job in revocable}
    woke = False
    while left:
        for job_id, job in list(left.items()):
            current = _current(store, job_id)
            if current is not None and current.state is JobState.PROCESSING:
                continue
            if current is not None and current.state in READY_STATES:
                # Back to waiting (its worker died and the lease ran out, or it was requeued): a
                # waiting job is cancelled here, whatever the workers do.
                if not store.cancel_waiting([job_id]):
                    continue
                _mark_revoked(app, [job.task_id] if job.task_id else [])
                current = _current(store, job_id)
            del left[job_id]
            if current is not None and current.state is JobState.DEAD and current.last_error == CANCELLED:
                results[job_id] = _result(job, JobState.DEAD, OUTCOME_CANCELLED, CANCELLED)
            else:
                results[job_id] = _finished(job, current)
        remaining = deadline - time.monotonic()
        if not left or remaining <= 0:
            break
        # A wake-up can come a moment before the commit is visible: then look again soon.
        woke = waiter.wait(min(remaining, SETTLE if woke else MAX_WAIT))
    for job_id, job in left.items():
        results[job_id] = _result(job, JobState.PROCESSING, OUTCOME_STILL_RUNNING, job.last_error)
    return results


def _current(store: JobStore, job_id: int) -> Job | None:
    try:
        return store.get_job(job_id)
    except JobNotFound:
        return None  # completed and deleted at once (retention 0)


def _result(job: Job, state: JobState | None, outcome: str, last_error: str | None) -> Cancellation:
    return Cancellation(job.id, job.task_id, job.queue, job.state, state, outcome, last_error)


def _finished(job: Job, current: Job | None) -> Cancellation:
    if current is None:
        return _result(job, None, OUTCOME_FINISHED, None)
    if current.state is JobState.DEAD and current.last_error == CANCELLED and job.state is not JobState.DEAD:
        return _result(job, JobState.DEAD, OUTCOME_CANCELLED, CANCELLED)  # cancelled by someone else meanwhile
    return _result(job, current.state, OUTCOME_FINISHED, current.last_error)


def _mark_revoked(app: Any, task_ids: list[str]) -> None:
    """Store REVOKED as the result of tasks cancelled while waiting, as Celery's revoke does, so
    that AsyncResult.get() raises TaskRevokedError instead of waiting for ever (a retry that runs
    stores its own result over it)."""
    if app is None or not task_ids:
        return
    backend = app.backend
    for task_id in task_ids:
        try:
            backend.mark_as_revoked(task_id, reason=CANCELLED)
        except Exception as exc:  # noqa: BLE001 - the job is cancelled whatever the backend says
            logger.warning("could not store the revoked state of task %s: %s", task_id, exc)
