"""Job states (sql/schema.sql lists the transitions allowed between them)."""

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
