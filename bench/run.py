"""Run the benchmark workloads against queuectl and its peers, side by side, in one run.

    python3 bench/run.py [--quick] [--only NAME ...] [--peers queuectl,redis,rabbitmq,sqla]

Each figure is the median of N runs (3; 1 with --quick) with its min-max. Peers alternate run by
run so that machine noise hits all of them alike. Raw results go to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.peers import PEERS  # noqa: E402
from bench.workloads import WORKLOADS, Run  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latest.json")


def machine() -> dict[str, Any]:
    import celery
    import kombu
    info: dict[str, Any] = {
        "nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "celery": celery.__version__, "kombu": kombu.__version__, "sqlite": sqlite3.sqlite_version,
        "tmpdir": tempfile.gettempdir(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def one_run(workload: Any, peer: Any) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix=f"qbench-{peer.name}-")
    broker, backend = peer.urls(workdir)
    run = Run(peer.name, broker, backend, workdir, quick=False, acks_late=workload.acks_late)
    try:
        peer.reset(run.app)
        return workload.fn(run)
    except Exception as exc:
        tails = "".join(f"\n      worker log: {w.log_tail()}" for w in run.workers)
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}{tails}"}
    finally:
        run.close()
        shutil.rmtree(workdir, ignore_errors=True)


def summarize(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def table(summary: dict[str, Any], peers: list[str], n: int) -> str:
    rows = [["metric (median of %d, min-max)" % n, *peers]
            + [f"queuectl/{p}" for p in peers if p != "queuectl" and "queuectl" in peers]]
    for name, workload in WORKLOADS.items():
        for metric in workload.metrics:
            cells = summary.get(name, {}).get(metric.key)
            if cells is None:
                continue
            better = "higher" if metric.higher_is_better else "lower"
            row = [f"{metric.label} ({better} is better)"]
            for p in peers:
                s = cells.get(p)
                row.append("-" if s is None else f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(s['max'])})")
            q = cells.get("queuectl")
            for p in peers:
                if p == "queuectl" or "queuectl" not in peers:
                    continue
                s = cells.get(p)
                row.append("-" if not q or not s or not s["median"] else f"{q['median'] / s['median']:.2f}x")
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run of each figure instead of three")
    parser.add_argument("--runs", type=int, help="runs of each figure (default 3, 1 with --quick)")
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS), metavar="NAME",
                        help=f"workloads to run: {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma-separated peers (default {','.join(PEERS)})")
    parser.add_argument("--output", default=RESULTS, help="raw results (default bench/results/latest.json)")
    args = parser.parse_args(argv)
    n = args.runs or (1 if args.quick else 3)
    unknown = [p for p in args.peers.split(",") if p not in PEERS]
    if unknown:
        parser.error(f"unknown peers {unknown}; known: {', '.join(PEERS)}")
    skipped: dict[str, str] = {}
    peers = []
    for name in args.peers.split(","):
        reason = PEERS[name].unreachable()
        if reason:
            skipped[name] = reason
            print(f"note: skipping {name}: {reason}", flush=True)
        else:
            peers.append(PEERS[name])
    workloads = [WORKLOADS[w] for w in (args.only or WORKLOADS)]
    started = time.time()
    runs: list[dict[str, Any]] = []
    try:
        for workload in workloads:
            for i in range(n):
                for peer in peers:
                    t0 = time.monotonic()
                    result = one_run(workload, peer)
                    took = time.monotonic() - t0
                    runs.append({"workload": workload.name, "peer": peer.name, "run": i + 1,
                                 "seconds": round(took, 2), **result})
                    shown = {m.key: fmt(result[m.key]) for m in workload.metrics if m.key in result}
                    print(f"{workload.name:16} {peer.name:9} run {i + 1}/{n}: "
                          f"{result.get('error') or shown} ({took:.1f}s)", flush=True)
    finally:
        for peer in peers:
            try:
                peer.cleanup()
            except Exception as exc:
                print(f"note: cleanup of {peer.name} failed: {exc}")
    summary: dict[str, Any] = {}
    for workload in workloads:
        for metric in workload.metrics:
            for peer in peers:
                values = [r[metric.key] for r in runs
                          if r["workload"] == workload.name and r["peer"] == peer.name and metric.key in r]
                s = summarize(values)
                if s:
                    summary.setdefault(workload.name, {}).setdefault(metric.key, {})[peer.name] = s
    names = [p.name for p in peers]
    text = table(summary, names, n)
    print("\n" + text)
    doc = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
           "seconds": round(time.time() - started, 1), "runs_per_figure": n, "machine": machine(),
           "peers": {p.name: {"settings": p.settings, "broker_url": p.urls("<tmp>")[0],
                              "result_backend": p.urls("<tmp>")[1]} for p in peers},
           "skipped": skipped, "summary": summary, "table": text.splitlines(), "runs": runs}
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, args.output)
    print(f"\nraw results: {os.path.relpath(args.output)} ({doc['seconds']:.0f}s)")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
