"""The SQL files shipped with the package: the schema and every named query."""

from __future__ import annotations

import re
import sqlite3
from importlib import resources

from ..rules import SQL_TOKENS

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


_TOKEN = re.compile(r"\{([A-Z_]+)\}")


def read(filename: str) -> str:
    """The text of one SQL file of this package, its {TOKENS} replaced by the rules they name."""
    text = resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")
    return _TOKEN.sub(lambda m: SQL_TOKENS[m.group(1)], text)


def parse_queries(text: str) -> dict[str, str]:
    """Split a queries file into {name: statement} on its ``-- name: x`` lines."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = "\n".join(lines).strip()
    return queries


def statements(script: str) -> list[str]:
    """Split a script into complete statements (executescript would commit an open transaction)."""
    result: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        if not pending and line.lstrip().startswith("--"):
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            result.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement: {pending.strip()[:60]!r}")
    return result


SCHEMA: str = read("schema.sql")
#: The tables and indexes the schema creates, by name.
SCHEMA_OBJECTS: frozenset[str] = frozenset(
    re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", SCHEMA)
)
SCHEMA_VERSION = 3
#: Scripts that bring a file from version N - 1 to N (sql/migrate_N.sql), applied in order.
MIGRATIONS: dict[int, str] = {n: read(f"migrate_{n}.sql") for n in range(2, SCHEMA_VERSION + 1)}


def _load_queries(*filenames: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    for filename in filenames:
        for name, statement in parse_queries(read(filename)).items():
            if name in merged:
                raise ValueError(f"query {name!r} is defined in two files")
            merged[name] = statement
    return merged


#: Every named statement: jobs, queues and config (queries.sql), results (results.sql), the
#: metrics' reads and the stats kept bounded (metrics.sql), the dashboard's own reads (dashboard.sql),
#: the doctor's (doctor.sql), copying between databases (transfer.sql).
QUERIES: dict[str, str] = _load_queries("queries.sql", "results.sql", "metrics.sql", "dashboard.sql", "doctor.sql",
                                        "transfer.sql")
