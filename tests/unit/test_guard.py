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
import pytest
from tests.support.guard import Backstop, Reaper, exit_backstop

reaper = None

def pytest_configure(config):
    global reaper
    reaper = Reaper()

@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    with Backstop(item.config, 4.0, item.nodeid + " still running after 4s"):
        return (yield)

def pytest_unconfigure(config):
    for line in reaper.reap():
        sys.stderr.write("reaped: " + line + "\\n")
    exit_backstop(config, 5.0, 0)
"""


def test_a_teardown_stuck_after_the_alarm_ends_its_process_with_the_stacks(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\ntimeout = 1\n")
    pytester.makepyfile(test_stuck="""
import time, pytest

@pytest.fixture
def stuck():
    yield
    while True:  # swallows the alarm's exception, as some libraries' retry loops do
        try:
            time.sleep(60)
        except BaseException:
            pass

def test_slow(stuck):
    time.sleep(3)
""")
    started = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    assert time.monotonic() - started < 30
    assert result.ret == 70
    err = result.stderr.str()
    assert "test_stuck.py::test_slow still running after 4s" in err
    assert "in stuck" in err  # the stuck frame, in the stacks


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
