"""Job states and the transitions allowed between them (mirrored in sql/schema.sql)."""

from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    """The state of one job; the value is what the database stores."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"

    def __str__(self) -> str:
        return self.value


#: Every allowed transition; the store's statements each name the state they expect.
TRANSITIONS: frozenset[tuple[JobState, JobState]] = frozenset(
    {
        (JobState.PENDING, JobState.PROCESSING),  # claim
        (JobState.FAILED, JobState.PROCESSING),  # claim of a retry that is due
        (JobState.PROCESSING, JobState.COMPLETED),  # ack
        (JobState.PROCESSING, JobState.PENDING),  # requeue, lease expired
        (JobState.PROCESSING, JobState.FAILED),  # reject, retries left
        (JobState.PROCESSING, JobState.DEAD),  # reject or lease expired, retries exhausted
        (JobState.DEAD, JobState.PENDING),  # dlq retry
    }
)

#: States whose rows are waiting in a queue (what a claim takes, what purge removes).
READY_STATES: frozenset[JobState] = frozenset({JobState.PENDING, JobState.FAILED})
