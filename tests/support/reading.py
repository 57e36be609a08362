"""Reading a SQLite file as a test checks it: read-only, so that looking never changes it."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def rows(path: Path | str, statement: str) -> list[tuple[object, ...]]:
    """The rows `statement` returns from the file at `path`, opened read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(statement)]
    finally:
        conn.close()
