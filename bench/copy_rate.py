"""How fast `queuectl copy` moves a queue: N pending jobs from a SQLite file into a new SQLite
file and into a new PostgreSQL database, then the same copy again (every job skipped).

    python3 bench/copy_rate.py [--n 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from queuectl_kombu import JobStore, NewJob, copy_queue  # noqa: E402

ADMIN = os.environ.get("QUEUECTL_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def main() -> None:
    import psycopg

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    n = parser.parse_args().n
    tmp = tempfile.mkdtemp(prefix="bench-copy-")
    source = os.path.join(tmp, "source.db")
    store = JobStore(source)
    store.publish_many([NewJob(queue="celery", payload='{"x": %d}' % i, task_id=f"t{i}") for i in range(n)])
    store.close()
    name = f"bench_copy_{os.getpid()}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        for dest in (os.path.join(tmp, "dest.db"), ADMIN.rsplit("/", 1)[0] + "/" + name):
            for what in ("copy", "again (all skipped)"):
                t0 = time.perf_counter()
                copy_queue(source, dest)
                seconds = time.perf_counter() - t0
                print(f"{n} jobs to {'PostgreSQL' if '://' in dest else 'SQLite'}, {what}: {seconds:.2f} s "
                      f"({n / seconds:,.0f} jobs/s)")
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
