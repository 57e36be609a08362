"""What the dashboard changes: each action is a POST to /actions/NAME, through the library calls
the CLI uses.

One pattern serves them all. A form (the ``action_form`` macro of templates/macros.html) posts
the CSRF token, the targets it acts on (``target`` fields: row ids of jobs, or queue names) and
the page to return to (``next``). An action with a question asks it first on a confirmation page,
which posts the same form again with ``confirmed=yes``. The action's note (or its error) is
flashed on the page it returns to.

Adding one: write ``def run(board, targets) -> str`` (and, if it destroys something, a question
``def ask(board, targets) -> str``), add ``Action(...)`` to ACTIONS, and put
``action_form("name", targets, "Label")`` in a template.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from queuectl_kombu import InvalidInput, JobState, QueuectlError, cancel_jobs

from ..cli.views import job_key
from .board import Board, board

bp = Blueprint("actions", __name__)


@dataclass(frozen=True)
class Action:
    """One change the dashboard can make."""

    label: str  # the button, and the confirmation page's title
    run: Callable[[Board, list[str]], str]  # does it; returns the note shown afterwards
    ask: Callable[[Board, list[str]], str] | None = None  # the question asked first; None: none


def _row_ids(targets: list[str]) -> list[int]:
    if not targets:
        raise InvalidInput("select at least one job")
    try:
        return [int(t) for t in targets]
    except ValueError as exc:
        raise InvalidInput(f"not a job's row id: {exc}") from exc


def retry_dead(b: Board, targets: list[str]) -> str:
    """`queuectl dlq retry ID` for each selected dead job."""
    keys: list[str] = []
    errors: list[str] = []
    for row_id in _row_ids(targets):
        try:
            job = b.store.get_job(row_id)
            b.store.dlq_retry(job.id)
        except QueuectlError as exc:  # the others are retried all the same, and said so
            errors.append(str(exc))
            continue
        keys.append(job_key(job))
    if errors:
        done = f"pending again: {', '.join(keys)}; " if keys else ""
        raise QueuectlError(done + "; ".join(errors))
    return f"pending again: {', '.join(keys)}"


def retry_all_dead(b: Board, targets: list[str]) -> str:
    """`queuectl dlq retry --all`."""
    return f"{len(b.store.dlq_retry_all())} dead job(s) back to pending"


def purge_dead(b: Board, targets: list[str]) -> str:
    """`queuectl dlq purge`."""
    return f"deleted {b.store.dlq_purge()} dead job(s)"


#: Longest a cancel waits for its running jobs to stop before the page returns (seconds).
CANCEL_TIMEOUT = 10.0


def cancel(b: Board, targets: list[str]) -> str:
    """`queuectl cancel ID`: a waiting job to the dead-letter queue, a running one killed by its
    worker (Celery's revoke with terminate); `dlq retry` undoes either."""
    outcomes = cancel_jobs(b.store, _row_ids(targets), b.celery, timeout=CANCEL_TIMEOUT)
    return "; ".join(outcome.describe() for outcome in outcomes)


def _jobs_named(b: Board, targets: list[str]) -> str:
    return ", ".join(job_key(b.store.get_job(row_id)) for row_id in _row_ids(targets))


def _queue(targets: list[str]) -> str:
    if len(targets) != 1 or not targets[0]:
        raise InvalidInput("name one queue")
    return targets[0]


def pause(b: Board, targets: list[str]) -> str:
    """`queuectl queue pause NAME`: every worker skips the queue; its running jobs finish."""
    name = _queue(targets)
    changed = b.store.pause_queue(name)
    return f"queue {name} paused" if changed else f"queue {name} was paused already"


def resume(b: Board, targets: list[str]) -> str:
    """`queuectl queue resume NAME`."""
    name = _queue(targets)
    changed = b.store.resume_queue(name)
    return f"queue {name} resumed" if changed else f"queue {name} was not paused"


def _dead_count(b: Board) -> int:
    return b.store.counts()[JobState.DEAD]


ACTIONS: dict[str, Action] = {
    "cancel": Action(
        "Cancel", cancel,
        lambda b, targets: f"Cancel {_jobs_named(b, targets)}? A running job is killed; "
        "the job goes to the dead-letter queue, where Retry runs it again.",
    ),
    "queue-pause": Action("Pause", pause),
    "queue-resume": Action("Resume", resume),
    "dlq-retry": Action("Retry", retry_dead),
    "dlq-retry-all": Action(
        "Retry every dead job", retry_all_dead,
        lambda b, _: f"Move all {_dead_count(b)} dead job(s) back to pending, their attempts reset?",
    ),
    "dlq-purge": Action(
        "Purge the dead-letter queue", purge_dead,
        lambda b, _: f"Delete all {_dead_count(b)} dead job(s) for good? This cannot be undone.",
    ),
}


def _local(target: str | None) -> str:
    """`target` if it is a path of this site, else the overview (never a redirect elsewhere)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("pages.overview_page")


@bp.post("/actions/<name>")
def act(name: str) -> Response | str:
    """Run the action `name` (the CSRF token was checked before), asking first if it asks."""
    action = ACTIONS.get(name)
    if action is None:
        return Response(f"no action {name!r}\n", 404, mimetype="text/plain")
    targets = request.form.getlist("target")
    back = _local(request.form.get("next"))
    b = board()
    try:
        if action.ask is not None and request.form.get("confirmed") != "yes":
            return render_template("confirm.html", name=name, action=action, question=action.ask(b, targets),
                                   targets=targets, back=back)
        flash(action.run(b, targets), "note")
    except QueuectlError as exc:
        flash(str(exc), "error")
    return redirect(back, 303)
