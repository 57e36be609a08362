"""Fixtures of the crash tier: a Rig per test (fresh SQLite file in tmp_path, every process it
started stopped by PID / process group in teardown), and the figures of the run written to
tests/crash/.last-run.json (ignored by git) at the end of the session. (The hook that keeps each
test's reports on its item, read by ``rig`` to print diagnostics of a failed test, is in
tests/conftest.py.)"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import pytest

from .crashkit import FIGURES, Rig

LAST_RUN = Path(__file__).resolve().parent / ".last-run.json"


@pytest.fixture(scope="session", autouse=True)
def _write_figures():
    yield
    if not FIGURES:
        return
    # pytest-xdist runs test files in several processes: merge under a lock
    with open(LAST_RUN.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            previous = json.loads(LAST_RUN.read_text())
        except (OSError, ValueError):
            previous = {}
        tests = dict(previous.get("tests", {}))
        for name, figures in FIGURES.items():
            tests[name] = {**figures, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        data = {"machine": {"nproc": os.cpu_count()}, "tests": tests}
        tmp = LAST_RUN.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, LAST_RUN)


@pytest.fixture
def rig(tmp_path: Path, request: pytest.FixtureRequest):
    r = Rig(tmp_path)
    yield r
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(r.describe())
    r.close()
