"""A web application's request loop, reduced: each transaction saves an order and enqueues its
confirmation with enqueue_in; every third one is rolled back.

    python produce_orders.py FIRST COUNT
    python produce_orders.py hold ORDER_ID    (saves and enqueues, says "enqueued", never commits)

The queue is TAPP_DB (tapp.py): on SQLite the orders table lives in the queue's own file, on
PostgreSQL in the queue's database. Prints "committed <id>" after each commit (flushed), and
"done" at the end.
"""

from __future__ import annotations

import sqlite3
import sys
import time

from tapp import DB, confirm

from queuectl_kombu import enqueue_in


def connect():  # type: ignore[no-untyped-def]
    if "://" in DB:
        import psycopg

        conn = psycopg.connect(DB)
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id BIGINT PRIMARY KEY)")
        conn.commit()
        return conn
    conn = sqlite3.connect(DB, timeout=30)
    conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
    conn.commit()
    return conn


def hold(order_id: int) -> None:
    conn = connect()
    conn.execute("INSERT INTO orders (id) VALUES (%s)" if "://" in DB else "INSERT INTO orders (id) VALUES (?)",
                 (order_id,))
    with enqueue_in(conn):
        confirm.delay(order_id)
    print("enqueued", flush=True)
    time.sleep(3600)  # until the test kills this process


def main() -> None:
    if sys.argv[1] == "hold":
        hold(int(sys.argv[2]))
        return
    first, count = int(sys.argv[1]), int(sys.argv[2])
    conn = connect()
    for order_id in range(first, first + count):
        conn.execute("INSERT INTO orders (id) VALUES (%s)" if "://" in DB else "INSERT INTO orders (id) VALUES (?)",
                     (order_id,))
        with enqueue_in(conn):
            confirm.delay(order_id)
        if order_id % 3 == 0:
            conn.rollback()
        else:
            conn.commit()
            print(f"committed {order_id}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
