"""Live workers through Celery's remote control: who runs, what they run, and when they are gone."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from ..workers import answering


@dataclass(frozen=True)
class WorkerInfo:
    """One live worker as its stats and active replies describe it."""

    name: str
    pid: int | None
    concurrency: int | None
    active: list[str] = field(default_factory=list)

    @property
    def hostname(self) -> str:
        """The host part of the node name (name@host)."""
        return self.name.partition("@")[2] or self.name

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form for `status --format json`."""
        return {
            "name": self.name, "hostname": self.hostname, "pid": self.pid,
            "concurrency": self.concurrency, "active": len(self.active), "active_jobs": self.active,
        }


def live_workers(app: Celery, timeout: float) -> list[WorkerInfo]:
    """Every worker that answers within `timeout`, with its pid, concurrency and active job ids."""
    stats = app.control.inspect(timeout=timeout).stats() or {}
    if not stats:
        return []
    # The second question stops as soon as every worker that answered the first one has replied.
    active = app.control.inspect(timeout=timeout, limit=len(stats)).active() or {}
    workers = []
    for name, info in sorted(stats.items()):
        pool = info.get("pool") or {}
        concurrency = pool.get("max-concurrency")
        tasks = active.get(name) or []
        workers.append(
            WorkerInfo(
                name=name,
                pid=info.get("pid"),
                concurrency=concurrency if isinstance(concurrency, int) else None,
                active=[str(t.get("id")) for t in tasks if isinstance(t, dict)],
            )
        )
    return workers


def worker_queues(app: Celery, timeout: float, count: int) -> dict[str, list[str]]:
    """The queues each worker consumes, by worker name (stops once `count` workers replied)."""
    replies = app.control.inspect(timeout=timeout, limit=count).active_queues() or {}
    return {name: sorted(str(q.get("name")) for q in queues if isinstance(q, dict))
            for name, queues in replies.items() if isinstance(queues, list)}


def pid_running(pid: int) -> bool:
    """Whether a process runs (a zombie that nobody reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def local_pids(workers: list[WorkerInfo]) -> dict[str, int]:
    """Pids of the workers on this host (the only ones whose processes can be watched)."""
    host = socket.gethostname()
    return {w.name: w.pid for w in workers if w.pid is not None and w.hostname == host}


def wait_until_gone(app: Celery, workers: list[WorkerInfo], timeout: float, poll: float = 0.5) -> list[str]:
    """Wait until no worker answers a ping and the local ones' processes have exited.

    Returns the names still alive at the deadline (empty when all are gone).
    """
    deadline = time.monotonic() + timeout
    pids = local_pids(workers)
    while True:
        started = time.monotonic()
        alive = {name for name, pid in pids.items() if pid_running(pid)}
        alive |= answering(app, max(0.1, min(poll, deadline - started)))
        if not alive:
            return []
        now = time.monotonic()
        if now >= deadline:
            return sorted(alive)
        pause = min(poll - (now - started), deadline - now)
        if pause > 0:  # a ping answered at once: don't flood the workers with pings
            time.sleep(pause)
