"""The pages: overview, job list, one job, the dead-letter queue; and the live panels that the
pages' script reloads every two seconds (the overview's figures, a job's state)."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, abort, render_template, request

from queuectl_kombu import Job, JobNotFound, JobState, is_control_queue

from ..cli.views import job_row, output_tails, task_result
from ..tasks import RUN_SHELL
from .board import board
from .chart import chart

bp = Blueprint("pages", __name__)

#: Jobs per page of the job list and of the dead-letter queue.
PAGE_SIZE = 50
ORDERS = ("newest", "oldest")


def _overview_context() -> dict[str, Any]:
    b = board()
    now = time.time()
    figures = b.overview.overview(now)
    return {"figures": figures, "chart": chart(figures.throughput), "workers": b.workers.latest(), "now": now}


@bp.get("/")
def overview_page() -> str:
    """Jobs per state and queue, the oldest pending job, the workers, the throughput chart."""
    return render_template("overview.html", **_overview_context())


@bp.get("/live/overview")
def overview_panel() -> str:
    """The overview's figures alone, for the live update."""
    return render_template("_overview.html", **_overview_context())


def _job_page(fixed_state: JobState | None) -> dict[str, Any]:
    """A page of jobs by the query string's filters (state, queue, task, q, order, after)."""
    args = request.args
    state_name = fixed_state.value if fixed_state is not None else args.get("state") or None
    if state_name is not None and state_name not in {s.value for s in JobState}:
        abort(400, f"no state {state_name!r}")
    order = args.get("order") or "newest"
    if order not in ORDERS:
        abort(400, f"order is newest or oldest, not {order!r}")
    after = args.get("after") or None
    if after is not None and not after.isdecimal():
        abort(400, "after is a job's row id")
    filters = {"queue": args.get("queue") or None, "task": args.get("task") or None, "q": args.get("q") or None}
    jobs = board().store.search_jobs(
        state_name, filters["queue"], filters["task"], filters["q"], cursor=None if after is None else int(after),
        limit=PAGE_SIZE + 1, newest_first=order == "newest",
    )
    shown = jobs[:PAGE_SIZE]
    more = len(jobs) > PAGE_SIZE
    return {
        "rows": [job_row(j) for j in shown], "state": state_name, "order": order, "filters": filters,
        "first_page": after is None, "next_after": shown[-1].id if more else None,
        "queues": sorted(q["name"] for q in board().store.list_queues() if not is_control_queue(q["name"])),
        "states": [s.value for s in JobState],
    }


@bp.get("/jobs")
def jobs() -> str:
    """The job list: filters by state, queue, task name and text, newest or oldest first, paged."""
    return render_template("jobs.html", **_job_page(None))


@bp.get("/dlq")
def dlq() -> str:
    """The dead-letter queue: retry one, the selected or all; purge."""
    return render_template("dlq.html", **_job_page(JobState.DEAD))


def _job_context(row_id: int) -> dict[str, Any]:
    b = board()
    try:
        job: Job = b.store.get_job(row_id)
    except JobNotFound:
        abort(404, f"no job with row id {row_id}")
    row = job_row(job)
    result = task_result(b.celery, job)
    value = (result or {}).get("value")
    retries = job.max_retries if job.max_retries is not None else b.store.settings()["max_retries"]
    return {"job": row, "result": result, "shell": job.task_name == RUN_SHELL, "max_retries": retries,
            "tails": output_tails(value) if job.task_name == RUN_SHELL else [], "now": time.time()}


@bp.get("/jobs/<int:row_id>")
def job(row_id: int) -> str:
    """One job: its command or call, state, attempts, next run, last error, result, output tails."""
    return render_template("job.html", **_job_context(row_id))


@bp.get("/live/jobs/<int:row_id>")
def job_panel(row_id: int) -> str:
    """One job's details alone, for the live update."""
    return render_template("_job.html", **_job_context(row_id))
