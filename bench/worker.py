"""A benchmark worker: one `celery worker` subprocess in its own session, stopped by PID and group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

import psutil

from .celeryapp import QUEUE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#: Set by run.py's SIGINT/SIGTERM handler: a KeyboardInterrupt raised inside a __del__ is lost, this is not.
interrupted = threading.Event()


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll `condition` until it holds; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if interrupted.is_set():
            raise KeyboardInterrupt
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Worker:
    """`celery -A bench.celeryapp worker -P POOL -c N` on one peer's broker."""

    def __init__(self, peer: str, broker: str, backend: str | None, workdir: str, record: str,
                 acks_late: bool = False, concurrency: int = 4, pool: str = "prefork") -> None:
        self.name = f"bench-{peer}-{uuid.uuid4().hex[:8]}@%h"
        self.ready_file = os.path.join(workdir, f"ready-{uuid.uuid4().hex[:8]}")
        self.log_path = os.path.join(workdir, "worker.log")
        env = dict(os.environ, BENCH_BROKER=broker, BENCH_BACKEND=backend or "", BENCH_RECORD=record,
                   BENCH_READY=self.ready_file, BENCH_ACKS_LATE="1" if acks_late else "0",
                   PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "celery", "-A", "bench.celeryapp", "worker", "-P", pool,
               "-c", str(concurrency), "-Q", QUEUE, "-n", self.name, "--without-mingle",
               "--without-gossip", "--without-heartbeat", "-l", "WARNING"]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the worker_ready signal fired (the consumer is running)."""
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.log_tail()}")
            return os.path.exists(self.ready_file)
        wait_for(ready, timeout, "the worker to be ready")

    def processes(self) -> list[psutil.Process]:
        """The main process and its children (the prefork pool; none with threads)."""
        main = psutil.Process(self.proc.pid)
        return [main, *main.children(recursive=True)]

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the main process (warm shutdown), then SIGKILL to its group after `timeout`."""
        if self._log.closed:
            return
        pgid = self.proc.pid  # start_new_session: the group of the worker is its pid
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"    note: worker {self.proc.pid} ignored SIGTERM for {timeout:g}s; SIGKILL",
                      flush=True)
        try:
            os.killpg(pgid, signal.SIGKILL)  # the group: the main process and any pool child left
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._log.close()
