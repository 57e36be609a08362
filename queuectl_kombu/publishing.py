"""Publishing: a kombu message routed through the bindings in the file and stored as job rows.

The channel's basic_publish goes through here, and so can anyone who builds many messages at once
(queuectl's bulk enqueue): route a message (``route``), build its rows (``message_rows``: the
priority, the ETA, the task id and name, max retries and expiry read from Celery's headers), and
insert many in one transaction (``JobStore.publish_many`` / ``publish_stream``). ``stored_message``
is the form kombu's virtual transport stores a message in, for callers that build one themselves.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone
from typing import Any

from kombu.utils.json import dumps

from .exceptions import InvalidValue
from .routing import route
from .rules import MAX_PRIORITY, MAX_RETRIES_LIMIT
from .store import JobStore, NewJob

logger = logging.getLogger(__name__)

#: A message header that sets the job's own max_retries (the config table's applies otherwise).
MAX_RETRIES_HEADER = "x-max-retries"
#: A message header asking that no other job carry the same task id (DuplicateJob otherwise).
UNIQUE_HEADER = "x-unique-id"

__all__ = [
    "MAX_RETRIES_HEADER", "UNIQUE_HEADER", "message_rows", "parse_eta", "publish", "publish_message", "route", "stored_message",
]


def parse_eta(value: Any) -> float | None:
    """An ``eta`` header (ISO 8601; naive means UTC) as epoch seconds, or None."""
    if not value:
        return None
    try:
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            when = datetime.fromisoformat(str(value))
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            seconds = when.timestamp()
    except (ValueError, OverflowError, TypeError):
        seconds = math.nan
    if not math.isfinite(seconds):
        logger.warning("ignoring unreadable eta header %r", value)
        return None
    return seconds


def _text_header(headers: dict[str, Any], name: str) -> str | None:
    """A header that names something (a task id or name): a string, or InvalidValue."""
    value = headers.get(name)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise InvalidValue(f"message header {name!r} must be a string, not {type(value).__name__}")


def _max_retries_header(value: Any) -> int | None:
    """The x-max-retries header: a whole number from 0 to MAX_RETRIES_LIMIT, or InvalidValue."""
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = -1
    if (isinstance(value, bool) or number != value and str(number) != str(value).strip()
            or not 0 <= number <= MAX_RETRIES_LIMIT):
        raise InvalidValue(
            f"message header {MAX_RETRIES_HEADER!r} must be a whole number from 0 to {MAX_RETRIES_LIMIT}, not {value!r}"
        )
    return number


def message_priority(message: dict[str, Any]) -> int:
    """The message's priority property within 0..MAX_PRIORITY (0 when it has none or a bad one)."""
    try:
        return max(min(int(message["properties"]["priority"]), MAX_PRIORITY), 0)
    except (TypeError, ValueError, KeyError):
        return 0


def message_rows(message: dict[str, Any], queues: list[str], payload: str | None = None) -> list[NewJob]:
    """The rows that store `message` (kombu's stored form) in each of `queues`; `payload` is its
    JSON text when the caller has made it already."""
    headers = message.get("headers") or {}
    props = message.get("properties") or {}
    # A Celery task's `expires` also arrives as AMQP `expiration`: it is left to the worker,
    # which records the task as REVOKED (as with Redis) instead of the message vanishing.
    expiration = None if headers.get("task") else props.get("expiration")
    payload = dumps(message) if payload is None else payload
    priority = message_priority(message)
    next_run_at = parse_eta(headers.get("eta"))
    task_id = _text_header(headers, "id") or _text_header(props, "correlation_id")
    task_name = _text_header(headers, "task")
    expires_at = None if expiration in (None, "") else time.time() + float(expiration) / 1000.0
    max_retries = _max_retries_header(headers.get(MAX_RETRIES_HEADER))
    return [
        NewJob(queue=queue, payload=payload, priority=priority, next_run_at=next_run_at, task_id=task_id,
               task_name=task_name, expires_at=expires_at, max_retries=max_retries)
        for queue in queues
    ]


def publish(store: JobStore, message: dict[str, Any], queues: list[str]) -> list[int]:
    """Insert `message` into each of `queues` in one transaction; the new job ids.
    With the UNIQUE_HEADER header, a task id some job already has raises DuplicateJob."""
    unique = bool((message.get("headers") or {}).get(UNIQUE_HEADER))
    return store.publish_many(message_rows(message, queues), unique_task_ids=unique)


def publish_message(store: JobStore, message: dict[str, Any], queues: list[str]) -> None:
    """A channel's publish, which waits for no other writer: inserted in one transaction when the
    file's turn is free, else into the spool (SQLite: moved into the jobs table by the next
    write; JobStore.publish_or_spool). A message with the UNIQUE_HEADER header is inserted, its
    task id checked (DuplicateJob), waiting for its turn as any write."""
    if not queues:
        return
    unique = bool((message.get("headers") or {}).get(UNIQUE_HEADER))
    jobs = message_rows(message, queues)
    if unique:
        store.publish_many(jobs, unique_task_ids=True)
    else:
        store.publish_or_spool(jobs)


def stored_message(
    body: str, headers: dict[str, Any], *, exchange: str, routing_key: str, priority: int,
    correlation_id: str, content_type: str = "application/json", body_encoding: str = "base64",
) -> dict[str, Any]:
    """A message in the form kombu's virtual transport stores it (its delivery tag is given at
    delivery); `body` is already encoded as `body_encoding` says."""
    return {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": headers,
        "properties": {
            "correlation_id": correlation_id, "reply_to": "", "delivery_mode": 2,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            "priority": priority, "body_encoding": body_encoding, "delivery_tag": "",
        },
    }
