"""Run the benchmark workloads against queuectl and its peers, side by side, in one run.

    python3 bench/run.py [--quick] [--only NAME ...] [--peers queuectl,redis,rabbitmq,sqla]
                         [--n NAME=N ...] [--docs | --no-docs] [--render]

Each figure is the median of N runs (3; 1 with --quick) with its min-max. Runs go in whole passes
over the workloads, and peers alternate within a pass, so that machine noise hits all of them alike.
Each run is a child process (`--child WORKLOAD PEER N`) with a fresh temporary directory. Raw results
go to bench/results/latest.json, rewritten after every run. At the end the table and the targets are
printed, and docs/benchmarks.md (its generated parts) and docs/benchmarks.png are rewritten when the
run covered every workload and peer (or with --docs). docs/benchmarks.md tells more.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository

from bench.peers import PEERS  # noqa: E402
from bench.report import fmt, markdown_table, table, targets, targets_table, text_table, write_docs  # noqa: E402
from bench.worker import interrupted  # noqa: E402
from bench.workloads import WORKLOADS, Run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results", "latest.json")
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")
CHART = os.path.join(ROOT, "docs", "benchmarks.png")


def machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import celery
    import kombu
    info: dict[str, Any] = {
        "nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "celery": celery.__version__, "kombu": kombu.__version__, "sqlite": sqlite3.sqlite_version,
        "tmpdir": tempfile.gettempdir(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }
    for key, dist in (("billiard", "billiard"), ("amqp", "amqp"), ("redis_py", "redis"),
                      ("sqlalchemy", "SQLAlchemy"), ("matplotlib", "matplotlib")):
        try:
            info[key] = version(dist)
        except PackageNotFoundError:
            pass
    tmp = os.path.realpath(tempfile.gettempdir())
    mounts = [p for p in psutil.disk_partitions(all=True)
              if tmp == p.mountpoint or tmp.startswith(p.mountpoint.rstrip("/") + "/")]
    if mounts:
        info["tmp_fs"] = max(mounts, key=lambda p: len(p.mountpoint)).fstype
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def queuectl_digest() -> str:
    """A digest of queuectl_kombu's .py and .sql files as they are on disk now."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(os.path.join(ROOT, "queuectl_kombu"))):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith((".py", ".sql"))):
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(name.encode() + f.read())
    return digest.hexdigest()[:16]


