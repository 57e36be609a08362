"""PostgreSQL for the tests: a database of its own per test (or per module), dropped after.

The server is the one on 127.0.0.1:5432 (trust auth, user postgres, database test) unless
QUEUECTL_TEST_POSTGRES names another admin URL. Each database is named qt_<pid>_<n>, made from
template0 and dropped WITH (FORCE), which ends whatever sessions a killed worker left behind.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator

import pytest

ADMIN_URL = os.environ.get("QUEUECTL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
_counter = itertools.count(1)
_unreachable: str | None = None


def _admin():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)


def unreachable() -> str | None:
    """Why the test server cannot be used (None when it can); asked once per process."""
    global _unreachable
    if _unreachable is None:
        try:
            with _admin() as conn:
                conn.execute("SELECT 1")
            _unreachable = ""
        except Exception as exc:  # noqa: BLE001 - any reason is the reason to skip
            _unreachable = f"PostgreSQL at {ADMIN_URL} is not reachable: {str(exc).strip().splitlines()[0]}"
    return _unreachable or None


def database_url(name: str) -> str:
    """The URL of database `name` on the test server."""
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new empty database for the duration; its URL. Skips the test when there is no server."""
    reason = unreachable()
    if reason:
        pytest.skip(reason)
    name = f"qt_{os.getpid()}_{next(_counter)}"
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield database_url(name)
    finally:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def url_of(target: str) -> str:
    """The broker and backend URL of a test database: a postgresql:// URL as it is, a SQLite
    path as sqlite:///path."""
    return target if target.startswith("postgresql://") else "sqlite:///" + target
