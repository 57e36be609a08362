"""Round trips and a 1,000-task chord on this backend + broker against Redis broker + backend.

    python3 tests/results/measure.py [--trips 200] [--chord 1000] [--peers sqlite,redis]

For each peer: start ``celery worker -P prefork -c 4`` (tests/results/apps/rapp.py), warm up,
then time `trips` ``apply_async().get()`` round trips of a no-op task one after the other
(p50 / p99 / max) and the time from publishing a chord of `chord` no-op tasks to its body's
result. Redis: 127.0.0.1:6379 db 14, keys prefixed per run and deleted afterwards. Not a test
(no test_ prefix): pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
sys.path.insert(0, str(APPS))
sys.path.insert(0, str(HERE.parent.parent))

import rapp  # noqa: E402
from celery import chord  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/14"


def start_worker(workdir: Path, broker: str, backend: str, conf: dict[str, Any]) -> subprocess.Popen:
    ready = workdir / f"ready-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, RTEST_BROKER=broker, RTEST_BACKEND=backend, RTEST_CONF=json.dumps(conf),
               RTEST_READY=str(ready), PYTHONPATH=os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")]))
    log = open(workdir / "worker.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "rapp", "worker", "-P", "prefork", "-c", "4",
         "--without-mingle", "--without-gossip", "-l", "WARNING", "-n", f"measure-{uuid.uuid4().hex[:6]}@%h"],
        cwd=str(workdir), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_worker(proc)
            raise SystemExit(f"worker did not start; see {workdir / 'worker.log'}")
        time.sleep(0.02)
    return proc


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def percentile(sorted_values: list[float], p: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def measure(peer: str, workdir: Path, trips: int, chord_size: int) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    conf: dict[str, Any] = {"task_default_queue": f"measure-{run}", "worker_hijack_root_logger": True}
    prefix = f"measure-{run}-"
    if peer == "sqlite":
        broker = backend = f"sqlite:///{workdir / 'queue.db'}"
    else:
        broker = backend = REDIS_URL
        conf["broker_transport_options"] = {"global_keyprefix": prefix}
        conf["result_backend_transport_options"] = {"global_keyprefix": prefix}
    proc = start_worker(workdir, broker, backend, conf)
    try:
        app = rapp.make_app(broker, backend, conf)
        noop, count = app.tasks["rt.noop"], app.tasks["rt.count"]
        for _ in range(20):  # warm-up: connections, pool processes, page cache
            noop.apply_async().get(timeout=30)
        times = []
        for _ in range(trips):
            start = time.perf_counter()
            noop.apply_async().get(timeout=30)
            times.append(time.perf_counter() - start)
        times.sort()
        warm = chord([noop.si() for _ in range(10)], count.s()).apply_async()
        warm.get(timeout=60)
        start = time.perf_counter()
        result = chord([noop.si() for _ in range(chord_size)], count.s()).apply_async()
        got = result.get(timeout=600)
        chord_seconds = time.perf_counter() - start
        assert got == chord_size, got
        return {
            "peer": peer,
            "trips": trips,
            "p50_ms": percentile(times, 50) * 1000,
            "p99_ms": percentile(times, 99) * 1000,
            "max_ms": times[-1] * 1000,
            "mean_ms": statistics.fmean(times) * 1000,
            "chord_size": chord_size,
            "chord_s": chord_seconds,
        }
    finally:
        stop_worker(proc)
        if peer == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i:i + 500])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trips", type=int, default=200)
    parser.add_argument("--chord", type=int, default=1000)
    parser.add_argument("--peers", default="sqlite,redis")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="measure-") as tmp:
        for peer in args.peers.split(","):
            workdir = Path(tmp) / peer
            workdir.mkdir()
            rows.append(measure(peer, workdir, args.trips, args.chord))
            print(json.dumps(rows[-1]), flush=True)
    print()
    print(f"{'peer':8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}   chord of {args.chord}")
    for r in rows:
        print(f"{r['peer']:8} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f}   {r['chord_s']:.2f} s")


if __name__ == "__main__":
    main()
