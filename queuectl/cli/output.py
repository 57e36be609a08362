"""Rendering for the CLI: tables, JSON and CSV on stdout; times and ages for people."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import click

#: What every listing can print.
FORMATS = ("table", "json", "csv")
#: Widest cell of a table (JSON and CSV are never cut).
MAX_CELL = 60


def iso_time(timestamp: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with a Z (None stays None)."""
    if timestamp is None:
        return None
    when = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def age(seconds: float | None) -> str:
    """A duration for people: 850ms, 42s, 3m 05s, 2h 10m, 4d 03h."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{max(seconds, 0) * 1000:.0f}ms"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def number(value: Any) -> str:
    """A setting's value as people write it: 3, 1.5, 86400."""
    if isinstance(value, float):
        return f"{value:.15g}"
    return str(value)


def _cell(value: Any, cut: bool) -> str:
    if value is None:
        return "" if not cut else "-"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, float):
        text = number(value)
    else:
        text = str(value)
    if cut:
        text = " ".join(text.split()) if "\n" in text or "\t" in text else text
        if len(text) > MAX_CELL:
            text = text[: MAX_CELL - 1] + "…"
    return text


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as aligned columns under upper-case headers (long cells cut)."""
    cells = [[_cell(row.get(c), True) for c in columns] for row in rows]
    headers = [c.upper().replace("_", " ") for c in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as CSV with a header line (nested values as JSON)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c), False) for c in columns])
    return buffer.getvalue().rstrip("\n")


def json_text(data: Any) -> str:
    """Data as indented JSON."""
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def emit_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str) -> None:
    """Print a listing on stdout: a table or CSV of `columns`, or every field as JSON."""
    if fmt == "json":
        click.echo(json_text(list(rows)))
    elif fmt == "csv":
        click.echo(csv_text(rows, columns))
    else:
        click.echo(table(rows, columns))


def note(message: str) -> None:
    """A message for people, on stderr."""
    click.echo(message, err=True)
