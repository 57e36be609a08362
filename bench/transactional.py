"""What a transactional enqueue costs an application: one transaction that saves a row and sends
one Celery task, timed whole, with the task sent inside the transaction (queuectl's enqueue_in)
or after the commit (what Celery's delay_on_commit does, the only way with Redis or RabbitMQ).

    python3 bench/transactional.py [--n 2000] [--rounds 3] [--output FILE]

The application's data is a SQLite file (for the SQLite and the Redis / RabbitMQ rows) or the
PostgreSQL database of the queue. Rounds alternate the variants; each figure is the median over
rounds of the per-transaction p50 and p99, and of the transactions per second. No worker runs:
the cost measured is the producer's. Redis and RabbitMQ rows are skipped when they are absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from celery import Celery  # noqa: E402

import queuectl_kombu  # noqa: E402
from queuectl_kombu import enqueue_in, install_schema  # noqa: E402

ADMIN = os.environ.get("QUEUECTL_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_database() -> tuple[str, Callable[[], None]]:
    import psycopg

    name = f"bench_tx_{os.getpid()}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    url = ADMIN.rsplit("/", 1)[0] + "/" + name

    def drop() -> None:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return url, drop


class Variant:
    """One way of saving a row and sending its task."""

    def __init__(self, name: str, broker: str, data: str, inside: bool) -> None:
        self.name, self.broker, self.data, self.inside = name, broker, data, inside
        self.app = Celery(f"bench-{uuid.uuid4().hex[:6]}", broker=broker)
        self.app.conf.broker_connection_retry_on_startup = True
        if "://" in data:
            import psycopg

            self.conn: Any = psycopg.connect(data)
            self.mark = "%s"
        else:
            self.conn = sqlite3.connect(data, timeout=30)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.mark = "?"
        self.table = f"orders_{uuid.uuid4().hex[:8]}"  # variants may share a file or a database
        self.conn.execute(f"CREATE TABLE {self.table} (id BIGINT PRIMARY KEY, note TEXT)")
        self.conn.commit()
        self.next_id = 1
        self.app.send_task("orders.confirm", (0,))  # connect, declare
        self.conn.commit()

    def one(self) -> None:
        order = self.next_id
        self.next_id += 1
        self.conn.execute(f"INSERT INTO {self.table} (id, note) VALUES ({self.mark}, {self.mark})", (order, "x" * 64))
        if self.inside:
            with enqueue_in(self.conn):
                self.app.send_task("orders.confirm", (order,))
            self.conn.commit()
        else:
            self.conn.commit()
            self.app.send_task("orders.confirm", (order,))

    def run(self, n: int) -> dict[str, float]:
        times = []
        start = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            self.one()
            times.append(time.perf_counter() - t0)
        total = time.perf_counter() - start
        times.sort()
        return {"p50_ms": times[len(times) // 2] * 1000, "p99_ms": times[int(len(times) * 0.99)] * 1000,
                "per_s": n / total}


def _reachable(url: str) -> bool:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:  # noqa: BLE001 - absent is absent
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-tx-")
    queue_file = os.path.join(tmp, "app.db")
    install_schema(queue_file)
    pg_url, drop = _pg_database()
    variants = [
        Variant("queuectl SQLite, inside (enqueue_in)", f"sqlite:///{queue_file}", queue_file, True),
        Variant("queuectl SQLite, after the commit", f"sqlite:///{queue_file}", queue_file, False),
        Variant("queuectl PostgreSQL, inside (enqueue_in)", pg_url, pg_url, True),
        Variant("queuectl PostgreSQL, after the commit", pg_url, pg_url, False),
    ]
    for name, url in (("Redis", "redis://127.0.0.1:6379/13"), ("RabbitMQ", "amqp://guest:guest@127.0.0.1:5672//")):
        if _reachable(url):
            variants.append(Variant(f"{name}, after the commit (SQLite data)", url,
                                    os.path.join(tmp, f"{name.lower()}-app.db"), False))
        else:
            print(f"skipped {name}: not reachable at {url}", file=sys.stderr)
    results: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    try:
        for round_ in range(args.rounds):
            for variant in variants if round_ % 2 == 0 else list(reversed(variants)):
                results[variant.name].append(variant.run(args.n))
    finally:
        for variant in variants:
            variant.app.close()
            variant.conn.close()
        for name, url in (("Redis", "redis://127.0.0.1:6379/13"),):
            if any(v.name.startswith(name) for v in variants):
                with Celery(broker=url).connection_for_write() as conn:
                    conn.default_channel.queue_purge("celery")
        drop()
    summary = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
               for name, runs in results.items()}
    base = summary["queuectl SQLite, after the commit"]["p50_ms"]
    print(f"{'variant':48} {'p50 ms':>8} {'p99 ms':>8} {'tx/s':>8} {'p50 / SQLite after':>20}")
    for name, s in summary.items():
        print(f"{name:48} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['per_s']:8.0f} {s['p50_ms'] / base:19.2f}x")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"n": args.n, "rounds": args.rounds, "runs": results, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    queuectl_kombu  # noqa: B018 - imported for its schemes
    main()
