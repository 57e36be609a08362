"""Helpers of the broker tier: real SQLite files, real Celery worker / beat / events / flower
processes started in their own session (tests.support.processes), stopped by process group in
teardown.

Every process imports the app ``tests/broker/apps/bapp.py`` (see its docstring for the
environment it reads). The test process itself talks to the broker through ``client_app``,
a Celery app configured the same way (``bconf.build_app``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from queuectl_kombu import JobStore
from tests.support.events import Event, Layout, read_events
from tests.support.paths import REPO
from tests.support.peers import delete_keys, redis_client
from tests.support.processes import Proc, Worker, celery_argv, child_env, run, stop_all
from tests.support.spool import move_spool_in

APPS = Path(__file__).parent / "apps"
if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))

from bconf import build_app  # noqa: E402

HOST = socket.gethostname()
REDIS_URL = "redis://127.0.0.1:6379/13"
#: A line of the execution log (``bconf.log_event``).
LAYOUT: Layout = ("event", "task_id", "tag", "hostname", "pid", "time")


class Env:
    """One broker (a SQLite file, a PostgreSQL database, or Redis db 13 with a namespace) and the
    processes using it."""

    def __init__(self, workdir: Path, broker: str = "sqlite", ns: str = "", pg_url: str = "") -> None:
        self.workdir = workdir
        self.broker = broker
        self.pg_url = pg_url
        self.ns = ns
        self.db = workdir / "broker.db"
        self.log = workdir / "exec.log"
        self.procs: list[Proc] = []
        self.conf: dict[str, Any] = {}
        self._apps: list[Any] = []

    @property
    def url(self) -> str:
        if self.broker == "postgresql":
            return self.pg_url
        return REDIS_URL if self.broker == "redis" else "sqlite:///" + str(self.db)

    def environ(self, **extra: str) -> dict[str, str]:
        env = child_env(APPS, REPO, unset=["BTEST_QUEUE", "BTEST_BEAT_EVERY", "BTEST_BROKER"],
                        BTEST_DB=str(self.db), BTEST_LOG=str(self.log), BTEST_NS=self.ns,
                        BTEST_CONF=json.dumps(self.conf), PYTHONUNBUFFERED="1")
        if self.broker != "sqlite":
            env["BTEST_BROKER"] = self.url
        env.update(extra)
        return env

    def _start(self, cls: type[Proc], name: str, args: list[str], extra_env: dict[str, str], **options: Any) -> Any:
        proc = cls(name, args, env=self.environ(**extra_env), cwd=APPS, out=self.workdir / f"{name}.out", **options)
        self.procs.append(proc)
        return proc

    def spawn(self, name: str, args: list[str], **extra_env: str) -> Proc:
        """A process in the apps folder, with `extra_env` in its environment; output in <name>.out."""
        return self._start(Proc, name, args, extra_env)

    def celery(self, name: str, *args: str, **extra_env: str) -> Proc:
        return self.spawn(name, celery_argv("bapp", *args), **extra_env)

    def run_celery(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """A celery CLI command to its end (exit code and output returned)."""
        return run(celery_argv("bapp", *args), self.environ(), timeout, cwd=APPS)

    def worker(self, name: str, *args: str, queue: str | None = None, events: bool = True,
               pool: tuple[str, ...] = ("-P", "prefork", "-c", "1"), **extra_env: str) -> Worker:
        """A worker of bapp (with -E unless not `events`), also consuming `queue` when given;
        wait_answering() waits until it is up."""
        hostname = f"{name}.{uuid.uuid4().hex[:6]}@{HOST}"
        argv = celery_argv("bapp", "worker", *pool, "--without-mingle", "--without-gossip", "-l", "INFO",
                           "-n", hostname)
        if events:
            argv.append("-E")
        argv += list(args)
        env = dict(extra_env)
        if queue:
            env["BTEST_QUEUE"] = queue
        return self._start(Worker, name, argv, env, hostname=hostname, ready_timeout=60.0, ready_interval=0.2)

    def app(self, **conf: Any) -> Any:
        """A client app of this broker for the test process."""
        merged = dict(self.conf)
        merged.update(conf)
        app = build_app(self.url, ns=self.ns, conf=merged)
        self._apps.append(app)
        return app

    def runs(self, event: str | None = None) -> list[Event]:
        """The execution log (event, task_id, tag, hostname, pid, time), lines of other shapes left out."""
        return read_events(self.log, LAYOUT, event=event, strict=False)

    def close(self) -> None:
        stop_all(self.procs)
        for app in self._apps:
            with contextlib.suppress(Exception):
                app.close()

    # -- looking into the database (a separate read connection) -----------------------------------

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        """Rows of one statement in SQLite's dialect (PostgreSQL's engine translates it)."""
        if self.broker == "postgresql":
            store = JobStore(self.pg_url)
            try:
                return [tuple(row) for row in store.db.connection().execute(statement, params).fetchall()]
            finally:
                store.close()
        move_spool_in(self.db)  # what the store's own reads do
        conn = sqlite3.connect(str(self.db), timeout=30)
        try:
            return conn.execute(statement, params).fetchall()
        finally:
            conn.close()


def wait_answering(worker: Worker, app: Any, timeout: float = 60.0) -> None:
    """Until `worker` answers a ping from `app` (its remote control is up)."""
    def answered() -> bool:
        replies = app.control.ping(destination=[worker.hostname], timeout=1.0)
        return any(worker.hostname in r for r in replies)

    worker.wait_ready(timeout, ready=answered)


def redis_cleanup(ns: str) -> None:
    """Delete the keys of one test namespace in db 13 (never FLUSHDB: others may use it)."""
    client = redis_client(REDIS_URL, socket_timeout=5)
    if client is None or not ns:
        return
    delete_keys(client, f"*{ns}*")
