"""The suite's own backstops (tests/support/guard.py), in a pytest run of their own: a test stuck
where pytest-timeout's alarm cannot end it, and a process a test left running, end the run
instead of stalling it."""

from __future__ import annotations

import time

import pytest

from tests.support.paths import REPO
from tests.support.processes import pid_alive
from tests.support.waiting import wait_for

CONFTEST = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from tests.support.guard import Reaper, exit_backstop

reaper = None

def pytest_configure(config):
    global reaper
    reaper = Reaper()

def pytest_unconfigure(config):
    for line in reaper.reap():
        sys.stderr.write("reaped: " + line + "\\n")
    exit_backstop(5.0)
"""


def test_the_suite_s_own_settings_end_a_stuck_test_and_then_the_run(pytestconfig: pytest.Config) -> None:
    assert float(pytestconfig.getini("faulthandler_timeout")) > float(pytestconfig.getini("timeout")) > 0
    assert pytestconfig.getini("faulthandler_exit_on_timeout") is True
    # a worker ended so is not replaced: with --dist loadfile the run would wait for good
    assert "--max-worker-restart 0" in " ".join(pytestconfig.getini("addopts"))


def test_a_thread_stuck_in_c_with_the_gil_ends_its_process_with_the_stacks(pytester: pytest.Pytester) -> None:
    """What pytest-timeout's alarm cannot end (its handler needs the GIL): the process ends at
    faulthandler_timeout all the same, the stuck test's frame in the stacks it prints."""
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\ntimeout = 1\nfaulthandler_timeout = 3\nfaulthandler_exit_on_timeout = true\n")
    pytester.makepyfile(test_stuck="""
import ctypes

def test_deadlocks_holding_the_gil():
    # a PyDLL call keeps the GIL; a default mutex locked twice by its owner waits for good, and
    # no signal ends the wait: no Python code of any thread runs again, as in the CPython bug
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)
""")
    started = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=100)
    assert time.monotonic() - started < 60
    assert result.ret == 1
    err = result.stderr.str()
    assert "Timeout (0:00:03)!" in err
    assert "in test_deadlocks_holding_the_gil" in err


def test_a_process_a_test_left_running_is_killed_when_the_run_ends(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pidfile = pytester.path / "orphan.pid"
    pytester.makepyfile(test_orphan=f"""
import subprocess, sys, time

def test_leaves_a_grandchild():
    # a child that starts a grandchild in a session of its own and exits: the grandchild is orphaned
    subprocess.run([sys.executable, "-c",
        "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
        " start_new_session=True); open({str(pidfile)!r}, 'w').write(str(p.pid))"], check=True)
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    assert result.ret == 0
    orphan = int(pidfile.read_text())
    assert f"reaped: pid {orphan}: " in result.stderr.str()
    wait_for(lambda: not pid_alive(orphan), 10, what=f"the orphan {orphan} to be gone")
