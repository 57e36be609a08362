"""The package as a user gets it: the sdist and the wheel built from the repository's files, the
wheel installed into a fresh virtual environment (its dependencies from the package index, no
system site-packages, no checkout on the path), and the seed scenario run through that
environment's `queuectl` and `celery -A queuectl worker` commands.

The build starts from a copy of the working tree's files that git tracks or would track (not
the ignored ones), so that it checks the code under test, uncommitted changes included. The
tests are skipped, saying why, when the package index cannot be reached.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO
from tests.support.processes import Worker, pid_alive, run
from tests.support.waiting import WaitTimeout, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PACKAGES = ("queuectl", "queuectl_kombu")
#: Files of the packages that are not modules: each must be in both the sdist and the wheel.
DATA_FILES = ("queuectl/py.typed", "queuectl_kombu/py.typed", "queuectl_kombu/sql/schema.sql",
              "queuectl/dashboard/templates/base.html", "queuectl/dashboard/static/dashboard.css")
#: What pip prints when it may not have reached the package index (then, if pip cannot download
#: setuptools either, the tests skip instead of failing).
OFFLINE = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
           "Name or service not known", "Network is unreachable", "ConnectTimeoutError", "ReadTimeoutError",
           "ProxyError", "Could not fetch URL", "No matching distribution found")
#: Variables that would let the checkout, or another environment, into the fresh one.
LEAKS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "QUEUECTL_DB", "XDG_DATA_HOME")


@dataclass(frozen=True)
class Artifacts:
    """What the build made, and what it was made from."""

    sdist: Path
    wheel: Path
    #: The repository files the build started from (relative paths).
    sources: tuple[str, ...]


def clean_env(**values: str) -> dict[str, str]:
    """This environment without the variables that would leak the checkout in; `values` set."""
    env = {name: value for name, value in os.environ.items() if name not in LEAKS}
    env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **values)
    return env


def index_reachable() -> bool:
    """Whether pip, configured as for the tests' installs, can download setuptools (the build's
    requirement) without its cache."""
    with tempfile.TemporaryDirectory() as dest:
        proc = run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-cache-dir", "--dest", dest,
                    "setuptools>=64"], clean_env(), 180)
    return proc.returncode == 0


def checked(proc: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    """`proc` if it succeeded; a skip if it failed because the package index was unreachable."""
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        if any(marker in output for marker in OFFLINE) and not index_reachable():
            said = next(line for line in output.splitlines() if any(m in line for m in OFFLINE))
            pytest.skip(f"{what}: the package index is not reachable (pip cannot download setuptools either); "
                        f"pip said: {said.strip()[:300]}")
        raise AssertionError(f"{what} failed with {proc.returncode}:\n{output[-4000:]}")
    return proc


def source_files() -> list[str]:
    """The repository's files that git tracks or would track (untracked but not ignored), as
    they are in the working tree."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=REPO, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"the repository's file list needs git and a git checkout: {exc}")
    return sorted(name for name in listed.decode().split("\0") if name and (REPO / name).is_file())


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    """The sdist, and the wheel built from it (`python -m build`, in its isolated environment)."""
    pytest.importorskip("build", reason="python -m build is in the test extra: pip install -e '.[test]'")
    root = tmp_path_factory.mktemp("build")
    src, dist = root / "src", root / "dist"
    files = source_files()
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    checked(run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)], clean_env(), 300, cwd=root),
            "python -m build")
    sdists, wheels = sorted(dist.glob("queuectl-*.tar.gz")), sorted(dist.glob("queuectl-*-py3-none-any.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in dist.iterdir())
    return Artifacts(sdists[0], wheels[0], tuple(files))


@pytest.fixture(scope="module")
def venv(artifacts: Artifacts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment (no system site-packages) with the wheel installed: its bin/."""
    root = tmp_path_factory.mktemp("venv") / "env"
    checked(run([sys.executable, "-m", "venv", str(root)], clean_env(), 120), "python -m venv")
    bin_dir = root / "bin"
    checked(run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(artifacts.wheel)], clean_env(), 400),
            "pip install the wheel")
    checked(run([str(bin_dir / "python"), "-m", "pip", "check"], clean_env(), 120), "pip check")
    return bin_dir


def package_files(names: set[str], prefix: str = "") -> set[str]:
    """The entries of an archive under the two packages, `prefix` removed."""
    found = {name.removeprefix(prefix) for name in names if name.startswith(prefix)}
    return {name for name in found if name.split("/")[0] in PACKAGES}


def test_sdist_and_wheel_hold_every_file_of_the_packages(artifacts: Artifacts) -> None:
    expected = {name for name in artifacts.sources if name.split("/")[0] in PACKAGES}
    assert set(DATA_FILES) <= expected
    assert {n for n in expected if n.startswith("queuectl_kombu/sql/") and n.endswith(".sql")}

    with zipfile.ZipFile(artifacts.wheel) as wheel:
        names = set(wheel.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = wheel.read(info).decode()
    assert package_files(names) == expected
    assert "queuectl = queuectl.cli:main" in entry_points
    assert "sqlite = queuectl_kombu.backend:SQLiteBackend" in entry_points
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]

    with tarfile.open(artifacts.sdist) as sdist:
        members = {m.name for m in sdist.getmembers() if m.isfile()}
    prefix = artifacts.sdist.name.removesuffix(".tar.gz") + "/"
    assert package_files(members, prefix) == expected
    assert {prefix + "pyproject.toml", prefix + "README.md"} <= members


class Installed:
    """The installed commands of the fresh environment, on a database of this test's own."""

    def __init__(self, bin_dir: Path, tmp: Path) -> None:
        self.bin = bin_dir
        self.tmp = tmp
        self.db = tmp / "q.db"
        self.cwd = tmp / "cwd"  # nothing importable in it: queuectl comes from the environment
        self.cwd.mkdir()
        (tmp / "home").mkdir()
        self.env = clean_env(
            HOME=str(tmp / "home"), XDG_DATA_HOME=str(tmp / "xdg"), QUEUECTL_DB=str(self.db), PYTHONUNBUFFERED="1",
            PATH=os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
        )
        #: pids of the detached worker pools to stop at teardown
        self.pools: list[int] = []

    def run(self, *argv: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        """Run an executable of the environment (`queuectl`, `python`...) to its end; check its exit code."""
        proc = run([str(self.bin / argv[0]), *argv[1:]], self.env, 120, cwd=self.cwd)
        assert proc.returncode == code, f"{argv} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def json(self, *args: str) -> Any:
        """`queuectl ARGS --format json`, parsed."""
        return json.loads(self.run("queuectl", *args, "--format", "json").stdout)

    def states(self) -> dict[str, str]:
        """Each job's state, by id."""
        return {row["id"]: row["state"] for row in self.json("list", "--limit", "0")}

    def stop_pools(self) -> None:
        """Teardown of the detached pools still running: SIGTERM, then SIGKILL to their groups."""
        for pid in self.pools:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(WaitTimeout):
            wait_for(lambda: not any(pid_alive(pid) for pid in self.pools), 15, what="the pools' warm shutdown")
        for pid in self.pools:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def installed(venv: Path, tmp_path: Path) -> Iterator[Installed]:
    env = Installed(venv, tmp_path)
    yield env
    env.stop_pools()


def test_the_wheel_alone_runs_the_seed_scenario(installed: Installed) -> None:
    # Imported from the environment's site-packages, never from the checkout.
    where = installed.run("python", "-c", "import queuectl, queuectl_kombu; print(queuectl.__file__); "
                          "print(queuectl_kombu.__file__)").stdout.split()
    site = installed.bin.parent / "lib"
    assert all(Path(path).is_relative_to(site) for path in where), where
    assert installed.run("python", "-m", "queuectl", "--version").stdout == "queuectl, version 0.1.0\n"
    assert installed.run("queuectl", "--version").stdout == "queuectl, version 0.1.0\n"

    # Jobs that succeed, and one that fails, is retried after 1 s, and ends in the dead-letter queue.
    installed.run("queuectl", "config", "set", "backoff-base", "1")
    assert installed.run("queuectl", "enqueue", '{"id":"hello","command":"echo hello from queuectl"}').stdout == "hello\n"
    second = installed.run("queuectl", "run", "echo second").stdout.strip()
    bad = '{"id":"bad","command":"echo nope >&2; exit 3","max_retries":1}'
    assert installed.run("queuectl", "enqueue", bad).stdout == "bad\n"

    node = "wheel@localhost"
    worker = Worker("celery worker", [str(installed.bin / "celery"), "-A", "queuectl", "worker", "-c", "2",
                                      "-n", node, "-l", "INFO"],
                    hostname=node, env=installed.env, cwd=installed.cwd, out=installed.tmp / "worker.out")
    try:
        worker.wait_ready(60)
        wait_for(lambda: installed.states() == {"hello": "completed", second: "completed", "bad": "dead"}, 60,
                 what="hello and the second job to complete, bad to be dead", on_fail=worker.tail)
    finally:
        code = worker.stop(grace=30)  # a warm shutdown (the jobs are done), else SIGKILL to its group
    assert code == 0, worker.tail()

    # The banner and the log name the broker as the app wrote it: sqlite:////path (never a
    # made-up host or a masked password).
    url = f"sqlite:///{installed.db}"
    output = worker.output()
    assert re.search(r"\.> transport:\s+(\S+)", output).group(1) == url, worker.tail(60)  # type: ignore[union-attr]
    assert re.search(r"\.> results:\s+(\S+)", output).group(1) == url, worker.tail(60)  # type: ignore[union-attr]
    assert f"Connected to {url}" in output, worker.tail(60)
    assert "localhost//" not in output and ":**@" not in output, worker.tail(60)

    status = installed.json("status", "--no-workers")
    assert status["jobs"] == {"pending": 0, "processing": 0, "completed": 2, "failed": 0, "dead": 1, "total": 3}
    hello = installed.json("show", "hello")
    assert (hello["attempts"], hello["result"]["state"], hello["result"]["value"]["stdout"]) == (
        1, "SUCCESS", "hello from queuectl\n")
    dead = installed.json("show", "bad")
    assert (dead["attempts"], dead["last_error"]) == (2, "CommandFailed: command exited with code 3; stderr: nope")
    assert [row["id"] for row in installed.json("dlq", "list")] == ["bad"]

    # The same through `queuectl worker start --detach` and `queuectl worker stop`.
    started = installed.run("queuectl", "worker", "start", "--detach")
    match = re.search(r"ready \(pid (\d+)\)", started.stderr)
    assert match, started.stderr
    installed.pools.append(int(match.group(1)))
    assert installed.run("queuectl", "run", "--id", "last", "echo last").stdout == "last\n"
    wait_for(lambda: installed.states().get("last") == "completed", 60, what="job last to complete")
    installed.run("queuectl", "worker", "stop", "--timeout", "30")
    wait_for(lambda: not pid_alive(installed.pools[0]), 30, what="the detached pool to exit")
