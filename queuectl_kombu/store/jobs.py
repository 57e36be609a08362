"""Jobs and their state changes: publish, claim, ack, requeue, fail, cancel, the dead-letter queue."""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import enqueue
from .. import settings as settings_mod
from ..exceptions import DuplicateJob, InvalidTransition, InvalidValue, JobNotFound, PayloadTooLarge
from ..jobs import ClaimedJob
from ..retry import RetryPolicy
from ..rules import CANCELLED, MAX_RETRIES_LIMIT, NOBODY, READY_STATES, WATCHERS
from ..spool import SpoolUnavailable
from ..sql import QUERIES as Q
from ..states import JobState
from ..turns import TurnTaken
from .config import ConfigStore
from .reading import find_existing_task_id

logger = logging.getLogger("queuectl_kombu.store")

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


class JobChanges(ConfigStore):
    """Every change of a job's state (each logged at INFO; a move to dead at WARNING)."""

    def publish(self, job: NewJob) -> int:
        """Insert one pending job; returns its id."""
        return self.publish_many([job])[0]

    def publish_many(self, jobs: Iterable[NewJob], *, unique_task_ids: bool = False, wait: bool = True) -> list[int]:
        """Insert pending jobs in one transaction: all or none.

        With unique_task_ids, a task id that any job already has (or that repeats in `jobs`)
        raises DuplicateJob and nothing is written. Without `wait`, TurnTaken, nothing written,
        when another writer has the file (SQLite).
        """
        with self.db.write(publishes=True, wait=wait) as conn:
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
        published: list[list[int]] = []
        with self.db.cache_size(BULK_CACHE_KIB), self.db.write(publishes=True) as conn:
            for batch in batches:
                ids = self._insert(conn, list(batch), unique_task_ids, seen)
                if ids:
                    published.append(ids if logger.isEnabledFor(logging.INFO) else [])
                    count += len(ids)
        self._committed()
        if logger.isEnabledFor(logging.INFO):
            for ids in published:
                _log_pending(ids)
        return count

    # -- the spool (SQLite): publishes that wait for no lock ------------------------------------

    def publish_or_spool(self, jobs: list[NewJob]) -> None:
        """A channel's publish (one message, a job per queue it was routed to) that waits for no
        other writer: inserted at once when the file's turn is free (SQLite; as publish_many),
        written to the spool when another writer has it (publish_spooled). Where there is no
        spool (PostgreSQL, inside enqueue_in, a directory we cannot write), publish_many."""
        if self.db.engine == "sqlite" and enqueue.current() is None:
            self.db.connection()  # opens the spool with the file
            if self.db.spool is not None:
                try:
                    self.publish_many(jobs, wait=False)
                    return
                except TurnTaken:
                    if self.publish_spooled(jobs):
                        return
        self.publish_many(jobs)

    def publish_spooled(self, jobs: list[NewJob]) -> bool:
        """Write one publish (its jobs, one per queue it was routed to) to this process's spool
        file (spool.py) instead of the database; the next write of any process moves it in. True,
        or False where there is no spool: PostgreSQL, a directory we cannot write, or inside
        enqueue_in (a publish there belongs to the application's transaction)."""
        if self.db.engine != "sqlite" or enqueue.current() is not None:
            return False
        self.db.connection()  # opens the spool with the file
        spool = self.db.spool
        if spool is None:
            return False
        _check_new_jobs(jobs)
        for job in jobs:
            _storable(job)  # what SQLite would refuse is refused here, not by the write that moves it in
        now = self.clock()
        try:
            spool.append([(j.queue, j.payload, j.priority, j.next_run_at, j.task_id, j.task_name, j.max_retries,
                           j.expires_at, now) for j in jobs])
        except SpoolUnavailable as exc:
            logger.warning("%s: publishes write the database", exc)
            self.db.spool = None
            return False
        return True

    def spool_waiting(self, conn: Any) -> bool:
        """Whether the spool holds publishes nobody moved in yet: the files' sizes against the
        offsets this process saw, and, when they say yes, against the offsets recorded (a read:
        another process's write may have moved them in already, which a write would find out
        only after waiting for its turn)."""
        spool = self.db.spool
        if spool is None or not spool.has_new():
            return False
        spool.consumed.update(conn.execute(Q["spool_positions"]).fetchall())
        return spool.has_new()

    def spool_left(self) -> bool:
        """Whether the last write of this process stopped moving the spool in at TAKE_IN_BYTES,
        with more to move in (the next write goes on)."""
        spool = self.db.spool
        return spool is not None and spool.left

    def renumber_spool(self) -> None:
        """Give this file a new spool number and forget its spool's offsets (a backup's copy):
        files written for the file it was copied from are never moved into it."""
        if self.db.engine != "sqlite":
            return
        with self.db.write() as conn:
            conn.execute(Q["spool_clear"])
            conn.execute(Q["spool_token_make"], (secrets.randbits(62),))

    def _take_in_spool(self, conn: Any) -> Callable[[], None] | None:
        """Database.take_in: move the spool's new lines into the jobs table, in the write
        transaction `conn` just began, with the offsets that say they were moved. Returns what
        to do after the commit: delete the files read to their end that nobody writes, log."""
        spool = self.db.spool
        if spool is None:
            return None
        positions = dict(conn.execute(Q["spool_positions"]).fetchall())
        jobs: list[NewJob] = []
        published_at: list[float] = []
        advances: list[tuple[str, int]] = []
        finished: list[str] = []
        for chunk in spool.read(positions):
            for row in chunk.rows:
                try:
                    job = NewJob(*row[:8])
                    _storable(job)
                    published_at.append(float(row[8]))
                    jobs.append(job)
                except (TypeError, ValueError, IndexError):
                    logger.warning("skipping an unreadable publish in spool file %s: %r", chunk.name, row[:1])
            if chunk.end != chunk.start:
                advances.append((chunk.name, chunk.end))
            if chunk.finished:
                finished.append(chunk.name)
        gone = [(name,) for name in positions if name not in spool.listed]
        if not (jobs or advances or finished or gone):
            return None
        # in the order they were published, whichever file they are in (ids are claim order);
        # each created, and due unless an ETA says otherwise, when its publisher wrote it
        order = sorted(range(len(jobs)), key=published_at.__getitem__)
        jobs, published_at = [jobs[i] for i in order], [published_at[i] for i in order]
        ids = self._insert_checked(conn, jobs, False, set(), at=published_at) if jobs else []
        if advances:
            conn.executemany(Q["spool_advance"], advances)
        if gone:
            conn.executemany(Q["spool_forget"], gone)

        def after() -> None:
            self.db.note_commit()
            for name in finished:
                spool.forget(name)
            _log_pending(ids)

        return after

    def _insert(self, conn: Any, jobs: list[NewJob], unique_task_ids: bool, seen: set[str]) -> list[int]:
        """Insert `jobs` in the open transaction; their ids, in order."""
        if not jobs:
            return []
        _check_new_jobs(jobs)
        return self._insert_checked(conn, jobs, unique_task_ids, seen)

    def _insert_checked(self, conn: Any, jobs: list[NewJob], unique_task_ids: bool, seen: set[str],
                        at: list[float] | None = None) -> list[int]:
        """Insert `jobs`, checked already; `at`: each one's time of publication (now otherwise)."""
        now = self.clock()
        times = [now] * len(jobs) if at is None else at
        if unique_task_ids:
            self.db.serialize(conn, "unique task ids")  # two publishers of one id: one wins
            self._check_new_task_ids(conn, [job.task_id for job in jobs if job.task_id is not None], seen)
        if len(jobs) == 1 and at is None:
            job_id = int(conn.execute(Q["insert_job"], _insert_params(jobs[0], now)).fetchone()[0])
            self._tally(conn, "published", [jobs[0].queue])
            return [job_id]
        if any(job.task_id == "" or job.task_name == "" for job in jobs):  # '' is insert_jobs' NULL
            ids = [int(conn.execute(Q["insert_job"], _insert_params(job, when)).fetchone()[0])
                   for job, when in zip(jobs, times)]
            self._tally(conn, "published", (job.queue for job in jobs))
            return ids
        # One statement for the batch; None is bound as a sentinel (binding None costs the
        # sqlite3 module an adapter lookup per value) and turned back into NULL by the statement.
        ids = self.db.insert_rows(conn, Q["insert_jobs"], [
            (job.task_id or "", job.task_name or "", job.queue, job.priority, job.payload,
             -1 if job.max_retries is None else job.max_retries,
             when if job.next_run_at is None else job.next_run_at,
             -1.0 if job.expires_at is None else job.expires_at, when)
            for job, when in zip(jobs, times)
        ])
        self._tally(conn, "published", (job.queue for job in jobs))
        return ids

    @staticmethod
    def _check_new_task_ids(conn: Any, task_ids: list[str], seen: set[str]) -> None:
        """DuplicateJob if a task id repeats (in `task_ids` or `seen`) or a job already has it."""
        for task_id in task_ids:
            if task_id in seen:
                raise DuplicateJob(f"a job with id {task_id!r} already exists", task_id)
            seen.add(task_id)
        found = find_existing_task_id(conn, task_ids)
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

    def take(self, queues: Sequence[str], limit: int, *, spool: bool = True) -> list[ClaimedJob]:
        """Remove and return up to `limit` due jobs, for consumers that do not acknowledge.
        With `spool` False, publishes waiting in the spool do not make it write: the caller's
        claim right after moves them in (and takes what they brought for these queues then)."""
        return self._claim("take", queues, limit, "no-ack", 0.0, spool=spool)

    def _claim(
        self, statement: str, queues: Sequence[str], limit: int, owner: str, lease_seconds: float,
        *, spool: bool = True,
    ) -> list[ClaimedJob]:
        now = self.clock()
        conn = self.db.connection()
        # a queue named twice is claimed from once; the engine says whether a read first saves a
        # write (SQLite: the file's write lock) or only costs a round trip (PostgreSQL)
        # publishes waiting in the spool are moved in by the write below: no look first
        spooled = spool and self.spool_waiting(conn)
        ready = [
            q for q in dict.fromkeys(queues)
            if spooled or (statement == "claim" and not self.db.look_before_claim)  # takes: control queues, mostly empty
            or conn.execute(Q["has_ready"], {"queue": q, "now": now}).fetchone()
        ]
        if not ready or limit <= 0:
            return []
        claimed: list[ClaimedJob] = []
        with self.db.write(durable=False, wakes=WATCHERS) as conn:
            now = self.clock()  # once the turn is had: due includes what its write moved in from the spool
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
        with self.db.write(durable=False, wakes=WATCHERS) as conn:
            rows = conn.execute(statement, {"ids": json.dumps(list(job_ids)), "owner": owner, "now": now}).fetchall()
            self._tally(conn, "completed", (r[1] for r in rows))
        done = {r[0] for r in rows}
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
        with self.db.write(durable=False) as conn:
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
        with self.db.write(durable=False) as conn:
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
                self._tally(conn, decision.state.value, [row["queue"]])
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

    # -- cancel ---------------------------------------------------------------------------------

    def cancel_waiting(
        self, job_ids: Sequence[int] | None = None, *, queue: str | None = None,
        states: Iterable[JobState | str] | None = None,
    ) -> list[tuple[int, str | None, str]]:
        """Cancel waiting jobs: each one still pending or failed moves to the dead-letter queue
        with last_error "cancelled" (`dlq_retry` undoes it), in one transaction.

        With `job_ids`: those jobs (one that is not waiting any more, claimed or finished, is left
        as it is). Without: every job of `queue` (of every queue but Celery's control queues when
        None) that waits in one of `states` (pending and failed when None; other states are
        ignored). Returns (id, task id, queue) of each job cancelled; each counts as "cancelled" in
        the stats table.
        """
        params: dict[str, Any] = {"error": CANCELLED, "now": self.clock()}
        if job_ids is not None:
            if queue is not None or states is not None:
                raise InvalidValue("cancel_waiting takes job ids or a queue and states, not both")
            if not job_ids:
                return []
            statement = Q["cancel_waiting"]
            params["ids"] = json.dumps([int(i) for i in job_ids])
        else:
            wanted = {JobState(s).value for s in (READY_STATES if states is None else states)}
            wanted &= {s.value for s in READY_STATES}
            if not wanted:
                return []
            statement = Q["cancel_waiting_where"]
            params.update(states=json.dumps(sorted(wanted)), queue=queue)
        with self.db.write() as conn:
            rows = conn.execute(statement, params).fetchall()
            self._tally(conn, "cancelled", (r[2] for r in rows))
        self._committed()
        for row in rows:  # a move to dead: WARNING, as every other
            logger.warning("job %d: dead (cancelled while waiting)", row[0])
        return [(int(r[0]), r[1], str(r[2])) for r in rows]

    def cancel_processing(self, job_id: int, owner: str, error: str = CANCELLED) -> bool:
        """A running job whose task was revoked ends dead with last_error `error`, never
        completed: what a worker writes instead of the ack of a revoked task (revokes.py).
        False if `owner` no longer holds its lease."""
        with self.db.write() as conn:
            rows = conn.execute(
                Q["cancel_processing"], {"id": job_id, "owner": owner, "error": error, "now": self.clock()}
            ).fetchall()
            # a task past its Celery `expires` is revoked by the worker too: dead, not cancelled
            self._tally(conn, "cancelled" if error == CANCELLED else "dead", (r[0] for r in rows))
        self._committed()
        if not rows:
            logger.warning("job %d: cancel ignored, %s no longer holds its lease", job_id, owner)
            return False
        logger.warning("job %d: dead (%s: its task was revoked)", job_id, error)
        return True

    def cancel_completed(self, task_id: str, error: str = CANCELLED) -> bool:
        """A task that its worker acknowledged at its start (task_acks_late off) and then
        terminated because it was revoked: its newest row, completed by that early ack, ends dead
        with `error`. False if that row is not completed (a late ack made it dead already, or
        retention 0 deleted it)."""
        with self.db.write() as conn:
            rows = conn.execute(
                Q["cancel_completed"], {"task_id": task_id, "error": error, "now": self.clock()}
            ).fetchall()
            self._tally(conn, "cancelled", (r[1] for r in rows))
        self._committed()
        for row in rows:
            logger.warning("job %d: dead (%s: its task was terminated after an early ack)", row[0], error)
        return bool(rows)

    def record_error(self, task_id: str, error: str) -> None:
        """Keep the error of a running task, for the reject that follows."""
        with self.db.write(durable=False, wakes=NOBODY) as conn:
            conn.execute(Q["record_error"], {"task_id": task_id, "error": error})
        self._committed()

    def dlq_retry(self, job_id: int) -> None:
        """Move one dead job back to pending with its attempts reset."""
        with self.db.write() as conn:
            revived = conn.execute(Q["revive"], {"id": job_id, "now": self.clock()}).fetchall()
            self._tally(conn, "revived", (r[0] for r in revived))
            if not revived:
                row = conn.execute(Q["get_job"], {"id": job_id}).fetchone()
                if row is None:
                    raise JobNotFound(f"no job with id {job_id}")
                raise InvalidTransition(f"job {job_id} is {row['state']}, not dead")
        self._committed()
        logger.info("job %d: pending (dlq retry)", job_id)

    def dlq_retry_all(self) -> list[int]:
        """Move every dead job back to pending; returns their ids."""
        with self.db.write() as conn:
            rows = conn.execute(Q["revive_all"], {"now": self.clock()}).fetchall()
            self._tally(conn, "revived", (r[1] for r in rows))
        ids = [r[0] for r in rows]
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


def _storable(job: NewJob) -> None:
    """UnicodeEncodeError (a ValueError) for text SQLite cannot store (a lone surrogate), as the
    insert itself would raise; TypeError for a field of the wrong type."""
    for text in (job.queue, job.payload, job.task_id or "", job.task_name or ""):
        text.encode("utf-8")


def _check_new_jobs(jobs: Iterable[NewJob]) -> None:
    """PayloadTooLarge or InvalidValue for a job that must not be published."""
    for job in jobs:
        if len(job.payload) * 4 > MAX_PAYLOAD_BYTES:  # UTF-8: at most 4 bytes a character
            size = len(job.payload.encode("utf-8", "surrogatepass"))
            if size > MAX_PAYLOAD_BYTES:
                raise PayloadTooLarge(
                    f"message of {size} bytes for queue {job.queue!r} exceeds the limit "
                    f"of {MAX_PAYLOAD_BYTES} bytes"
                )
        if job.max_retries is not None and not 0 <= job.max_retries <= MAX_RETRIES_LIMIT:
            raise InvalidValue(
                f"max_retries must be a whole number from 0 to {MAX_RETRIES_LIMIT}, "
                f"not {job.max_retries!r}"
            )


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
