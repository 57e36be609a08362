"""Shell completion of values (click's completion: `_QUEUECTL_COMPLETE=bash_source queuectl`).

Commands, options and choices (states, formats) complete through click itself; the functions
here add the values click cannot know: database files, config keys and the queues of the
database. A completion never writes anything and never fails: on any error it offers nothing.
"""

from __future__ import annotations

import os
import sqlite3
from urllib.request import pathname2url

import click
from click.shell_completion import CompletionItem

from queuectl_kombu import SETTINGS, is_control_queue, is_postgres_url

from ..settings import default_db_path, normalize_db


def complete_path(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """--db: the shell's own file completion."""
    return [CompletionItem(incomplete, type="file")]


def complete_config_key(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The keys of `config get|set`."""
    keys = sorted(name.replace("_", "-") for name in SETTINGS)
    return [CompletionItem(key) for key in keys if key.startswith(incomplete)]


def complete_queue(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The queues declared in the database (--db, else QUEUECTL_DB, else the per-user file).

    A comma-separated value (`worker start -Q a,b`) completes its last name. Only a SQLite file
    that exists is read, read-only; a PostgreSQL database offers nothing (no connection is
    opened for a key press).
    """
    done, comma, last = incomplete.rpartition(",")
    prefix = done + comma
    return [CompletionItem(prefix + name) for name in declared_queues(ctx) if name.startswith(last)]


def declared_queues(ctx: click.Context) -> list[str]:
    """The names of the queues table of the command line's database, or [] if it cannot be read."""
    given = ctx.find_root().params.get("db_path")
    path = normalize_db(given) if isinstance(given, str) and given else default_db_path()
    if is_postgres_url(path) or not os.path.isfile(path):
        return []
    try:
        conn = sqlite3.connect(f"file:{pathname2url(path)}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return []
    try:
        rows = conn.execute("SELECT name FROM queues ORDER BY name").fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    return [str(name) for (name,) in rows if not is_control_queue(str(name))]
