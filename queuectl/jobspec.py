"""A shell job as users describe it (JSON form or CLI options): validation, and the call it becomes."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from queuectl_kombu import MAX_PRIORITY, MAX_RETRIES_HEADER, MAX_RETRIES_LIMIT, InvalidInput, is_control_queue

#: Keys of the JSON job form.
FIELDS = ("id", "command", "max_retries", "priority", "queue", "delay", "run_at", "timeout", "cwd", "env")
#: Longest id and queue name accepted.
MAX_NAME = 200
#: Control characters other than tab, newline and carriage return.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class InvalidJob(InvalidInput):
    """The job description is not valid."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One validated shell job."""

    command: str
    id: str | None = None
    max_retries: int | None = None
    priority: int | None = None
    queue: str | None = None
    delay: float | None = None
    run_at: datetime | None = None
    timeout: float | None = None
    cwd: str | None = None
    env: dict[str, str] | None = field(default=None)

    def task_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the run_shell call (only those given)."""
        kwargs: dict[str, Any] = {"command": self.command}
        if self.cwd is not None:
            kwargs["cwd"] = self.cwd
        if self.env:
            kwargs["env"] = dict(self.env)
        if self.timeout is not None:
            kwargs["timeout"] = self.timeout
        return kwargs

    def headers(self) -> dict[str, Any]:
        """Message headers the broker reads: the job's own max_retries."""
        return {} if self.max_retries is None else {MAX_RETRIES_HEADER: self.max_retries}


def _fail(where: str, message: str) -> InvalidJob:
    return InvalidJob(f"{where}{message}")


def _text(where: str, key: str, value: Any, *, limit: int | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"{key} must be a non-empty string, not {json.dumps(value)}")
    if _CONTROL.search(value):
        raise _fail(where, f"{key} must not contain control characters")
    if limit is not None and (len(value) > limit or "\n" in value):
        raise _fail(where, f"{key} must be one line of at most {limit} characters")
    return value


def _whole(where: str, key: str, value: Any, low: int, high: int | None = None) -> int:
    if (
        isinstance(value, bool) or not isinstance(value, (int, float))
        or not math.isfinite(value) or value != int(value)
    ):
        raise _fail(where, f"{key} must be a whole number, not {json.dumps(value)}")
    number = int(value)
    if number < low or (high is not None and number > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _fail(where, f"{key} must be {bounds}, not {number}")
    return number


def _seconds(where: str, key: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, f"{key} must be a number of seconds, not {json.dumps(value)}")
    if value < 0 or (positive and value == 0):
        raise _fail(where, f"{key} must be {'greater than' if positive else 'at least'} 0, not {value:g}")
    return float(value)


def parse_time(value: Any, key: str = "run_at", where: str = "") -> datetime:
    """An ISO 8601 time (naive means UTC) as an aware datetime; InvalidJob otherwise."""
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when
    raise _fail(where, f"{key} must be an ISO 8601 time such as 2030-01-31T12:00:00Z, not {json.dumps(value)}")


def _env(where: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _fail(where, f"env must be an object of names to strings, not {json.dumps(value)}")
    env: dict[str, str] = {}
    for name, text in value.items():
        if not name or "=" in name or "\x00" in name:
            raise _fail(where, f"env name {json.dumps(name)} is not a valid variable name")
        if not isinstance(text, str) or "\x00" in text:
            raise _fail(where, f"env value of {name} must be a string, not {json.dumps(text)}")
        env[name] = text
    return env


def job_from_mapping(data: Any, where: str = "") -> JobSpec:
    """Validate one job description (the JSON form's keys); `where` prefixes every message."""
    if not isinstance(data, Mapping):
        raise _fail(where, f"a job must be a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r} (known: {', '.join(FIELDS)})")
    if data.get("command") is None:
        raise _fail(where, "the job has no command")
    given = {k: v for k, v in data.items() if v is not None}
    if "delay" in given and "run_at" in given:
        raise _fail(where, "give delay or run_at, not both")
    queue = _text(where, "queue", given["queue"], limit=MAX_NAME) if "queue" in given else None
    if queue is not None and is_control_queue(queue):
        raise _fail(where, f"queue {queue!r} is reserved for Celery's remote control and events")
    return JobSpec(
        command=_text(where, "command", given["command"]),
        id=_text(where, "id", given["id"], limit=MAX_NAME) if "id" in given else None,
        max_retries=(
            _whole(where, "max_retries", given["max_retries"], 0, MAX_RETRIES_LIMIT) if "max_retries" in given else None
        ),
        priority=_whole(where, "priority", given["priority"], 0, MAX_PRIORITY) if "priority" in given else None,
        queue=queue,
        delay=_seconds(where, "delay", given["delay"], positive=False) if "delay" in given else None,
        run_at=parse_time(given["run_at"], "run_at", where) if "run_at" in given else None,
        timeout=_seconds(where, "timeout", given["timeout"], positive=True) if "timeout" in given else None,
        cwd=_text(where, "cwd", given["cwd"]) if "cwd" in given else None,
        env=_env(where, given["env"]) if "env" in given else None,
    )


def load_json(text: str, where: str = "") -> Any:
    """Decode one JSON document; InvalidJob with the position of the first error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(where, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def job_from_json(text: str, where: str = "", defaults: Mapping[str, Any] | None = None) -> JobSpec:
    """Validate one job given as JSON text; `defaults` fill the keys it leaves out."""
    data = load_json(text, where)
    if defaults and isinstance(data, Mapping):
        data = {**defaults, **{k: v for k, v in data.items() if v is not None}}
    return job_from_mapping(data, where)
