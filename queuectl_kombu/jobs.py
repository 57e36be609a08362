"""The Job record as the store returns it."""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
from dataclasses import dataclass, fields
from typing import Any

from .states import JobState


@dataclass(frozen=True)
class Job:
    """One row of the jobs table."""

    id: int
    task_id: str | None
    task_name: str | None
    queue: str
    state: JobState
    priority: int
    payload: str
    attempts: int
    max_retries: int | None
    next_run_at: float
    lease_owner: str | None
    lease_expires_at: float | None
    expires_at: float | None
    created_at: float
    updated_at: float
    last_error: str | None

    def message(self) -> dict[str, Any]:
        """The kombu message this job carries."""
        return dict(json.loads(self.payload))

    def task_call(self) -> tuple[list[Any], dict[str, Any]] | None:
        """(args, kwargs) of a Celery task message with a JSON body, else None."""
        try:
            message = self.message()
            body = message.get("body")
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            if message.get("content-type") != "application/json":
                return None
            decoded = json.loads(body)
        except (ValueError, TypeError, binascii.Error):
            return None
        if isinstance(decoded, list) and len(decoded) == 3:  # Celery protocol 2: (args, kwargs, embed)
            return list(decoded[0]), dict(decoded[1])
        return None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        """Build a Job from a ``SELECT *`` row."""
        values: dict[str, Any] = {f.name: row[f.name] for f in fields(cls)}
        values["state"] = JobState(values["state"])
        return cls(**values)


@dataclass(frozen=True)
class ClaimedJob:
    """A job just moved to processing by a claim."""

    id: int
    queue: str
    priority: int
    attempts: int
    task_id: str | None
    payload: str
    #: Claims of this message so far, this one included (a requeue does not take one back).
    deliveries: int = 1
