"""Whether one queuectl file and its workers are healthy: what `queuectl health` answers (exit 0
or 1, one line why) and the dashboard serves at /healthz.

Healthy is: the file exists, opens and passes SQLite's quick check; at least one worker answers
a ping (unless none is required); the longest-waiting runnable job has waited no longer than
max_pending_age; the WAL is within its limit.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from queuectl_kombu import WAL_LIMIT_BYTES, JobStore, QueuectlError

from .workers import answering

#: Seconds a runnable job may wait before the queue counts as backed up (--max-pending-age).
DEFAULT_MAX_PENDING_AGE = 900.0


@dataclass(frozen=True)
class HealthReport:
    """The answer: healthy or not, and why; what was measured on the way (None: not reached,
    nothing waiting, or no worker asked); `worker` names the first worker that answered."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    database: str = ""
    worker: str | None = None
    oldest_pending_age: float | None = None
    oldest_pending_queue: str | None = None
    wal_bytes: int | None = None

    def line(self) -> str:
        """One line: what was found healthy, or every reason it is not."""
        if not self.ok:
            return "; ".join(self.reasons)
        worker = "not asked" if self.worker is None else self.worker
        oldest = ("none waiting" if self.oldest_pending_age is None
                  else f"{self.oldest_pending_age:.0f} s ({self.oldest_pending_queue})")
        return (f"healthy: {self.database}: quick check ok, worker answering: {worker}, "
                f"oldest pending job: {oldest}, WAL {self.wal_bytes} bytes")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (the dashboard's /healthz body)."""
        return {
            "ok": self.ok, "reasons": list(self.reasons), "database": self.database, "worker": self.worker,
            "oldest_pending_age": self.oldest_pending_age, "oldest_pending_queue": self.oldest_pending_queue,
            "wal_bytes": self.wal_bytes,
        }


def check_health(
    store: JobStore, app: Celery, *, max_pending_age: float = DEFAULT_MAX_PENDING_AGE,
    workers_ok_missing: bool = False, timeout: float = 1.0,
) -> HealthReport:
    """Check the file of `store` and the workers of `app` (pinged for up to `timeout` seconds
    unless `workers_ok_missing`). A file that does not exist is reported,
    never created; one that cannot be opened or read ends the checks there."""
    path = store.path
    if store.db.engine == "sqlite" and not os.path.exists(path):
        return HealthReport(False, [f"database {path} does not exist"], database=path)
    moved = store.db.moved(now=True)
    if moved:  # a long-lived caller (the dashboard) would go on reading the file it opened
        return HealthReport(False, [f"database {path} {moved}"], database=path)
    try:
        problems = store.quick_check()
        waiting = store.waiting_since()
        now = store.clock()
    except (QueuectlError, sqlite3.Error) as exc:
        return HealthReport(False, [f"database {path} is unusable: {exc}"], database=path)
    reasons = []
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        reasons.append(f"database {path} failed SQLite's quick check: {problems[0]}{more}")
    oldest_queue = min(waiting, key=lambda q: (waiting[q], q)) if waiting else None
    oldest_age = None if oldest_queue is None else max(0.0, now - waiting[oldest_queue])
    if oldest_age is not None and oldest_age > max_pending_age:
        reasons.append(f"the oldest pending job (queue {oldest_queue}) has waited {oldest_age:.0f} s, "
                       f"more than {max_pending_age:g} s")
    wal = store.db.wal_size()
    if wal > WAL_LIMIT_BYTES:
        reasons.append(f"the WAL holds {wal} bytes, more than its limit of {WAL_LIMIT_BYTES} "
                       "(a long reader keeps checkpoints from finishing)")
    worker = None
    if not workers_ok_missing:
        names = answering(app, timeout, limit=1)  # the first answer is enough
        if names:
            worker = min(names)
        else:
            reasons.append(f"no worker answered a ping within {timeout:g} s")
    return HealthReport(not reasons, reasons, database=path, worker=worker, oldest_pending_age=oldest_age,
                        oldest_pending_queue=oldest_queue, wal_bytes=wal)
