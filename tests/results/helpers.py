"""Helpers of the result backend tests: a settable clock, waits with deadlines, worker subprocesses, Redis.

Workers are ``celery worker -P prefork`` processes in their own session, stopped by PID (SIGTERM)
and then by process group (SIGKILL). Every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

APPS = Path(__file__).parent / "apps"
REDIS_URL = "redis://127.0.0.1:6379/14"  # db 14 only; keys are prefixed per run and deleted

if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))


class Clock:
    """A settable clock for the store: tests move time instead of sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll `condition` until it returns something true; fail the test naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Worker:
    """One ``celery -A <module> worker -P prefork`` subprocess."""

    def __init__(
        self, workdir: Path, module: str, broker: str, backend: str, conf: dict[str, Any] | None = None,
        concurrency: int = 2, env: dict[str, str] | None = None, loglevel: str = "INFO",
    ) -> None:
        self.workdir = workdir
        self.tag = uuid.uuid4().hex[:8]
        self.hostname = f"rt-{self.tag}@%h"
        self.ready_file = workdir / f"ready-{self.tag}"
        self.log_path = workdir / f"worker-{self.tag}.log"
        self.published = workdir / f"published-{self.tag}.txt"
        self.execlog = workdir / f"exec-{self.tag}.txt"
        full_env = dict(
            os.environ,
            RTEST_BROKER=broker,
            RTEST_BACKEND=backend,
            RTEST_CONF=json.dumps(conf or {}),
            RTEST_READY=str(self.ready_file),
            RTEST_PUBLISHED=str(self.published),
            RTEST_EXECLOG=str(self.execlog),
            PYTHONPATH=os.pathsep.join(filter(None, [str(APPS), os.environ.get("PYTHONPATH")])),
        )
        full_env.update(env or {})
        cmd = [
            sys.executable, "-m", "celery", "-A", module, "worker", "-P", "prefork", "-c", str(concurrency),
            "--without-mingle", "--without-gossip", "-l", loglevel, "-n", self.hostname,
        ]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, cwd=str(workdir), env=full_env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> Worker:
        """Until the worker_ready signal has fired."""
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            return self.ready_file.exists()
        wait_until(ready, timeout, "the worker to be ready", interval=0.02)
        return self

    def log(self) -> str:
        """Everything the worker wrote so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "".join(self.log().splitlines(keepends=True)[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the main process (warm shutdown), then SIGKILL to its process group."""
        if self._log.closed:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # start_new_session: the group id is the pid
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def redis_client() -> Any:
    """A client of db 14, or None (with the reason) when Redis cannot be reached."""
    try:
        import redis
    except ImportError:
        return None
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except Exception:
        return None
    return client


def delete_redis_prefix(client: Any, prefix: str) -> int:
    """Delete the keys of one test run (never FLUSHDB / FLUSHALL)."""
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i:i + 500])
    return len(keys)
