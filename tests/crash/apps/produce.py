"""A producer process of the crash and load tests.

``python produce.py --prefix P --count N [--rate R] [--fail-every K] [--max-sleep S] --log FILE``

Publishes N tasks through Celery (``apply_async``, one message per call, one transaction per
message) with task ids ``P-000000``, ``P-000001``, ...; after each publish call RETURNED it
appends ``task_id kind latency`` to FILE in one O_APPEND write(). An id in FILE is therefore
acknowledged: the broker said it was stored. A SIGKILL may land between the publish and the
write: that job exists without being acknowledged, which the tests allow.

Every --fail-every-th task is crash.fail (always fails: retried, then dead); the others are
crash.work sleeping up to --max-sleep seconds (0: crash.record, the load test's one-line task).
At the end it prints one JSON line: count, seconds, worst and mean publish latency, errors.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="messages per second (0: as fast as possible)")
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--max-sleep", type=float, default=0.0)
    parser.add_argument("--log", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import crashapp

    rng = random.Random(args.seed)
    fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    started = time.monotonic()
    worst = total = 0.0
    for i in range(args.count):
        task_id = f"{args.prefix}-{i:06d}"
        if args.fail_every and i % args.fail_every == args.fail_every - 1:
            kind, task, call_args = "fail", crashapp.fail, ()
        elif args.max_sleep > 0:
            kind, task, call_args = "work", crashapp.work, (round(rng.uniform(0, args.max_sleep), 3),)
        else:
            kind, task, call_args = "record", crashapp.record, ()
        t0 = time.perf_counter()
        task.apply_async(call_args, task_id=task_id)
        latency = time.perf_counter() - t0
        os.write(fd, f"{task_id} {kind} {latency:.6f}\n".encode())
        worst = max(worst, latency)
        total += latency
        if args.rate:
            ahead = started + (i + 1) / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    elapsed = time.monotonic() - started
    print(json.dumps({"prefix": args.prefix, "count": args.count, "seconds": round(elapsed, 3),
                      "worst_latency": round(worst, 6), "mean_latency": round(total / max(1, args.count), 6)}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
