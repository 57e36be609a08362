"""Runtime settings kept in the config table: names, defaults and validation."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .exceptions import InvalidConfig
from .rules import MAX_RETRIES_LIMIT


@dataclass(frozen=True)
class Setting:
    """One runtime setting: its type, default, lower bound and meaning."""

    name: str
    kind: Callable[[Any], Any]
    default: Any
    minimum: float
    maximum: float
    help: str
    exclusive_minimum: bool = False

    def parse(self, value: Any, label: str | None = None) -> Any:
        """Validate `value` (a string from the CLI or a JSON value) and return it typed; errors
        name the setting as `label` (the caller's spelling of it) or by its name."""
        name = label or self.name
        if isinstance(value, bool):
            raise InvalidConfig(f"{name} must be a number, not {value!r}")
        if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
            raise InvalidConfig(f"{name} must be a finite number, not {value!r}")
        try:
            typed = self.kind(value)
        except (TypeError, ValueError, OverflowError):
            raise InvalidConfig(f"{name} must be {_kind_name(self.kind)}, not {value!r}") from None
        if self.kind is int and isinstance(value, float) and value != typed:
            raise InvalidConfig(f"{name} must be a whole number, not {value!r}")
        if typed != typed or typed in (float("inf"), float("-inf")):
            raise InvalidConfig(f"{name} must be a finite number, not {value!r}")
        if typed < self.minimum or (self.exclusive_minimum and typed == self.minimum):
            bound = "greater than" if self.exclusive_minimum else "at least"
            raise InvalidConfig(f"{name} must be {bound} {self.minimum:g}, not {value!r}")
        if typed > self.maximum:
            raise InvalidConfig(f"{name} must be at most {self.maximum:g}, not {value!r}")
        return typed


def _kind_name(kind: Callable[[Any], Any]) -> str:
    return "a whole number" if kind is int else "a number"


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("max_retries", int, 3, 0, MAX_RETRIES_LIMIT, "retries after the first run before a job is dead"),
        Setting("backoff_base", float, 2.0, 1, 3600, "a failed job waits backoff_base ** attempts seconds"),
        Setting(
            "visibility_timeout", float, 30.0, 0, 7 * 86400, "seconds a claim's lease lasts unless renewed",
            exclusive_minimum=True,
        ),
        Setting(
            "retention", float, 86400.0, 0, 10 * 365 * 86400, "seconds completed jobs are kept (0: deleted at once)"
        ),
    )
}

DEFAULTS: dict[str, Any] = {name: s.default for name, s in SETTINGS.items()}


def normalize_key(key: str) -> str:
    """Accept max-retries as well as max_retries; raise InvalidConfig for an unknown key."""
    name = key.strip().replace("-", "_").lower()
    if name not in SETTINGS:
        known = ", ".join(sorted(n.replace("_", "-") for n in SETTINGS))
        raise InvalidConfig(f"unknown config key {key!r} (known: {known})")
    return name


def parse(key: str, value: Any) -> tuple[str, Any]:
    """Validate one setting; returns its canonical name and typed value."""
    name = normalize_key(key)
    return name, SETTINGS[name].parse(value)


def from_rows(rows: Mapping[str, str]) -> dict[str, Any]:
    """Defaults overlaid with the config table's valid values (bad rows keep the default)."""
    merged = dict(DEFAULTS)
    for key, raw in rows.items():
        if key in SETTINGS:
            try:
                merged[key] = SETTINGS[key].parse(json.loads(raw))
            except (InvalidConfig, ValueError, OverflowError, RecursionError):
                pass
    return merged
