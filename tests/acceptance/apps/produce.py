"""A producer process: ``python produce.py APP COUNT PREFIX [--sleepy SECONDS] [--countdown S]``.

Publishes COUNT tasks with tags PREFIX-0 .. PREFIX-(COUNT-1) through the app's ``.delay`` /
``apply_async`` and prints ``published N in T s`` when done.
"""

from __future__ import annotations

import argparse
import importlib
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("app")
    parser.add_argument("count", type=int)
    parser.add_argument("prefix")
    args = parser.parse_args()
    mod = importlib.import_module(args.app)
    started = time.monotonic()
    for i in range(args.count):
        mod.record.delay(f"{args.prefix}-{i}")
    print(f"published {args.count} in {time.monotonic() - started:.2f} s", flush=True)


if __name__ == "__main__":
    main()
