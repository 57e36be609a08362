"""Fixtures and hooks of every tier: a settable clock, a database path per test, and each
test's reports kept on its item (``item.rep_setup`` / ``rep_call`` / ``rep_teardown``), so that a
fixture's teardown can tell whether the test failed and print its diagnostics."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support.clock import Clock


@pytest.fixture
def clock() -> Clock:
    """A clock at clock.START that only the test moves."""
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    """Where this test's SQLite file goes (not created)."""
    return str(tmp_path / "queue.db")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
