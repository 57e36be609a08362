"""A queue's rows read out of one database and written into another (queuectl copy): jobs that
are not completed, the config, queues, exchanges, bindings and live results."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..sql import QUERIES as Q
from .base import fresh
from .config import ConfigStore
from .topology import CONSUMER_TIMEOUT

logger = logging.getLogger("queuectl_kombu.store")

#: Rows deleted per statement when a move empties the source.
DELETE_BATCH = 5000
#: Task ids looked up per statement at the destination.
PRESENT_BATCH = 1000


@dataclass
class QueueRows:
    """Everything `copy` carries from one database to another, as plain values."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    config: list[dict[str, Any]] = field(default_factory=list)
    queues: list[dict[str, Any]] = field(default_factory=list)
    exchanges: list[dict[str, Any]] = field(default_factory=list)
    bindings: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Written:
    """What `write_rows` did at the destination."""

    jobs: dict[str, int] = field(default_factory=dict)  # state -> jobs copied
    #: (task id, queue) of the jobs the destination holds already: skipped
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: (task id, queue) of the skipped jobs whose task id the destination gives another message:
    #: a move leaves them in the source
    different: list[tuple[str, str]] = field(default_factory=list)
    #: source ids of the jobs the destination now holds (copied, or there already): a move deletes these
    held: list[int] = field(default_factory=list)
    #: jobs that were processing at the source: pending at the destination, the attempt counted
    requeued: int = 0
    config: int = 0
    queues: int = 0
    exchanges: int = 0
    bindings: int = 0
    results: int = 0


def _dicts(rows: Any) -> list[dict[str, Any]]:
    return [{key: row[key] for key in row.keys()} for row in rows]


class Transfer(ConfigStore):
    """Reading a whole queue out, writing it into another database."""

    def live_workers(self) -> list[str]:
        """The consumers (worker connections) that refreshed their rows in the last
        CONSUMER_TIMEOUT seconds."""
        conn = self.db.connection()
        return [str(r[0]) for r in conn.execute(Q["live_consumer_owners"], {"cutoff": self.clock() - CONSUMER_TIMEOUT})]

    @fresh
    def read_rows(self) -> QueueRows:
        """Every row `copy` carries, read in one snapshot (a read transaction)."""
        conn = self.db.connection()
        now = self.clock()
        with self.db.snapshot():
            rows = QueueRows(
                jobs=_dicts(conn.execute(Q["copy_jobs_out"])),
                config=_dicts(conn.execute(Q["copy_config_out"])),
                queues=_dicts(conn.execute(Q["copy_queues_out"])),
                exchanges=_dicts(conn.execute(Q["copy_exchanges_out"])),
                bindings=_dicts(conn.execute(Q["copy_bindings_out"])),
                results=_dicts(conn.execute(Q["copy_results_out"], {"now": now})),
            )
        for result in rows.results:  # one value, whichever column held it
            blob = result.pop("blob")
            if blob is not None:
                result["value"] = bytes(blob)
        return rows

    def write_rows(self, rows: QueueRows, source: str) -> Written:
        """Insert `rows` in one transaction: all or nothing. A job whose task id the destination
        has in the same queue is skipped; queues, exchanges, bindings and results present are
        kept as they are; config values are the source's. A job that was processing goes back to
        pending (its attempt counted, as after a crash): no worker here holds it."""
        written = Written()
        now = self.clock()
        max_retries = int(self.settings(fresh=True)["max_retries"])
        with self.db.write() as conn:
            for row in rows.config:
                conn.execute(Q["copy_config_in"], row)
                written.config += 1
            if rows.config:
                max_retries = int({r["key"]: json.loads(r["value"]) for r in rows.config}.get("max_retries", max_retries))
            for row in rows.queues:
                written.queues += _inserted(conn.execute(Q["copy_queue_in"], row))
            for row in rows.exchanges:
                written.exchanges += _inserted(conn.execute(Q["copy_exchange_in"], row))
            for row in rows.bindings:
                written.bindings += _inserted(conn.execute(Q["copy_binding_in"], row))
            for row in rows.results:
                value = row["value"]
                params = {**row, "value": value if isinstance(value, str) else None,
                          "blob": value if isinstance(value, (bytes, bytearray, memoryview)) else None}
                if self.db.engine == "sqlite":
                    params["value"] = value
                written.results += _inserted(conn.execute(Q["copy_result_in"], params))
            present = self._present(conn, rows.jobs)
            inserts: list[dict[str, Any]] = []
            for row in rows.jobs:
                key = (str(row["task_id"]), str(row["queue"]))
                if row["task_id"] is not None:
                    payload = present.get(key)
                else:
                    found = conn.execute(Q["copy_anonymous_job_present"],
                                         {k: row[k] for k in ("queue", "created_at", "payload")}).fetchone()
                    payload = None if found is None else found[0]
                if payload is not None:
                    written.skipped.append(key)
                    if payload == row["payload"]:
                        written.held.append(int(row["id"]))
                    else:
                        written.different.append(key)
                    continue
                if row["task_id"] is not None:
                    present[key] = row["payload"]  # a second copy of it in the source is skipped too
                written.held.append(int(row["id"]))
                job = dict(row)
                if job["state"] == "processing":
                    limit = max_retries if job["max_retries"] is None else int(job["max_retries"])
                    job["state"] = "dead" if int(job["attempts"]) >= 1 + limit else "pending"
                    job["last_error"] = f"was processing in {source} when it was copied"
                    job["next_run_at"] = now
                    job["updated_at"] = now
                    written.requeued += 1
                inserts.append(job)
                written.jobs[job["state"]] = written.jobs.get(job["state"], 0) + 1
            if inserts:
                conn.executemany(Q["copy_job_in"], inserts)  # one statement, all the rows
        self._committed()
        for task_id, queue in written.skipped:
            logger.info("job %s of queue %s is in %s already: not copied", task_id, queue, self.path)
        for task_id, queue in written.different:
            logger.warning("%s holds another message with task id %s in queue %s: that job was not copied",
                           self.path, task_id, queue)
        logger.info("copied %d jobs from %s into %s", sum(written.jobs.values()), source, self.path)
        return written

    @staticmethod
    def _present(conn: Any, jobs: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
        """(task id, queue) -> message of the destination's jobs whose task ids `jobs` carry:
        one read per PRESENT_BATCH ids, not one per job."""
        ids = sorted({str(job["task_id"]) for job in jobs if job["task_id"] is not None})
        present: dict[tuple[str, str], str] = {}
        for start in range(0, len(ids), PRESENT_BATCH):
            chunk = json.dumps(ids[start:start + PRESENT_BATCH])
            for task_id, queue, payload in conn.execute(Q["copy_jobs_present"], {"task_ids": chunk}):
                present.setdefault((str(task_id), str(queue)), str(payload))
        return present

    def delete_jobs(self, ids: Sequence[int]) -> int:
        """Delete the jobs `ids` (a move's source, once the destination committed them)."""
        deleted = 0
        for start in range(0, len(ids), DELETE_BATCH):
            with self.db.write() as conn:
                cursor = conn.execute(Q["delete_jobs_by_id"], {"ids": json.dumps(list(ids[start:start + DELETE_BATCH]))})
                deleted += max(cursor.rowcount, 0)
        self._committed()
        return deleted


def _inserted(cursor: Any) -> int:
    return 1 if cursor.rowcount and cursor.rowcount > 0 else 0
