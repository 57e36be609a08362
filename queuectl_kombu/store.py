"""JobStore: the only user of SQL; one method per verb; owns every job state change."""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import settings as settings_mod
from .db import Database
from .exceptions import DuplicateJob, InvalidTransition, JobNotFound, PayloadTooLarge
from .jobs import ClaimedJob, Job
from .retry import RetryPolicy
from .sql import QUERIES as Q
from .states import JobState

logger = logging.getLogger(__name__)

#: How long a read of the config table is reused on the hot path (claims).
SETTINGS_TTL = 1.0
#: A consumer that has not refreshed its rows for this long is gone (killed): its auto-delete and
#: exclusive queues are deleted. Live consumers refresh every CONSUMER_HEARTBEAT seconds.
CONSUMER_TIMEOUT = 10.0
CONSUMER_HEARTBEAT = 2.0
#: A WAL larger than this is checkpointed with TRUNCATE (readers of many processes can keep a
#: passive checkpoint from ever restarting it under a steady load).
WAL_LIMIT_BYTES = 8 * 1024 * 1024
#: Every process checks the WAL's size after this many of its own commits.
WAL_CHECK_EVERY = 200
#: The largest message accepted, in bytes of its JSON form: a clear error instead of a file
#: (and workers' memory) blown up by one message.
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
#: SQLite's page cache while a whole file of jobs is inserted (its default is 2 MiB): fewer pages
#: of the indexes spilled and read back.
BULK_CACHE_KIB = 64 * 1024


@dataclass(slots=True)
class NewJob:
    """A message to insert: what publish needs besides the payload (slots: one is made per
    message published, a frozen dataclass costs several times as much to make)."""

    queue: str
    payload: str
    priority: int = 0
    next_run_at: float | None = None
    task_id: str | None = None
    task_name: str | None = None
    max_retries: int | None = None
    expires_at: float | None = None


def _shares(conn: Any, queues: Sequence[str], limit: int, now: float) -> dict[str, int]:
    """How many of the first `limit` ready jobs across `queues` each queue holds, in claim order
    (priority, then publication): a claim over several queues takes what was published first,
    not everything of the first queue."""
    heads = [
        [(-priority, job_id, queue) for priority, job_id in
         conn.execute(Q["ready_order"], {"queue": queue, "now": now, "limit": limit})]
        for queue in queues
    ]
    shares: dict[str, int] = {}
    for _, _, queue in itertools.islice(heapq.merge(*heads), limit):
        shares[queue] = shares.get(queue, 0) + 1
    return shares


