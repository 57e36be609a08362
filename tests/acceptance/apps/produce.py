"""A producer process: ``python produce.py APP COUNT PREFIX [--max-backlog N]``.

Publishes COUNT tasks with tags PREFIX-0 .. PREFIX-(COUNT-1) through the app's ``.delay`` and
prints ``published N in T s`` when done. With --max-backlog it pauses while more than N messages
wait in the broker (a steady load rather than one burst; read through queuectl's store API).
"""

from __future__ import annotations

import argparse
import importlib
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("app")
    parser.add_argument("count", type=int)
    parser.add_argument("prefix")
    parser.add_argument("--max-backlog", type=int, default=0)
    args = parser.parse_args()
    mod = importlib.import_module(args.app)
    store = None
    if args.max_backlog:
        from queuectl_kombu import JobStore

        store = JobStore(os.environ["QTEST_DB"])
    started = time.monotonic()
    paused = 0.0
    for i in range(args.count):
        if store is not None and i % 250 == 0:
            t = time.monotonic()
            while store.queue_size("celery") > args.max_backlog:
                time.sleep(0.05)
            paused += time.monotonic() - t
        mod.record.delay(f"{args.prefix}-{i}")
    print(f"published {args.count} in {time.monotonic() - started:.2f} s (paused {paused:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
