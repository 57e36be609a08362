"""Execution logs: the files the test apps append one line to per task event, outside the broker.

Each app writes its own layout (which fields, in which order), in one ``write()`` per line; the
reader parses complete lines only (the last one may still be being written) by the layout
whose number of fields the line has, and keeps the lines that fit none apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: The fields of a line, in the order an app writes them (names of Event's fields).
Layout = tuple[str, ...]


@dataclass(frozen=True)
class Event:
    """One line of an execution log; the fields a layout does not have keep their defaults."""

    event: str
    task_id: str
    pid: int = 0
    time: float | None = None
    tag: str = ""
    pgid: int = 0
    hostname: str = ""


_TYPES: dict[str, Callable[[str], object]] = {"pid": int, "pgid": int, "time": float}


def parse_events(path: Path, *layouts: Layout) -> tuple[list[Event], list[str]]:
    """(events, malformed lines) of the log at `path` (none when it does not exist yet)."""
    try:
        data = path.read_text()
    except FileNotFoundError:
        return [], []
    by_width = {len(layout): layout for layout in layouts}
    events: list[Event] = []
    malformed: list[str] = []
    for line in data.splitlines(keepends=True):
        if not line.endswith("\n"):
            continue  # still being written
        parts = line.split()
        layout = by_width.get(len(parts))
        try:
            if layout is None:
                raise ValueError(f"{len(parts)} fields")
            fields = {name: _TYPES.get(name, str)(value) for name, value in zip(layout, parts)}
            events.append(Event(**fields))  # type: ignore[arg-type]
        except ValueError:
            malformed.append(line)
    return events, malformed


def read_events(path: Path, *layouts: Layout, event: str | None = None, strict: bool = True) -> list[Event]:
    """The events of the log at `path` (those named `event` only, if given); a malformed line
    raises ValueError, or is passed over when not `strict`."""
    events, malformed = parse_events(path, *layouts)
    if malformed and strict:
        raise ValueError(f"malformed lines in {path}: {malformed[:5]}")
    return [e for e in events if event is None or e.event == event]


def count_lines(path: Path) -> int:
    """Complete lines in the file at `path` (0 when it does not exist), read in 1 MiB chunks."""
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0
