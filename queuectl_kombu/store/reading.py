"""Reads of jobs: one job, lists, counts, what is scheduled and when it comes due."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from ..exceptions import JobNotFound
from ..jobs import Job
from ..sql import QUERIES as Q
from ..states import JobState
from .base import StoreBase, fresh

#: What a LIKE pattern must escape (with a backslash) to match a text as it is.
_LIKE_SPECIAL = re.compile(r"[\\%_]")


class JobReads(StoreBase):
    """What the command line, the dashboard and Celery's inspect read about jobs."""

    @fresh
    def scheduled(self, queues: Sequence[str], limit: int = 1000) -> list[tuple[Any, ...]]:
        """Waiting jobs of `queues` that are not due yet, soonest first:
        (id, queue, priority, next_run_at, deliveries, payload)."""
        if not queues:
            return []
        params = {"queues": json.dumps(list(queues)), "now": self.clock(), "limit": limit}
        return [tuple(row) for row in self.db.connection().execute(Q["scheduled_jobs"], params)]

    def next_due(self, queues: Sequence[str]) -> float | None:
        """When the earliest waiting job of `queues` becomes due, or None if none waits."""
        conn = self.db.connection()
        times = [conn.execute(Q["next_due"], {"queue": q}).fetchone()[0] for q in queues]
        due = [t for t in times if t is not None]
        return min(due) if due else None

    @fresh
    def counts(self) -> dict[JobState, int]:
        """Jobs per state (every state present, zero included)."""
        result = {state: 0 for state in JobState}
        for state, n in self.db.connection().execute(Q["count_by_state"]):
            result[JobState(state)] = n
        return result

    @fresh
    def list_jobs(
        self, state: JobState | str | None = None, queue: str | None = None, limit: int | None = None,
        *, jobs_only: bool = False,
    ) -> list[Job]:
        """Jobs in id order, optionally of one state and one queue; `jobs_only` leaves out the
        messages of Celery's remote control and events."""
        params = {
            "state": JobState(state).value if state is not None else None,
            "queue": queue,
            "limit": -1 if limit is None else limit,
            "jobs_only": int(jobs_only),
        }
        statement = Q["list_jobs"] if state is None else Q["list_jobs_in_state"]
        return [Job.from_row(r) for r in self.db.connection().execute(statement, params)]

    @fresh
    def counts_by_queue(self) -> dict[str, dict[JobState, int]]:
        """Jobs per queue and state (every state present in each queue, zero included)."""
        result: dict[str, dict[JobState, int]] = {}
        for queue, state, n in self.db.connection().execute(Q["count_by_queue_state"]):
            result.setdefault(queue, {s: 0 for s in JobState})[JobState(state)] = n
        return result

    @fresh
    def oldest_pending_created_at(self) -> float | None:
        """When the oldest pending job (not a control message) was created, or None."""
        row = self.db.connection().execute(Q["oldest_waiting"]).fetchone()
        return None if row[0] is None else float(row[0])

    @fresh
    def find_job(self, key: str | int) -> Job:
        """A job by task id (the newest row carrying it), else by numeric row id."""
        row = self.db.connection().execute(Q["latest_by_task_id"], {"task_id": str(key)}).fetchone()
        if row is not None:
            return Job.from_row(row)
        text = str(key)
        if text.isascii() and text.isdecimal() and int(text) < 2**63:
            return self.get_job(int(text))
        raise JobNotFound(f"no job with id {key!r}")

    @fresh
    def existing_task_id(self, task_ids: Sequence[str]) -> str | None:
        """One of `task_ids` that a job already carries, or None (one query per 10,000 ids)."""
        return find_existing_task_id(self.db.connection(), list(task_ids))

    @fresh
    def task_exists(self, task_id: str) -> bool:
        """Whether any job carries this task id."""
        return self.db.connection().execute(Q["task_id_exists"], {"task_id": task_id}).fetchone() is not None

    @fresh
    def get_job(self, job_id: int) -> Job:
        """One job by its row id."""
        row = self.db.connection().execute(Q["get_job"], {"id": job_id}).fetchone()
        if row is None:
            raise JobNotFound(f"no job with id {job_id}")
        return Job.from_row(row)

    @fresh
    def jobs_for_task(self, task_id: str) -> list[Job]:
        """Every row that carries a task id (a retried Celery task may have several)."""
        return [Job.from_row(r) for r in self.db.connection().execute(Q["jobs_by_task_id"], {"task_id": task_id})]

    @fresh
    def search_jobs(
        self, state: JobState | str | None = None, queue: str | None = None, task_name: str | None = None,
        text: str | None = None, *, cursor: int | None = None, limit: int = 50, newest_first: bool = True,
        jobs_only: bool = True,
    ) -> list[Job]:
        """A page of jobs by filters, newest or oldest first, after the job `cursor` (the last of
        the previous page). `text` finds the row id it names, and task ids and calls (a shell
        job's command) that contain it, ignoring ASCII case."""
        params = {
            "state": JobState(state).value if state is not None else None,
            "queue": queue,
            "task_name": task_name,
            "cursor": cursor,
            "pattern": None if not text else "%" + _LIKE_SPECIAL.sub(r"\\\g<0>", text) + "%",
            "row_id": int(text) if text and text.isascii() and text.isdecimal() and int(text) < 2**63 else None,
            "jobs_only": int(jobs_only),
            "limit": limit,
        }
        statement = Q["search_jobs_newest"] if newest_first else Q["search_jobs_oldest"]
        return [Job.from_row(r) for r in self.db.connection().execute(statement, params)]

    @fresh
    def activity(self, since: float) -> list[tuple[int, str, str, int]]:
        """(minute, queue, event, count) from the minute of `since` (epoch seconds) on, oldest
        first: what the stats table counted (published, completed, failed, dead, recovered,
        revived, cancelled)."""
        rows = self.db.connection().execute(Q["stats_since"], {"minute": int(since // 60)})
        return [(int(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]

    @fresh
    def event_totals(self) -> dict[tuple[str, str], int]:
        """Every count the stats table holds, per (queue, event)."""
        return {(str(r[0]), str(r[1])): int(r[2]) for r in self.db.connection().execute(Q["stats_totals"])}


def find_existing_task_id(conn: Any, task_ids: list[str]) -> str | None:
    # json_each cuts a string at its first NUL ("a\x00b" would match a job whose id is "a"):
    # such ids are compared one by one, as bound parameters, which keep the whole string.
    for task_id in [t for t in task_ids if "\x00" in t]:
        if conn.execute(Q["task_id_exists"], {"task_id": task_id}).fetchone() is not None:
            return task_id
    task_ids = [t for t in task_ids if "\x00" not in t]
    for start in range(0, len(task_ids), 10_000):
        row = conn.execute(Q["any_task_id_exists"], {"ids": json.dumps(task_ids[start:start + 10_000])}).fetchone()
        if row is not None:
            return str(row[0])
    return None
