"""Fixtures of the broker tier (helpers in kit.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .kit import Env


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A fresh SQLite broker file for one test; every process started through it is stopped."""
    e = Env(tmp_path)
    yield e
    e.close()


@pytest.fixture
def url(env: Env) -> str:
    return env.url
