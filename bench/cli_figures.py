"""CLI figures: `queuectl enqueue --file` throughput, and `status` / `list --limit 50` times on a
database of 1,000,000 jobs in mixed states (made with the same bulk path).

    python3 bench/cli_figures.py                       # 100,000 jobs, then a 1,000,000-job database
    python3 bench/cli_figures.py --jobs 20000 --big 200000 --repeat 1    # a quick look

Every figure is the wall time of the installed `queuectl` command run as a subprocess (start-up
included), the median of --repeat runs; the CPU time of the command is shown beside it, since
on a shared machine the wall time also measures the neighbours. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from queuectl_kombu import JobStore

OWNER = "bench"


def queuectl_executable() -> str:
    """The console script of this interpreter (a pyenv shim would add its own start-up)."""
    beside = Path(sys.executable).parent / "queuectl"
    found = str(beside) if beside.exists() else shutil.which("queuectl")
    if not found:
        sys.exit("the queuectl console script is not installed: pip install -e .")
    return found


def children_cpu() -> float:
    """CPU seconds used so far by finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(exe: str, db: Path, *args: str) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of one `queuectl --db DB ARGS`."""
    cpu = children_cpu()
    started = time.perf_counter()
    proc = subprocess.run([exe, "--db", str(db), *args], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"queuectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return wall, children_cpu() - cpu, proc.stdout


def write_jobs(path: Path, count: int, other_every: int = 10) -> None:
    """`count` shell jobs, one JSON object a line; every `other_every`-th in queue "other"."""
    with open(path, "w") as out:
        for i in range(count):
            job: dict[str, Any] = {"command": f"echo {i}"}
            if i % other_every == 0:
                job["queue"] = "other"
            out.write(json.dumps(job) + "\n")


def mix_states(db: Path, completed: int, dead: int, failed: int, processing: int) -> dict[str, int]:
    """Move the oldest jobs of queue celery to other states through the store's verbs."""
    store = JobStore(str(db))
    counts = {"completed": completed, "dead": dead, "failed": failed, "processing": processing}
    for state, wanted in counts.items():
        left = wanted
        while left > 0:
            claimed = store.claim(["celery"], min(left, 5000), OWNER, 86400)
            if not claimed:
                break
            left -= len(claimed)
            if state == "processing":
                continue
            for job in claimed:
                if state == "completed":
                    store.ack(job.id, OWNER, retention=86400)
                else:
                    store.fail(job.id, OWNER, "CommandFailed: command exited with code 1",
                               max_retries=0 if state == "dead" else 5, backoff_base=3600)
    result = {str(k): v for k, v in store.counts().items()}
    store.close()
    return result


def timed(exe: str, db: Path, repeat: int, *args: str) -> dict[str, float]:
    """Median wall and CPU seconds of a command over `repeat` runs."""
    runs = [run(exe, db, *args)[:2] for _ in range(repeat)]
    return {"wall": statistics.median(r[0] for r in runs), "cpu": statistics.median(r[1] for r in runs)}


def main() -> None:
    """Measure, print a summary on stderr and the figures as JSON on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs of the enqueue --file figure")
    parser.add_argument("--big", type=int, default=1_000_000, help="jobs of the database for status/list")
    parser.add_argument("--batch-size", type=int, default=5000, help="enqueue --batch-size of the figure")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each status/list command")
    parser.add_argument("--dir", help="where the files go (default: a temporary directory, deleted)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--output", help="also write the JSON figures to this file")
    options = parser.parse_args()

    logging.getLogger("queuectl_kombu").setLevel(logging.ERROR)  # one warning per dead job otherwise
    exe = queuectl_executable()
    work = Path(options.dir or tempfile.mkdtemp(prefix="queuectl-cli-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"load_average_before": os.getloadavg(), "cpus": os.cpu_count()}
    try:
        startup = timed(exe, work / "none.db", options.repeat, "--help")
        figures["startup_help"] = startup

        small_file = work / "jobs.jsonl"
        write_jobs(small_file, options.jobs)
        wall, cpu, _ = run(exe, work / "small.db", "enqueue", "--file", str(small_file),
                           "--batch-size", str(options.batch_size))
        figures["enqueue_file"] = {
            "jobs": options.jobs, "batch_size": options.batch_size, "wall": wall, "cpu": cpu,
            "jobs_per_s": options.jobs / wall, "jobs_per_cpu_s": options.jobs / cpu,
        }
        print(f"enqueue --file {options.jobs:,} jobs: {wall:.1f}s wall ({options.jobs / wall:,.0f} jobs/s), "
              f"{cpu:.1f}s CPU ({options.jobs / cpu:,.0f} jobs/CPU-s)", file=sys.stderr)

        big_file = work / "big.jsonl"
        big_db = work / "big.db"
        write_jobs(big_file, options.big)
        wall, cpu, _ = run(exe, big_db, "enqueue", "--file", str(big_file), "--batch-size", "10000")
        figures["build_big"] = {"jobs": options.big, "wall": wall, "cpu": cpu, "jobs_per_s": options.big / wall}
        print(f"built {options.big:,} jobs in {wall:.1f}s ({options.big / wall:,.0f} jobs/s)", file=sys.stderr)
        scale = options.big / 1_000_000
        states = mix_states(big_db, completed=int(100_000 * scale), dead=int(20_000 * scale),
                            failed=int(20_000 * scale), processing=int(5_000 * scale))
        figures["big_states"] = states
        figures["big_db_bytes"] = big_db.stat().st_size
        print(f"states: {states}; file {big_db.stat().st_size / 1e9:.2f} GB", file=sys.stderr)

        commands = {
            "status": ("status",),
            "status --no-workers": ("status", "--no-workers"),
            "list --limit 50": ("list", "--limit", "50"),
            "list --state pending --limit 50": ("list", "--state", "pending", "--limit", "50"),
            "list --state dead --limit 50 --format json":
                ("list", "--state", "dead", "--limit", "50", "--format", "json"),
            "show <one id>": ("show", "1"),
        }
        figures["on_big"] = {}
        for name, args in commands.items():
            figures["on_big"][name] = result = timed(exe, big_db, options.repeat, *args)
            print(f"{name:45s} {result['wall']:.2f}s wall, {result['cpu']:.2f}s CPU", file=sys.stderr)
        print(f"{'queuectl --help (start-up alone)':45s} {startup['wall']:.2f}s wall, {startup['cpu']:.2f}s CPU",
              file=sys.stderr)
        figures["load_average_after"] = os.getloadavg()
    finally:
        if not options.keep and not options.dir:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(figures, indent=2)
    print(text)
    if options.output:
        Path(options.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
