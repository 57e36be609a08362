"""The workloads: one function each, taking a Run and returning {metric: value, ...}.

A Run gives the peer's publisher app, its URLs, a fresh work directory and `worker()`, which starts a
worker on the peer (the caller's `finally` stops it). Add a workload by writing a function and
listing it in WORKLOADS with the metrics it reports.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .celeryapp import QUEUE, make_app
from .worker import Worker, interrupted, wait_for


@dataclass
class Run:
    peer: str
    broker: str
    backend: str | None
    workdir: str
    acks_late: bool = False
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app = make_app(self.broker, self.backend, acks_late=self.acks_late)
        self.record = os.path.join(self.workdir, "record.txt")
        self._offset = self._count = 0

    def worker(self) -> Worker:
        w = Worker(self.peer, self.broker, self.backend, self.workdir, self.record, self.acks_late)
        self.workers.append(w)
        w.wait_ready()
        return w

    def lines(self) -> list[list[str]]:
        if not os.path.exists(self.record):
            return []
        with open(self.record) as f:
            return [line.split() for line in f if line.endswith("\n")]

    def count(self) -> int:
        """Lines recorded so far; reads only what was appended since the last call (cheap)."""
        if os.path.exists(self.record):
            with open(self.record, "rb") as f:
                f.seek(self._offset)
                new = f.read()
            self._offset += len(new)
            self._count += new.count(b"\n")
        return self._count

    def wait_tasks(self, n: int, stall: float = 60.0) -> None:
        """Until `n` lines are recorded; fails when none came for `stall` seconds."""
        progress = [0, time.monotonic()]

        def done() -> bool:
            count = self.count()
            if count > progress[0]:
                progress[:] = [count, time.monotonic()]
            elif time.monotonic() - progress[1] > stall:
                try:
                    left: Any = self.queued()
                except Exception as exc:  # the queue itself may be gone
                    left = f"? ({exc})"
                raise TimeoutError(f"stalled: {count} of {n} tasks ran, none in the last {stall:g}s, "
                                   f"{left} still queued")
            return count >= n
        wait_for(done, 3600, f"{n} tasks to run", interval=0.1)

    def queued(self) -> int:
        with self.app.connection_for_write() as conn:
            return self.app.amqp.queues[QUEUE].bind(conn.default_channel).queue_declare(passive=True)[1]

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.app.close()


def drain(run: Run, n: int = 5000) -> dict[str, Any]:
    """Publish n no-op tasks, then start a worker; tasks/s from the first start to the last end."""
    t0 = time.perf_counter()
    with run.app.producer_or_acquire() as producer:
        for i in range(n):
            if interrupted.is_set():
                raise KeyboardInterrupt
            run.app.send_task("bench.noop", args=[i], producer=producer, ignore_result=True)
    publish_s = time.perf_counter() - t0
    queued = run.queued()
    worker = run.worker()
    run.wait_tasks(n)
    time.sleep(0.5)  # a duplicate delivery would show up in the record
    worker.stop()
    rows = run.lines()
    ids = [int(r[0]) for r in rows]
    first, last = min(float(r[1]) for r in rows), max(float(r[2]) for r in rows)
    return {"tasks_per_s": n / (last - first), "drain_s": last - first, "publish_per_s": n / publish_s,
            "queued_before_start": queued, "runs": len(ids), "duplicates": len(ids) - len(set(ids)),
            "missing": n - len(set(ids))}


def drain_acks_late(run: Run) -> dict[str, Any]:
    """drain with task_acks_late=True (the worker acknowledges after the task ran)."""
    return drain(run)


def latency(run: Run, n: int = 200, warmup: int = 20, spacing: float = 0.02) -> dict[str, Any]:
    """Publish-to-start delay of single tasks sent `spacing` apart to an idle worker."""
    run.worker()
    with run.app.producer_or_acquire() as producer:
        for ids in (range(-warmup, 0), range(n)):  # the warm-up wakes every pool process
            expected = run.count() + len(ids)
            next_at = time.monotonic()
            for i in ids:
                next_at += spacing
                run.app.send_task("bench.stamp", args=[i, time.time()], producer=producer,
                                  ignore_result=True)
                time.sleep(max(0.0, next_at - time.monotonic()))
            run.wait_tasks(expected)
    delays = sorted((float(r[2]) - float(r[1])) * 1000 for r in run.lines() if int(r[0]) >= 0)
    q = statistics.quantiles(delays, n=100, method="inclusive")
    return {"p50_ms": q[49], "p95_ms": q[94], "p99_ms": q[98], "max_ms": delays[-1], "samples": len(delays)}


def idle(run: Run, seconds: float = 10.0, settle: float = 2.0, interval: float = 0.25) -> dict[str, Any]:
    """CPU (% of one core) and peak RSS of an idle worker, main process plus pool."""
    worker = run.worker()
    time.sleep(settle)
    base: dict[int, float] = {}
    last: dict[int, float] = {}
    peak_rss = peak_pss = 0
    t0 = time.monotonic()
    first = True
    while True:
        rss = pss = 0
        for proc in worker.processes():
            try:
                with proc.oneshot():
                    cpu = proc.cpu_times()
                    mem = proc.memory_full_info()  # PSS: shared pages of the forked pool counted once
                    rss, pss = rss + mem.rss, pss + mem.pss
            except Exception:  # a process that just exited
                continue
            total = cpu.user + cpu.system
            base.setdefault(proc.pid, total if first else 0.0)
            last[proc.pid] = total
        first = False
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        elapsed = time.monotonic() - t0
        if elapsed >= seconds:
            break
        time.sleep(min(interval, seconds - elapsed))
    cpu_s = sum(last[pid] - base[pid] for pid in last)
    return {"cpu_pct": 100 * cpu_s / elapsed, "cpu_s": cpu_s, "rss_mb": peak_rss / 2**20, "pss_mb": peak_pss / 2**20,
            "processes": len(last)}


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    decimals: int = 0  # digits after the point in the table


@dataclass(frozen=True)
class Workload:
    name: str
    fn: Callable[[Run], dict[str, Any]]
    metrics: tuple[Metric, ...]
    acks_late: bool = False


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("drain", drain, (Metric("tasks_per_s", "drain 5k, tasks/s", True),)),
    Workload("drain-acks-late", drain_acks_late,
             (Metric("tasks_per_s", "drain 5k acks_late, tasks/s", True),), acks_late=True),
    Workload("latency", latency, (Metric("p50_ms", "latency p50, ms", False, 1),
                                  Metric("p95_ms", "latency p95, ms", False, 1),
                                  Metric("p99_ms", "latency p99, ms", False, 1))),
    Workload("idle", idle, (Metric("cpu_pct", "idle CPU, % of a core", False, 2),
                            Metric("rss_mb", "idle peak RSS total, MiB", False),
                            Metric("pss_mb", "idle peak PSS total, MiB", False))),
)}