def code_identity() -> dict[str, str]:
    """The commit and queuectl_kombu's digest (the tree may change under a long run)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = "?"
    return {"commit": head, "queuectl_kombu_sha256": queuectl_digest()}


def one_run(workload: Any, peer: Any, n: int) -> dict[str, Any]:
    """One workload on one peer, in this process (a child of the main one: see run_child)."""
    workdir = tempfile.mkdtemp(prefix=f"qbench-{peer.name}-")
    broker, backend = peer.urls(workdir)
    run = Run(peer.name, broker, backend, workdir, n=n, acks_late=workload.acks_late, pool=workload.pool)
    failed = False
    try:
        peer.reset(run.app)
        return workload.fn(run)
    except Exception as exc:
        failed = True  # keep the files for a look
        traceback.print_exc()
        for w in run.workers:
            print(f"    worker log {w.log_path} ends with:\n{w.log_tail()}", file=sys.stderr, flush=True)
        return {"error": f"{type(exc).__name__}: {exc} (files kept in {workdir})"}
    finally:
        run.close()
        if not failed:  # a failed run keeps its files and database for a look (cleanup drops the latter)
            shutil.rmtree(workdir, ignore_errors=True)
            try:
                peer.release(workdir)
            except Exception as exc:
                print(f"note: release of {peer.name}'s {workdir} failed: {exc}", file=sys.stderr, flush=True)


def run_child(workload: str, peer: str, n: int) -> dict[str, Any]:
    """one_run in a fresh process, so that the publisher loads the same queuectl code as the worker
    it starts and no state (connections, caches) carries over from one run to the next."""
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", workload, peer, str(n)],
                             stdout=subprocess.PIPE, text=True)
    try:
        out, _ = child.communicate()
    except BaseException:
        child.send_signal(signal.SIGTERM)  # its handler stops its worker
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
        raise
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": f"the run's process exited with {child.returncode} and no result"}


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run of each figure instead of three")
    parser.add_argument("--runs", type=int, help="runs of each figure (default 3, 1 with --quick)")
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS), metavar="NAME",
                        help=f"workloads to run: {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma-separated peers (default {','.join(PEERS)})")
    parser.add_argument("--n", action="append", default=[], metavar="NAME=N",
                        help="size of a workload: tasks, jobs or trips (e.g. --n bulk=20000 --n shell-drain=2000); "
                             "defaults: " + ", ".join(f"{w.name}={w.n}" for w in WORKLOADS.values() if w.n))
    parser.add_argument("--output", default=RESULTS, help="raw results (default bench/results/latest.json)")
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--docs", action="store_true", default=None,
                      help="rewrite docs/benchmarks.md and docs/benchmarks.png even after a partial selection "
                           "(by default only a run of every workload on every peer, into the default "
                           "--output, does)")
    docs.add_argument("--no-docs", dest="docs", action="store_false", help="leave the docs alone")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: print the table and targets of --output and rewrite the docs from it")
    parser.add_argument("--child", nargs=3, metavar=("WORKLOAD", "PEER", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # Stop like Ctrl-C on SIGTERM, and on SIGINT even when started in the background (where the
    # shell ignores it): the `finally` blocks then stop the running worker and clean the peers.
    def stop(signum: int, frame: Any) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if args.child:
        result = one_run(WORKLOADS[args.child[0]], PEERS[args.child[1]], int(args.child[2]))
        print(json.dumps({**result, "queuectl_kombu_sha256": queuectl_digest()}))
        return 0
    if args.render:
        with open(args.output) as f:
            doc = json.load(f)
        report(doc)
        if args.docs is not False:
            write_docs(doc, DOCS, CHART)
            print(f"rewrote {os.path.relpath(DOCS)} and {os.path.relpath(CHART)}")
        return 0
    sizes = {name: w.n for name, w in WORKLOADS.items()}
    for item in args.n:
        name, _, value = item.partition("=")
        if name not in WORKLOADS or not value.isdigit() or int(value) < 1:
            parser.error(f"--n {item}: expected NAME=N with NAME one of {', '.join(WORKLOADS)}")
        sizes[name] = int(value)
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
    doc: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "complete": False, "runs_per_figure": n,
        "output": os.path.relpath(os.path.abspath(args.output), ROOT),
        "command": " ".join(["python3", "bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "n": {w.name: sizes[w.name] for w in workloads},
        "machine": machine(), "code": {"before": code_identity()},
        "peers": {p.name: {"version": p.version(), "settings": p.settings, "broker_url": p.urls("/<tmp>")[0],
                           "result_backend": p.urls("/<tmp>")[1]} for p in peers},
        "skipped": skipped, "runs": []}
    started = time.monotonic()
    try:
        for i in range(n):  # whole passes: after an interrupted run every figure has i runs
            for workload in workloads:
                for peer in peers:
                    if not workload.applies_to(peer.name):
                        continue
                    if interrupted.is_set():
                        raise KeyboardInterrupt
                    t0 = time.monotonic()
                    psutil.cpu_percent()
                    result = run_child(workload.name, peer.name, sizes[workload.name])
                    took = time.monotonic() - t0
                    # what the whole machine was doing meanwhile: other load shows up here
                    busy = {"machine_cpu_pct": psutil.cpu_percent(), "loadavg_1m": os.getloadavg()[0]}
                    doc["runs"].append({"workload": workload.name, "peer": peer.name, "run": i + 1,
                                        "seconds": round(took, 2), **busy, **result})
                    shown = " ".join(f"{m.key}={fmt(result[m.key], m.decimals)}"
                                     for m in workload.metrics if m.key in result)
                    print(f"{workload.name:23} {peer.name:11} run {i + 1}/{n}: {result.get('error') or shown}"
                          f"  ({took:.1f}s; machine CPU {busy['machine_cpu_pct']:.0f}%,"
                          f" load {busy['loadavg_1m']:.1f})", flush=True)
                    write(args.output, doc, started)  # partial results too
    finally:
        for peer in peers:
            try:
                peer.cleanup()
            except Exception as exc:
                print(f"note: cleanup of {peer.name} failed: {exc}")
    doc["complete"] = True
    doc["code"]["after"] = code_identity()
    doc["code"]["queuectl_kombu_sha256_of_runs"] = sorted({r["queuectl_kombu_sha256"] for r in doc["runs"]
                                                          if "queuectl_kombu_sha256" in r})
    if len(doc["code"]["queuectl_kombu_sha256_of_runs"]) > 1:
        print(f"note: queuectl_kombu changed on disk during the run: {doc['code']}")
    write(args.output, doc, started)
    report(doc)
    print(f"\nraw results: {os.path.relpath(args.output)} ({doc['seconds']:.0f}s)")
    full = (not args.only and len(peers) + len(skipped) == len(PEERS)
            and os.path.abspath(args.output) == RESULTS)  # the docs point at latest.json
    if args.docs or (args.docs is None and full):
        write_docs(doc, DOCS, CHART)
        print(f"rewrote {os.path.relpath(DOCS)} and {os.path.relpath(CHART)}")
    elif args.docs is None:
        print("docs left alone (a partial selection: --docs rewrites them anyway)")
    return 1 if any("error" in r for r in doc["runs"]) else 0


def report(doc: dict[str, Any]) -> None:
    """Print the table and the targets."""
    print("\n" + text_table(table(doc)))
    print("\ntargets:\n" + targets_table(targets(doc), markdown=False))


def write(path: str, doc: dict[str, Any], started: float) -> None:
    """Summarize the runs so far into `doc` and write it to `path` atomically; returns the table."""
    summary: dict[str, Any] = {}
    for r in doc["runs"]:
        for metric in WORKLOADS[r["workload"]].metrics:
            if metric.key in r:
                summary.setdefault(r["workload"], {}).setdefault(metric.key, {}).setdefault(
                    r["peer"], []).append(r[metric.key])
    for metrics in summary.values():
        for cells in metrics.values():
            for peer, values in cells.items():
                cells[peer] = summarize(values)
    doc.update(seconds=round(time.monotonic() - started, 1), summary=summary)
    doc.update(table=markdown_table(table(doc)).splitlines(), targets=targets(doc))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    sys.exit(main())
