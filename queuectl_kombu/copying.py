"""Copying (or moving) a queue from one database to another, SQLite and PostgreSQL alike
(queuectl copy; docs/operations.md)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from .exceptions import DatabaseUnusable, InvalidInput, WorkersRunning
from .postgres import is_postgres_url
from .store import JobStore, Written

logger = logging.getLogger(__name__)


@dataclass
class CopyReport:
    """What copy_queue did."""

    source: str
    dest: str
    written: Written
    #: jobs deleted from the source (a move)
    moved: int = 0
    #: the source's live consumers, copied anyway (force)
    workers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        w = self.written
        return {
            "source": self.source, "dest": self.dest, "jobs": dict(sorted(w.jobs.items())),
            "copied": sum(w.jobs.values()), "requeued": w.requeued,
            "skipped": [{"task_id": t, "queue": q} for t, q in w.skipped],
            "skipped_other_message": [{"task_id": t, "queue": q} for t, q in w.different],
            "config": w.config, "queues": w.queues, "exchanges": w.exchanges, "bindings": w.bindings,
            "results": w.results, "moved": self.moved, "workers_running": len(self.workers),
        }


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b) or (
        os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def copy_queue(source: str, dest: str, *, move: bool = False, force: bool = False) -> CopyReport:
    """Copy every job of `source` that is not completed (with its state, attempts, retries,
    schedule, priority, last error and payload), the config, queues, exchanges, bindings and
    results that have not expired, into `dest` (a file path or a postgresql:// URL; a missing
    file is created), in one transaction on `dest`. A job whose task id `dest` holds in the same
    queue is skipped and reported, never duplicated, so a copy can be run again.

    With `move`, the jobs `dest` now holds are then deleted from `source`: those copied, and
    those skipped whose message `dest` holds already (a job skipped because `dest` gives its task
    id to another message stays). Refused while
    workers consume from `source` (WorkersRunning), unless `force`: a job they finish after the
    copy would run again at `dest`.
    """
    same = InvalidInput("the source and the destination are the same database")
    if not is_postgres_url(source) and not is_postgres_url(dest) and _same_file(source, dest):
        raise same
    if not is_postgres_url(source) and not os.path.isfile(source):
        raise DatabaseUnusable(f"cannot open database {source}: no such file")
    src = JobStore(source)
    dst = JobStore(dest)
    try:
        if src.db.engine == dst.db.engine == "postgresql" and src.db.identity() == dst.db.identity() and \
                src.db.target.schema == dst.db.target.schema:  # type: ignore[union-attr]
            raise same
        workers = src.live_workers()
        if workers and not force:
            raise WorkersRunning(
                f"{len(workers)} worker connection(s) consume from {src.path}: stop the workers first, "
                f"or pass --force (a job they finish after the copy runs again at the destination)"
            )
        rows = src.read_rows()
        written = dst.write_rows(rows, src.path)
        report = CopyReport(source=src.path, dest=dst.path, written=written, workers=workers)
        if move:
            report.moved = src.delete_jobs(written.held)
            logger.warning("moved %d jobs from %s to %s", report.moved, src.path, dst.path)
        return report
    finally:
        src.close()
        dst.close()