class JobStore:
    """Every statement against one queuectl database goes through here."""

    def __init__(
        self, path: str, *, synchronous: str = "NORMAL", clock: Callable[[], float] = time.time
    ) -> None:
        self.db = Database(path, synchronous=synchronous)
        self.path = self.db.path
        self.clock = clock
        self._settings: dict[str, Any] | None = None
        self._settings_read_at = 0.0
        #: Commits made by this process; with PRAGMA data_version it tells a consumer
        #: whether anything may have changed since its last empty claim.
        self._commits = itertools.count()
        self.local_commits = 0
        self._commits_lock = threading.Lock()

    # -- connection ---------------------------------------------------------------------------

    def open(self) -> None:
        """Open this thread's connection now: checks the path and creates the schema."""
        self.db.connection()

    def close(self) -> None:
        """Close this thread's connection."""
        self.db.close()

    def _committed(self) -> None:
        with self._commits_lock:
            self.local_commits = next(self._commits)
        if (self.local_commits % WAL_CHECK_EVERY == 0 and not self.db.connection().in_transaction
                and self.wal_too_large()):
            # Publishers with no worker running would otherwise let the WAL grow without bound.
            self.checkpoint()

    def change_stamp(self) -> tuple[int, int]:
        """A value that differs whenever anyone committed since it was last taken."""
        return (self.db.data_version(), self.local_commits)

    # -- settings -----------------------------------------------------------------------------

    def settings(self, fresh: bool = False) -> dict[str, Any]:
        """Defaults overlaid with the config table, re-read at most once a second unless fresh."""
        now = time.monotonic()
        if fresh or self._settings is None or now - self._settings_read_at > SETTINGS_TTL:
            rows = {r[0]: r[1] for r in self.db.connection().execute(Q["get_config"])}
            self._settings = settings_mod.from_rows(rows)
            self._settings_read_at = now
        return dict(self._settings)

    def set_config(self, key: str, value: Any) -> tuple[str, Any]:
        """Validate and store one setting; running processes pick it up within a second."""
        name, typed = settings_mod.parse(key, value)
        with self.db.write() as conn:
            conn.execute(Q["set_config"], {"key": name, "value": json.dumps(typed)})
        self._committed()
        self._settings = None
        logger.info("config %s = %r", name, typed)
        return name, typed

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, job: NewJob) -> int:
        """Insert one pending job; returns its id."""
        return self.publish_many([job])[0]

    def publish_many(self, jobs: Iterable[NewJob], *, unique_task_ids: bool = False) -> list[int]:
        """Insert pending jobs in one transaction: all or none.

        With unique_task_ids, a task id that any job already has (or that repeats in `jobs`)
        raises DuplicateJob and nothing is written.
        """
        with self.db.write() as conn:
            ids = self._insert(conn, list(jobs), unique_task_ids, set())
        self._committed()
        _log_pending(ids)
        return ids

    def publish_stream(self, batches: Iterable[Sequence[NewJob]], *, unique_task_ids: bool = False) -> int:
        """Insert every batch of `batches` in ONE transaction: all or none; returns the count.

        The batches may be made while the transaction is open (a generator): an exception raised
        while making one rolls back every batch before it. The write lock is held throughout,
        so other writers wait (busy timeout) for as long as the batches take to make.
        """
        count = 0
        seen: set[str] = set()
        ranges: list[tuple[int, int]] = []
        with self.db.cache_size(BULK_CACHE_KIB), self.db.write() as conn:
            for batch in batches:
                ids = self._insert(conn, list(batch), unique_task_ids, seen)
                if ids:
                    ranges.append((ids[0], ids[-1]))
                    count += len(ids)
        self._committed()
        if logger.isEnabledFor(logging.INFO):
            for first, last in ranges:
                _log_pending(range(first, last + 1))
        return count

    def _insert(self, conn: Any, jobs: list[NewJob], unique_task_ids: bool, seen: set[str]) -> list[int]:
        """Insert `jobs` in the open transaction; their ids, in order (consecutive: we hold the lock)."""
        if not jobs:
            return []
        now = self.clock()
        for job in jobs:
            if len(job.payload) * 4 > MAX_PAYLOAD_BYTES:  # UTF-8: at most 4 bytes a character
                size = len(job.payload.encode("utf-8", "surrogatepass"))
                if size > MAX_PAYLOAD_BYTES:
                    raise PayloadTooLarge(
                        f"message of {size} bytes for queue {job.queue!r} exceeds the limit "
                        f"of {MAX_PAYLOAD_BYTES} bytes"
                    )
            if job.max_retries is not None and not 0 <= job.max_retries <= settings_mod.MAX_RETRIES_LIMIT:
                raise ValueError(
                    f"max_retries must be a whole number from 0 to {settings_mod.MAX_RETRIES_LIMIT}, "
                    f"not {job.max_retries!r}"
                )
        if unique_task_ids:
            self._check_new_task_ids(conn, [job.task_id for job in jobs if job.task_id is not None], seen)
        if len(jobs) == 1:
            cur = conn.execute(Q["insert_job"], _insert_params(jobs[0], now))
            return [int(cur.lastrowid or 0)]
        # One statement for the batch; None is bound as a sentinel (binding None costs the
        # sqlite3 module an adapter lookup per value) and turned back into NULL by the statement.
        conn.executemany(Q["insert_jobs"], [
            (job.task_id or "", job.task_name or "", job.queue, job.priority, job.payload,
             -1 if job.max_retries is None else job.max_retries,
             now if job.next_run_at is None else job.next_run_at,
             -1.0 if job.expires_at is None else job.expires_at, now)
            for job in jobs
        ])
        last = int(conn.execute(Q["last_job_id"]).fetchone()[0])
        return list(range(last - len(jobs) + 1, last + 1))

    @staticmethod
    def _check_new_task_ids(conn: Any, task_ids: list[str], seen: set[str]) -> None:
        """DuplicateJob if a task id repeats (in `task_ids` or `seen`) or a job already has it."""
        for task_id in task_ids:
            if task_id in seen:
                raise DuplicateJob(f"a job with id {task_id!r} already exists", task_id)
            seen.add(task_id)
        found = _existing_task_id(conn, task_ids)
        if found is not None:
            raise DuplicateJob(f"a job with id {found!r} already exists", found)

    # -- consuming ----------------------------------------------------------------------------

    def claim(
        self, queues: Sequence[str], limit: int, owner: str, lease_seconds: float
    ) -> list[ClaimedJob]:
        """Move up to `limit` due jobs of `queues` to processing under a lease, in one transaction.

        Higher priority first, then FIFO across all of `queues` (publication order).
        """
        return self._claim("claim", queues, limit, owner, lease_seconds)

    def take(self, queues: Sequence[str], limit: int) -> list[ClaimedJob]:
        """Remove and return up to `limit` due jobs, for consumers that do not acknowledge."""
        return self._claim("take", queues, limit, "no-ack", 0.0)

    def _claim(
        self, statement: str, queues: Sequence[str], limit: int, owner: str, lease_seconds: float
    ) -> list[ClaimedJob]:
        now = self.clock()
        conn = self.db.connection()
        ready = [  # a queue named twice is claimed from once
            q for q in dict.fromkeys(queues) if conn.execute(Q["has_ready"], {"queue": q, "now": now}).fetchone()
        ]
        if not ready or limit <= 0:
            return []
        claimed: list[ClaimedJob] = []
        with self.db.write() as conn:
            shares = {ready[0]: limit} if len(ready) == 1 else _shares(conn, ready, limit, now)
            for queue, share in shares.items():
                rows = conn.execute(
                    Q[statement],
                    {
                        "queue": queue,
                        "now": now,
                        "owner": owner,
                        "lease_expires_at": now + lease_seconds,
                        "limit": share,
                    },
                ).fetchall()
                claimed.extend(ClaimedJob(*row) for row in rows)
        claimed.sort(key=lambda j: (-j.priority, j.id))
        if claimed:
            self._committed()
            if logger.isEnabledFor(logging.INFO):
                verb = "processing" if statement == "claim" else "delivered and removed (no ack)"
                for job in claimed:
                    logger.info("job %d: %s (attempt %d, %s)", job.id, verb, job.attempts, owner)
        return claimed

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

    def ack(self, job_id: int, owner: str, retention: float | None = None) -> bool:
        """Complete a processing job (delete it when retention is 0). False if the lease was lost."""
        return not self.ack_many([job_id], owner, retention)

    def ack_many(self, job_ids: Sequence[int], owner: str, retention: float | None = None) -> list[int]:
        """Complete processing jobs in one transaction; returns the ids whose lease was lost."""
        if not job_ids:
            return []
        if retention is None:
            retention = self.settings()["retention"]
        statement = Q["delete_processing"] if retention <= 0 else Q["complete"]
        now = self.clock()
        with self.db.write() as conn:
            done = {r[0] for r in conn.execute(statement, {"ids": json.dumps(list(job_ids)), "owner": owner, "now": now})}
        lost = [job_id for job_id in job_ids if job_id not in done]
        self._committed()
        for job_id in lost:
            logger.warning("job %d: ack ignored, %s no longer holds its lease", job_id, owner)
        if logger.isEnabledFor(logging.INFO):
            for job_id in job_ids:
                if job_id not in lost:
                    logger.info("job %d: completed", job_id)
        return lost

    def requeue(self, job_id: int, owner: str) -> bool:
        """Put a processing job back to pending as it was (the attempt does not count)."""
        with self.db.write() as conn:
            changed = conn.execute(
                Q["requeue"], {"id": job_id, "owner": owner, "now": self.clock()}
            ).rowcount
        self._committed()
        if not changed:
            logger.warning("job %d: requeue ignored, %s no longer holds its lease", job_id, owner)
            return False
        logger.info("job %d: pending (requeued)", job_id)
        return True

    def fail(
        self,
        job_id: int,
        owner: str,
        error: str | None = None,
        *,
        max_retries: int | None = None,
        backoff_base: float | None = None,
    ) -> JobState | None:
        """Apply the retry policy to a processing job whose attempt failed.

        Settings not given come from the config table, read in the same transaction, so a change
        applies to the next failure. Returns the new state, or None if the lease was lost.
        """
        now = self.clock()
        with self.db.write() as conn:
            row = conn.execute(Q["get_processing"], {"id": job_id, "owner": owner}).fetchone()
            if row is None:
                new_state = None
            else:
                config = settings_mod.from_rows({r[0]: r[1] for r in conn.execute(Q["get_config"])})
                policy = RetryPolicy(
                    max_retries=config["max_retries"] if max_retries is None else max_retries,
                    backoff_base=config["backoff_base"] if backoff_base is None else backoff_base,
                )
                decision = policy.decide(row["attempts"], now, row["max_retries"])
                reason = error or row["last_error"] or "rejected"
                params = {"id": job_id, "owner": owner, "now": now, "error": reason}
                if decision.state is JobState.FAILED:
                    conn.execute(Q["retry_later"], {**params, "next_run_at": decision.next_run_at})
                else:
                    conn.execute(Q["bury"], params)
                new_state = decision.state
        self._committed()
        if new_state is None:
            logger.warning("job %d: reject ignored, %s no longer holds its lease", job_id, owner)
        elif new_state is JobState.DEAD:
            logger.warning(
                "job %d: dead after %d attempts (retries exceeded): %s", job_id, row["attempts"], reason
            )
        else:
            logger.info(
                "job %d: failed, retry in %.3gs (attempt %d): %s",
                job_id, decision.next_run_at - now, row["attempts"], reason,
            )
        return new_state

    def record_error(self, task_id: str, error: str) -> None:
        """Keep the error of a running task, for the reject that follows."""
        with self.db.write() as conn:
            conn.execute(Q["record_error"], {"task_id": task_id, "error": error})
        self._committed()

    # -- leases and housekeeping ----------------------------------------------------------------

    def renew_leases(self, owner: str, lease_seconds: float) -> int:
        """Extend every lease `owner` holds; returns how many."""
        with self.db.write() as conn:
            n = conn.execute(
                Q["renew_leases"], {"owner": owner, "lease_expires_at": self.clock() + lease_seconds}
            ).rowcount
        return n

    def recover_expired_leases(self, max_retries: int | None = None) -> list[tuple[int, str | None, JobState, int]]:
        """Jobs whose consumer died go back to pending (dead once retries are exhausted: the job's
        own max_retries, else `max_retries` if given, else the config table's)."""
        now = self.clock()
        conn = self.db.connection()
        if conn.execute(Q["has_expired_leases"], {"now": now}).fetchone() is None:
            return []
        if max_retries is None:
            max_retries = self.settings(fresh=True)["max_retries"]
        with self.db.write() as conn:
            rows = conn.execute(
                Q["recover_expired_leases"], {"now": now, "max_retries": max_retries}
            ).fetchall()
        self._committed()
        recovered = [(r[0], r[1], JobState(r[2]), r[3]) for r in rows]
        for job_id, task_id, state, attempts in recovered:
            logger.warning(
                "job %d (task %s): lease expired after attempt %d, now %s", job_id, task_id, attempts, state
            )
        return recovered

    def prune_completed(self, retention: float | None = None, batch: int = 5000) -> int:
        """Delete completed jobs older than the retention time, in short batches."""
        if retention is None:
            retention = self.settings()["retention"]
        cutoff = self.clock() - retention
        total = 0
        while True:
            with self.db.write() as conn:
                n = conn.execute(Q["prune_completed"], {"cutoff": cutoff, "limit": batch}).rowcount
            total += n
            if n < batch:
                break
        if total:
            self._committed()
            logger.info("pruned %d completed jobs", total)
        return total

    def checkpoint(self) -> tuple[int, int, int]:
        """Checkpoint the WAL: passive, or truncating once it has grown past WAL_LIMIT_BYTES."""
        return self.db.checkpoint(truncate=self.db.wal_size() > WAL_LIMIT_BYTES)

    def wal_too_large(self) -> bool:
        """Whether the WAL has grown past WAL_LIMIT_BYTES (busy readers kept it from restarting)."""
        return self.db.wal_size() > WAL_LIMIT_BYTES

    # -- queues, exchanges, bindings ----------------------------------------------------------

    def declare_queue(
        self, name: str, arguments: dict[str, Any] | None = None, *, auto_delete: bool = False,
        exclusive: bool = False,
    ) -> None:
        """Record a queue with its x-expires, x-message-ttl and x-max-priority (a redeclare is a use)."""
        args = arguments or {}
        with self.db.write() as conn:
            conn.execute(
                Q["declare_queue"],
                {
                    "name": name,
                    "arguments": json.dumps(args, default=str),
                    "auto_delete": int(auto_delete),
                    "exclusive": int(exclusive),
                    "expires": _millis(args.get("x-expires")),
                    "message_ttl": _millis(args.get("x-message-ttl")),
                    "max_priority": _int_or_none(args.get("x-max-priority")),
                    "now": self.clock(),
                },
            )
        self._committed()

    def has_queue(self, name: str) -> bool:
        """Whether a queue of that name was declared."""
        return self.db.connection().execute(Q["has_queue"], {"name": name}).fetchone() is not None

    def queue_info(self, name: str) -> dict[str, Any] | None:
        """A declared queue's settings, or None."""
        row = self.db.connection().execute(Q["get_queue"], {"name": name}).fetchone()
        return None if row is None else dict(row)

    def list_queues(self) -> list[dict[str, Any]]:
        """Declared queues with their settings and the number of messages waiting."""
        return [dict(r) for r in self.db.connection().execute(Q["list_queues"])]

    def queue_size(self, queue: str) -> int:
        """Jobs waiting in `queue` (pending, or failed and waiting for a retry; not expired)."""
        row = self.db.connection().execute(Q["queue_size"], {"queue": queue, "now": self.clock()}).fetchone()
        return int(row[0])

    def touch_queues(self, names: Sequence[str]) -> None:
        """Mark queues as in use, so that their x-expires does not run out while consumed."""
        if names:
            with self.db.write() as conn:
                conn.execute(Q["touch_queues"], {"names": json.dumps(list(names)), "now": self.clock()})

    def purge(self, queue: str) -> int:
        """Delete the jobs waiting in `queue`; returns how many."""
        with self.db.write() as conn:
            n = conn.execute(Q["delete_queue_jobs"], {"name": queue}).rowcount
        self._committed()
        if n:
            logger.info("purged %d jobs from queue %s", n, queue)
        return n

    def delete_queue(self, queue: str) -> int:
        """Delete a queue with its waiting jobs and its bindings; returns the jobs deleted."""
        with self.db.write() as conn:
            n = self._delete_queue(conn, queue)
        self._committed()
        return n

    @staticmethod
    def _delete_queue(conn: Any, queue: str) -> int:
        n = conn.execute(Q["delete_queue_jobs"], {"name": queue}).rowcount
        conn.execute(Q["delete_queue_bindings"], {"name": queue})
        conn.execute(Q["delete_queue_consumers"], {"name": queue})
        conn.execute(Q["delete_queue"], {"name": queue})
        return int(n)

    def add_consumer(self, queue: str, owner: str) -> None:
        """Record that `owner` consumes `queue`."""
        with self.db.write() as conn:
            conn.execute(Q["add_consumer"], {"queue": queue, "owner": owner, "now": self.clock()})
        self._committed()

    def remove_consumer(self, queue: str, owner: str) -> bool:
        """`owner` stops consuming `queue`; an auto-delete queue left without live consumers is
        deleted with its messages. Returns True when the queue was deleted."""
        now = self.clock()
        with self.db.write() as conn:
            conn.execute(Q["remove_consumer"], {"queue": queue, "owner": owner})
            info = conn.execute(Q["get_queue"], {"name": queue}).fetchone()
            live = conn.execute(Q["live_consumers"], {"queue": queue, "cutoff": now - CONSUMER_TIMEOUT}).fetchone()[0]
            deleted = bool(info is not None and info["auto_delete"] and not live)
            if deleted:
                self._delete_queue(conn, queue)
        self._committed()
        if deleted:
            logger.info("queue %s deleted with its last consumer (auto-delete)", queue)
        return deleted

    def remove_owner(self, owner: str) -> None:
        """Forget every consumer row of a closing connection."""
        with self.db.write() as conn:
            conn.execute(Q["remove_owner"], {"owner": owner})
        self._committed()

    def heartbeat(self, owner: str) -> None:
        """A live connection refreshes its consumer rows."""
        with self.db.write() as conn:
            conn.execute(Q["heartbeat_consumers"], {"owner": owner, "now": self.clock()})

    def expire(self) -> tuple[list[str], int]:
        """Delete queues unused past their x-expires, auto-delete and exclusive queues whose
        consumers are all gone, and messages past their TTL."""
        now = self.clock()
        params = {"now": now, "cutoff": now - CONSUMER_TIMEOUT}
        conn = self.db.connection()
        queues = [r[0] for r in conn.execute(Q["expired_queues"], params)]
        orphans = [r[0] for r in conn.execute(Q["orphaned_queues"], params)]
        stale = conn.execute(Q["has_expired_messages"], params).fetchone() is not None
        if not queues and not orphans and not stale:
            return [], 0
        with self.db.write() as conn:
            # Look again inside the transaction: a consumer may have come back since.
            queues = [r[0] for r in conn.execute(Q["expired_queues"], params)]
            orphans = [r[0] for r in conn.execute(Q["orphaned_queues"], params) if r[0] not in queues]
            for queue in queues + orphans:
                self._delete_queue(conn, queue)
            conn.execute(Q["delete_stale_consumers"], params)
            n = conn.execute(Q["delete_expired_messages"], params).rowcount
        self._committed()
        for queue in queues:
            logger.info("queue %s expired (unused past its x-expires) and was deleted", queue)
        for queue in orphans:
            logger.warning("queue %s deleted: its consumers are gone (auto-delete or exclusive)", queue)
        if n:
            logger.info("%d messages expired (message TTL) and were deleted", n)
        return queues + orphans, n

    def declare_exchange(
        self, name: str, type: str, *, durable: bool = True, auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Record an exchange (the first declaration wins)."""
        with self.db.write() as conn:
            conn.execute(
                Q["declare_exchange"],
                {
                    "name": name, "type": type, "durable": int(durable), "auto_delete": int(auto_delete),
                    "arguments": json.dumps(arguments or {}, default=str),
                },
            )
        self._committed()

    def exchange_type(self, name: str) -> str | None:
        """The type of a declared exchange, or None."""
        row = self.db.connection().execute(Q["exchange_type"], {"name": name}).fetchone()
        return None if row is None else str(row[0])

    def delete_exchange(self, name: str) -> None:
        """Forget an exchange and its bindings."""
        with self.db.write() as conn:
            conn.execute(Q["delete_exchange_bindings"], {"name": name})
            conn.execute(Q["delete_exchange"], {"name": name})
        self._committed()

    def bind(self, exchange: str, queue: str, routing_key: str, arguments: dict[str, Any] | None = None) -> None:
        """Bind a queue to an exchange (idempotent)."""
        with self.db.write() as conn:
            conn.execute(
                Q["bind"],
                {
                    "exchange": exchange, "queue": queue, "routing_key": routing_key,
                    "arguments": json.dumps(arguments or {}, default=str),
                },
            )
        self._committed()

    def unbind(self, exchange: str, queue: str, routing_key: str) -> None:
        """Remove one binding."""
        with self.db.write() as conn:
            conn.execute(Q["unbind"], {"exchange": exchange, "queue": queue, "routing_key": routing_key})
        self._committed()

    def bindings_of(self, exchange: str) -> list[tuple[str, str]]:
        """(routing_key, queue) of every binding of an exchange."""
        return [(r[0], r[1]) for r in self.db.connection().execute(Q["bindings_of_exchange"], {"exchange": exchange})]

    def routes(self, exchange: str) -> tuple[str | None, list[tuple[str, str]]]:
        """The exchange's type (None if undeclared or unbound) and (routing_key, queue) of each
        binding, in one read: what a publish needs."""
        rows = self.db.connection().execute(Q["routes_of_exchange"], {"exchange": exchange}).fetchall()
        return (rows[0][0] if rows else None), [(r[1], r[2]) for r in rows]

    def all_bindings(self) -> list[tuple[str, str, str]]:
        """(queue, exchange, routing_key) of every binding."""
        return [(r[0], r[1], r[2]) for r in self.db.connection().execute(Q["all_bindings"])]

    # -- the dead-letter queue -------------------------------------------------------------------

    def dlq_retry(self, job_id: int) -> None:
        """Move one dead job back to pending with its attempts reset."""
        with self.db.write() as conn:
            changed = conn.execute(Q["revive"], {"id": job_id, "now": self.clock()}).rowcount
            if not changed:
                row = conn.execute(Q["get_job"], {"id": job_id}).fetchone()
                if row is None:
                    raise JobNotFound(f"no job with id {job_id}")
                raise InvalidTransition(f"job {job_id} is {row['state']}, not dead")
        self._committed()
        logger.info("job %d: pending (dlq retry)", job_id)

    def dlq_retry_all(self) -> list[int]:
        """Move every dead job back to pending; returns their ids."""
        with self.db.write() as conn:
            ids = [r[0] for r in conn.execute(Q["revive_all"], {"now": self.clock()}).fetchall()]
        self._committed()
        for job_id in ids:
            logger.info("job %d: pending (dlq retry)", job_id)
        return ids

    def dlq_purge(self) -> int:
        """Delete every dead job; returns how many."""
        with self.db.write() as conn:
            n = len(conn.execute(Q["delete_dead"]).fetchall())
        self._committed()
        if n:
            logger.info("deleted %d dead jobs", n)
        return n

    # -- reading --------------------------------------------------------------------------------

    def counts(self) -> dict[JobState, int]:
        """Jobs per state (every state present, zero included)."""
        result = {state: 0 for state in JobState}
        for state, n in self.db.connection().execute(Q["count_by_state"]):
            result[JobState(state)] = n
        return result

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

    def counts_by_queue(self) -> dict[str, dict[JobState, int]]:
        """Jobs per queue and state (every state present in each queue, zero included)."""
        result: dict[str, dict[JobState, int]] = {}
        for queue, state, n in self.db.connection().execute(Q["count_by_queue_state"]):
            result.setdefault(queue, {s: 0 for s in JobState})[JobState(state)] = n
        return result

    def oldest_pending_created_at(self) -> float | None:
        """When the oldest pending job (not a control message) was created, or None."""
        row = self.db.connection().execute(Q["oldest_waiting"]).fetchone()
        return None if row[0] is None else float(row[0])

    def find_job(self, key: str | int) -> Job:
        """A job by task id (the newest row carrying it), else by numeric row id."""
        row = self.db.connection().execute(Q["latest_by_task_id"], {"task_id": str(key)}).fetchone()
        if row is not None:
            return Job.from_row(row)
        text = str(key)
        if text.isascii() and text.isdecimal() and int(text) < 2**63:
            return self.get_job(int(text))
        raise JobNotFound(f"no job with id {key!r}")

    def existing_task_id(self, task_ids: Sequence[str]) -> str | None:
        """One of `task_ids` that a job already carries, or None (one query per 10,000 ids)."""
        return _existing_task_id(self.db.connection(), list(task_ids))

    def task_exists(self, task_id: str) -> bool:
        """Whether any job carries this task id."""
        return self.db.connection().execute(Q["task_id_exists"], {"task_id": task_id}).fetchone() is not None

    def get_job(self, job_id: int) -> Job:
        """One job by its row id."""
        row = self.db.connection().execute(Q["get_job"], {"id": job_id}).fetchone()
        if row is None:
            raise JobNotFound(f"no job with id {job_id}")
        return Job.from_row(row)

    def jobs_for_task(self, task_id: str) -> list[Job]:
        """Every row that carries a task id (a retried Celery task may have several)."""
        return [Job.from_row(r) for r in self.db.connection().execute(Q["jobs_by_task_id"], {"task_id": task_id})]


def _millis(value: Any) -> float | None:
    """AMQP milliseconds (x-expires, x-message-ttl, expiration) as seconds."""
    if value is None or value == "":
        return None
    try:
        return float(value) / 1000.0
    except (TypeError, ValueError):
        return None


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _existing_task_id(conn: Any, task_ids: list[str]) -> str | None:
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


def _log_pending(ids: Iterable[int]) -> None:
    if logger.isEnabledFor(logging.INFO):
        for job_id in ids:
            logger.info("job %d: pending", job_id)


def _insert_params(job: NewJob, now: float) -> dict[str, Any]:
    return {
        "task_id": job.task_id,
        "task_name": job.task_name,
        "queue": job.queue,
        "priority": job.priority,
        "payload": job.payload,
        "max_retries": job.max_retries,
        "next_run_at": now if job.next_run_at is None else job.next_run_at,
        "expires_at": job.expires_at,
        "now": now,
    }
