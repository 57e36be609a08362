"""Fixtures and hooks of every tier: a settable clock, a database path per test, and each
test's reports kept on its item (``item.rep_setup`` / ``rep_call`` / ``rep_teardown``), so that a
fixture's teardown can tell whether the test failed and print its diagnostics."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support.clock import Clock
from .support.guard import Reaper, exit_backstop
from .support.postgres import fresh_database

#: pytester: tests/plugin runs docs/testing.md's example project in a pytest of its own;
#: celery.contrib.pytest: Celery's testing fixtures (celery_app, celery_worker), which tests/plugin
#: points at queuectl through queuectl_config, as docs/testing.md tells a project to.
pytest_plugins = ["pytester", "celery.contrib.pytest"]

#: How long a process may take to exit once its session is over (tests/support/guard.py; a test's
#: own backstop is pyproject's faulthandler_timeout).
EXIT_BACKSTOP = 120.0

#: The engines a queuectl database runs on: the parametrized fixtures below run a test on each.
ENGINES = ("sqlite", "postgresql")


@pytest.fixture
def clock() -> Clock:
    """A clock at clock.START that only the test moves."""
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    """Where this test's SQLite file goes (not created)."""
    return str(tmp_path / "queue.db")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own (dropped after): its postgresql:// URL."""
    with fresh_database() as url:
        yield url


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The engine under test: every test that asks for it (or for db_target) runs on both."""
    return str(request.param)


@pytest.fixture
def db_target(engine: str, request: pytest.FixtureRequest) -> str:
    """This test's database on the engine under test: a SQLite path (not created) or the URL of
    a PostgreSQL database of its own."""
    if engine == "sqlite":
        return str(request.getfixturevalue("db_path"))
    return str(request.getfixturevalue("pg_url"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


_reaper: Reaper | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _reaper
    if not hasattr(config, "workerinput"):  # the main pytest process, not an xdist worker
        _reaper = Reaper()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _reaper is not None:
        for line in _reaper.reap():
            sys.stderr.write(f"a process the tests started outlived them, SIGKILLed: {line}\n")
    exit_backstop(EXIT_BACKSTOP)
