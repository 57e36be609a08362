"""Profile a worker's main process during a drain: where its CPU goes, per task.

    python3 bench/profile.py [--peer queuectl] [--pool prefork] [--acks-late] [--n 20000]
                             [--fill JOBS] [--top 25] [--output FILE.txt]

Publishes n no-op tasks (bench/run.py's `drain`), starts the bench worker, and samples its main
process with py-spy (with --fill, queuectl's file first gets that many jobs, as the scale
workloads fill it) (``pip install -e '.[bench]'``) until the drain ends. Prints the drain rate,
the main process's CPU time per task, and the functions with the largest share of the samples,
by their own time and by their time with what they call; ``--output`` keeps py-spy's raw stacks.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository

from bench.peers import PEERS  # noqa: E402
from bench.workloads import Run, fill, publish  # noqa: E402


def shares(raw: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """(samples, own samples by function, samples with callees by function) of py-spy raw stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    count = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        count += int(n)
        own[frames[-1]] += int(n)
        for frame in set(frames):
            total[frame] += int(n)
    return count, own, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", default="queuectl", choices=sorted(PEERS))
    parser.add_argument("--pool", default="prefork", choices=("prefork", "threads"))
    parser.add_argument("--acks-late", action="store_true")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--fill", type=int, default=0, help="jobs put in queuectl's file first (scale-*)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--output", help="keep py-spy's raw stacks in this file")
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        sys.exit("py-spy is not installed: pip install -e '.[bench]'")
    peer = PEERS[args.peer]
    why = peer.unreachable()
    if why:
        sys.exit(f"{args.peer} is not reachable: {why}")

    workdir = tempfile.mkdtemp(prefix="bench-profile-")
    raw = args.output or os.path.join(workdir, "stacks.txt")
    broker, backend = peer.urls(workdir)
    run = Run(args.peer, broker, None, workdir, n=args.n, acks_late=args.acks_late, pool=args.pool)
    try:
        peer.reset(run.app)
        if args.fill:
            fill(run, args.fill)
        publish(run, args.n)
        worker = run.worker()
        main_process = psutil.Process(worker.proc.pid)
        spy = subprocess.Popen(["py-spy", "record", "-p", str(worker.proc.pid), "-r", "250", "-f", "raw",
                                "-o", raw, "-d", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu0 = sum(main_process.cpu_times()[:2])
        run.wait_tasks(args.n)
        cpu = sum(main_process.cpu_times()[:2]) - cpu0
        spy.send_signal(2)  # py-spy writes its file on SIGINT
        spy.wait(60)
        rows = run.lines()
        first, last = min(float(r[1]) for r in rows), max(float(r[2]) for r in rows)
        print(f"{args.peer} -P {args.pool} {'acks_late ' if args.acks_late else ''}drain of {args.n:,}: "
              f"{args.n / (last - first):,.0f} tasks/s; worker main process {cpu / args.n * 1e6:.0f} us CPU per task")
        with open(raw) as f:
            count, own, total = shares(f.read())
        print(f"{count:,} samples of the main process (all its threads)")
        print("own time:")
        for frame, n in own.most_common(args.top):
            print(f"  {n / count * 100:5.1f}%  {frame}")
        print("with callees (queuectl_kombu and the transport's callers):")
        shown = [(f, n) for f, n in total.most_common() if "queuectl_kombu" in f or "transport" in f]
        for frame, n in shown[:args.top]:
            print(f"  {n / count * 100:5.1f}%  {frame}")
    finally:
        run.close()
        peer.cleanup()
        if not args.output:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
