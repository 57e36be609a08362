"""Fixtures of the broker tier (helpers in kit.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .kit import Env


@pytest.fixture
def env(tmp_path: Path, engine: str, request: pytest.FixtureRequest) -> Iterator[Env]:
    """A fresh broker for one test, a SQLite file and then a PostgreSQL database of its own;
    every process started through it is stopped."""
    pg_url = str(request.getfixturevalue("pg_url")) if engine == "postgresql" else ""
    e = Env(tmp_path, broker=engine, pg_url=pg_url)
    yield e
    e.close()


@pytest.fixture
def url(env: Env) -> str:
    return env.url
