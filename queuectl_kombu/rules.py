"""The rules every part of queuectl shares, each defined once: ranges, ready states, control
queues, WAL size, wake-up bound, what a cancel writes. The SQL files name them as {TOKENS} (see
sql/__init__.py)."""

from __future__ import annotations

from .states import JobState

#: Message priorities run from 0 to MAX_PRIORITY, higher first (a queue's x-max-priority caps it lower).
MAX_PRIORITY = 9
#: The most retries a job may have (the config table's max_retries, a job's own, the x-max-retries header).
MAX_RETRIES_LIMIT = 10_000
#: States whose rows wait in a queue: what a claim takes, what a purge removes, what a size counts.
READY_STATES: tuple[JobState, ...] = (JobState.PENDING, JobState.FAILED)
#: Queues of Celery's remote control end with this; those of its events start with EVENT_QUEUE_PREFIX.
CONTROL_QUEUE_SUFFIX = ".pidbox"
EVENT_QUEUE_PREFIX = "celeryev."
#: SQLite's WAL is truncated back to this size (journal_size_limit; a worker's connections cut
#: it back to db.CHECKPOINT_BYTES), and checkpointed with TRUNCATE once it grows past it (readers
#: of many processes can keep passive checkpoints from restarting it under a steady load).
WAL_LIMIT_BYTES = 8 * 1024 * 1024
#: Longest anything that waits for the file to change sleeps before it looks again anyway.
MAX_WAIT = 1.0
#: After a wake-up that shows no commit yet, look again this soon: the -wal file is written a
#: moment before the commit becomes visible to other connections. (A queuectl writer wakes its
#: watchers again once it is, as its turn ends; a writer that takes no turn does not.)
SETTLE = 0.002
#: Whom a committed change wakes (Database.write(wakes=...)): every waiter, workers included (a
#: publish, a requeue, a retry, a result: work or a result may be there); the watchers only
#: (results, cancel, the dashboard: a claim, an ack); nobody (a lease renewal, a heartbeat).
#: SQLite's commits wake every waiter whatever they say (the -wal file).
EVERYONE = "everyone"
WATCHERS = "watchers"
NOBODY = "nobody"
#: The last_error of a job that was cancelled (queuectl cancel, or revoked through Celery): it is
#: dead, so `dlq retry` runs it again.
CANCELLED = "cancelled"
#: The header `dlq retry` puts on a cancelled job's message: when it was revived (epoch seconds).
#: A worker that still remembers the task's revoke from before that time forgets it (revokes.py),
#: so the retried job runs instead of being discarded as revoked again.
REVIVED_HEADER = "x-queuectl-revived"


def is_control_queue(name: str) -> bool:
    """Whether a queue carries Celery's remote-control or event messages rather than jobs."""
    return name.endswith(CONTROL_QUEUE_SUFFIX) or name.startswith(EVENT_QUEUE_PREFIX)


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_READY_SQL = "(" + ", ".join(_sql_text(s.value) for s in READY_STATES) + ")"

#: What the SQL files write as {NAME}: the same rules, as SQL text.
SQL_TOKENS: dict[str, str] = {
    "MAX_PRIORITY": str(MAX_PRIORITY),
    "READY_STATES": _READY_SQL,
    # A row of :queue that a claim may take at :now: waiting, due, not past its TTL, and in a queue
    # that is not paused (the queue's row is read once per statement, not once per job).
    "DUE_IN_QUEUE": (
        f"queue = :queue AND state IN {_READY_SQL} AND next_run_at <= :now "
        "AND (expires_at IS NULL OR expires_at > :now) "
        "AND NOT EXISTS (SELECT 1 FROM queues WHERE name = :queue AND paused <> 0)"
    ),
    "JOB_QUEUE": (
        f"(queue NOT LIKE {_sql_text('%' + CONTROL_QUEUE_SUFFIX)} "
        f"AND queue NOT LIKE {_sql_text(EVENT_QUEUE_PREFIX + '%')})"
    ),
    "WAL_LIMIT_BYTES": str(WAL_LIMIT_BYTES),
    "CANCELLED": _sql_text(CANCELLED),
    # json_set's path to the revived header of a stored message
    "REVIVED_PATH": _sql_text(f'$.headers."{REVIVED_HEADER}"'),
}
