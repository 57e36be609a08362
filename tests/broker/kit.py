"""Helpers of the broker tier: real SQLite files, real Celery worker / beat / events / flower
processes started in their own session, stopped by process group in teardown.

Every process imports the app ``tests/broker/apps/bapp.py`` (see its docstring for the
environment it reads). The test process itself talks to the broker through ``client_app``,
a Celery app configured the same way (``bconf.build_app``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

APPS = Path(__file__).parent / "apps"
REPO = Path(__file__).resolve().parents[2]
if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))

from bconf import build_app  # noqa: E402

HOST = socket.gethostname()
REDIS_URL = "redis://127.0.0.1:6379/13"

T = TypeVar("T")


# -- waiting ------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "",
             on_fail: Callable[[], str] | None = None) -> T:
    """Call `predicate` until it returns something truthy; fail the test after `timeout` s
    (with what `on_fail` returns in the message)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            extra = f"\n{on_fail()}" if on_fail else ""
            pytest.fail(f"timed out after {timeout:g}s waiting for {what or predicate!r} (last: {last!r}){extra}")
        time.sleep(interval)


# -- processes ----------------------------------------------------------------------------------


class Proc:
    """A subprocess started in its own session, its output in a file."""

    def __init__(self, name: str, popen: subprocess.Popen, out: Path) -> None:
        self.name = name
        self.popen = popen
        self.out = out

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        try:
            return self.out.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM to the process, SIGKILL to its group after `timeout`; reap it."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait(10)
        # Pool children left behind by a killed parent: same process group.
        self.signal_group(signal.SIGKILL)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group and reap the leader."""
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


def stop_all(procs: list[Proc], timeout: float = 15.0) -> None:
    """Stop several processes at once: SIGTERM to all, then wait for each."""
    for p in procs:
        if p.alive():
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(signal.SIGTERM)
    for p in procs:
        p.stop(timeout)


class Env:
    """One broker (a SQLite file or Redis db 13 with a namespace) and the processes using it."""

    def __init__(self, workdir: Path, broker: str = "sqlite", ns: str = "") -> None:
        self.workdir = workdir
        self.broker = broker
        self.ns = ns
        self.db = workdir / "broker.db"
        self.log = workdir / "exec.log"
        self.procs: list[Proc] = []
        self.conf: dict[str, Any] = {}
        self._apps: list[Any] = []

    @property
    def url(self) -> str:
        return REDIS_URL if self.broker == "redis" else "sqlite:///" + str(self.db)

    def environ(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join([str(APPS), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            BTEST_DB=str(self.db),
            BTEST_LOG=str(self.log),
            BTEST_NS=self.ns,
            BTEST_CONF=json.dumps(self.conf),
            PYTHONUNBUFFERED="1",
        )
        env.pop("BTEST_QUEUE", None)
        env.pop("BTEST_BEAT_EVERY", None)
        if self.broker == "redis":
            env["BTEST_BROKER"] = REDIS_URL
        else:
            env.pop("BTEST_BROKER", None)
        env.update(extra)
        return env

    def spawn(self, name: str, args: list[str], **extra_env: str) -> Proc:
        out = self.workdir / f"{name}.out"
        fh = open(out, "ab")  # noqa: SIM115 - the child keeps its own descriptor
        try:
            popen = subprocess.Popen(
                args, cwd=str(APPS), env=self.environ(**extra_env), stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            fh.close()
        proc = Proc(name, popen, out)
        self.procs.append(proc)
        return proc

    def celery(self, name: str, *args: str, **extra_env: str) -> Proc:
        return self.spawn(name, [sys.executable, "-m", "celery", "-A", "bapp", *args], **extra_env)

    def run_celery(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """A celery CLI command to its end (exit code and output returned)."""
        return subprocess.run(
            [sys.executable, "-m", "celery", "-A", "bapp", *args], cwd=str(APPS), env=self.environ(),
            capture_output=True, text=True, timeout=timeout, start_new_session=True,
        )

    def worker(self, name: str, *args: str, queue: str | None = None, events: bool = True,
               pool: tuple[str, ...] = ("-P", "prefork", "-c", "1"), **extra_env: str) -> Worker:
        hostname = f"{name}.{uuid.uuid4().hex[:6]}@{HOST}"
        argv = ["worker", *pool, "--without-mingle", "--without-gossip", "-l", "INFO", "-n", hostname]
        if events:
            argv.append("-E")
        argv += list(args)
        env = dict(extra_env)
        if queue:
            env["BTEST_QUEUE"] = queue
        proc = self.celery(name, *argv, **env)
        return Worker(proc, hostname, queue)

    def app(self, **conf: Any) -> Any:
        """A client app of this broker for the test process."""
        merged = dict(self.conf)
        merged.update(conf)
        app = build_app(self.url, ns=self.ns, conf=merged)
        self._apps.append(app)
        return app

    def runs(self, event: str | None = None) -> list[dict[str, Any]]:
        """The execution log: event, task_id, tag, hostname, pid, time."""
        rows = []
        try:
            text = self.log.read_text()
        except FileNotFoundError:
            return rows
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 6:
                continue
            row = dict(zip(("event", "task_id", "tag", "hostname", "pid", "time"), parts))
            row["pid"] = int(row["pid"])
            row["time"] = float(row["time"])
            if event is None or row["event"] == event:
                rows.append(row)
        return rows

    def close(self) -> None:
        stop_all(self.procs)
        for app in self._apps:
            with contextlib.suppress(Exception):
                app.close()

    # -- looking into the SQLite file (a separate read connection) --------------------------------

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        conn = sqlite3.connect(str(self.db), timeout=30)
        try:
            return conn.execute(statement, params).fetchall()
        finally:
            conn.close()


class Worker:
    def __init__(self, proc: Proc, hostname: str, queue: str | None) -> None:
        self.proc = proc
        self.hostname = hostname
        self.queue = queue

    def wait_ready(self, app: Any, timeout: float = 60.0) -> None:
        """Until the worker answers a ping (its remote control is up)."""

        def answered() -> bool:
            if not self.proc.alive():
                pytest.fail(f"worker {self.hostname} exited ({self.proc.popen.returncode}):\n{self.proc.output()[-3000:]}")
            replies = app.control.ping(destination=[self.hostname], timeout=1.0)
            return any(self.hostname in r for r in replies)

        wait_for(answered, timeout, interval=0.2, what=f"{self.hostname} to answer ping")

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        def seen() -> bool:
            if not self.proc.alive():
                pytest.fail(f"worker {self.hostname} exited:\n{self.proc.output()[-3000:]}")
            return text in self.proc.output()

        wait_for(seen, timeout, interval=0.1, what=f"{text!r} in the log of {self.hostname}")


# -- redis --------------------------------------------------------------------------------------


def redis_client() -> Any:
    try:
        import redis
    except ImportError:
        return None
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=5)
    try:
        client.ping()
    except Exception:
        return None
    return client


def redis_cleanup(ns: str) -> None:
    """Delete the keys of one test namespace in db 13 (never FLUSHDB: others may use it)."""
    client = redis_client()
    if client is None or not ns:
        return
    keys = list(client.scan_iter(match=f"*{ns}*", count=500))
    if keys:
        client.delete(*keys)




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
