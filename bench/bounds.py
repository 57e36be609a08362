"""What bounds the targets bench/run.py misses: the costs that no change of the transport removes.

    python3 bench/bounds.py [--rounds 3] [--n 3000] [--bulk 100000] [--output FILE.json]

The figures are printed and written to bench/results/bounds.json (or --output).

enqueue
    Microseconds per ``app.send_task`` of the no-op task through one producer (bench/run.py's
    `enqueue`), on kombu's in-memory transport (``memory://``: Celery's and kombu's own work with
    no broker at all), on queuectl, Redis and RabbitMQ; rounds alternate between them. Then the
    storage layer alone: ``JobStore.publish`` of the same stored message (one write transaction,
    nothing of Celery or kombu), and an empty write transaction.
bulk
    ``queuectl enqueue --file`` of N jobs taken apart: the CLI's start-up (``queuectl --help``),
    reading and checking the lines (``iter_jobs``), building their messages
    (``BulkPublisher.jobs``), and the storage layer's insert of the built messages in one
    transaction (``JobStore.publish_stream``) with no other work; then the whole command.

Every figure is the median of the rounds. Peers that cannot be reached are left out with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository

from bench.celeryapp import QUEUE, make_app  # noqa: E402
from bench.peers import PEERS  # noqa: E402
from bench.workloads import queuectl_executable  # noqa: E402


def send_us(url: str, n: int, reset: Any = None) -> float:
    """Microseconds per send_task of n no-op tasks through one producer (after 100 untimed)."""
    app = make_app(url)
    try:
        if reset is not None:
            reset(app)
        with app.producer_or_acquire() as producer:
            for i in range(100):
                app.send_task("bench.noop", args=[i], producer=producer, ignore_result=True)
            t0 = time.perf_counter()
            for i in range(n):
                app.send_task("bench.noop", args=[i], producer=producer, ignore_result=True)
            took = time.perf_counter() - t0
        if reset is not None:
            reset(app)
        return took / n * 1e6
    finally:
        app.close()


def storage_us(workdir: str, n: int) -> dict[str, float]:
    """JobStore.publish of a real stored bench.noop message, and an empty write transaction."""
    from queuectl_kombu import JobStore, NewJob

    path = os.path.join(workdir, "storage.db")
    app = make_app("sqlite:///" + path)
    app.send_task("bench.noop", args=[0], ignore_result=True)
    app.close()
    store = JobStore(path)
    [job] = store.take([QUEUE], 1)
    message = NewJob(QUEUE, job.payload, task_id=job.task_id, task_name="bench.noop")
    for _ in range(100):
        store.publish(message)
    t0 = time.perf_counter()
    for _ in range(n):
        store.publish(message)
    publish = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for _ in range(n):
        with store.db.write():
            pass
    empty = (time.perf_counter() - t0) / n * 1e6
    store.close()
    return {"publish_us": publish, "empty_write_us": empty, "payload_bytes": len(job.payload.encode())}


def enqueue_bounds(rounds: int, n: int) -> dict[str, Any]:
    peers: dict[str, tuple[Any, Any]] = {"memory": ("memory://", None)}
    skipped = {}
    for name in ("queuectl", "redis", "rabbitmq"):
        why = PEERS[name].unreachable()
        if why:
            skipped[name] = why
        elif name != "queuectl":
            peers[name] = (PEERS[name].urls("")[0], PEERS[name].reset)
        else:
            peers[name] = (None, None)
    samples: dict[str, list[float]] = {name: [] for name in peers}
    storage: list[dict[str, float]] = []
    for _ in range(rounds):
        workdir = tempfile.mkdtemp(prefix="bench-bounds-")
        try:
            for name, (url, reset) in peers.items():
                url = url or PEERS["queuectl"].urls(workdir)[0]
                samples[name].append(send_us(url, n, reset))
            storage.append(storage_us(workdir, n))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    for name in peers:
        if name not in ("memory", "queuectl"):
            PEERS[name].cleanup()
    send = {name: statistics.median(v) for name, v in samples.items()}
    return {
        "send_us": send,
        "per_s": {name: 1e6 / us for name, us in send.items()},
        "storage": {key: statistics.median(s[key] for s in storage) for key in storage[0]},
        "skipped": skipped,
    }


def bulk_bounds(rounds: int, n: int) -> dict[str, Any]:
    from queuectl.app import make_app as queuectl_app
    from queuectl.cli import bulk

    from queuectl_kombu import JobStore

    exe = queuectl_executable()
    parts: dict[str, list[float]] = {"startup_s": [], "parse_s": [], "build_s": [], "insert_s": [], "cli_s": []}
    for _ in range(rounds):
        workdir = tempfile.mkdtemp(prefix="bench-bounds-")
        try:
            jobs = os.path.join(workdir, "jobs.jsonl")
            with open(jobs, "w") as f:
                f.writelines(json.dumps({"command": "true"}) + "\n" for _ in range(n))
            t0 = time.perf_counter()
            subprocess.run([exe, "--help"], capture_output=True, check=True)
            parts["startup_s"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            specs = [spec for _, spec in bulk.iter_jobs(jobs, None, {"queue": QUEUE})]
            parts["parse_s"].append(time.perf_counter() - t0)

            built = os.path.join(workdir, "built.db")
            app = queuectl_app(built)
            publisher = bulk.BulkPublisher(app, JobStore.shared(built))
            t0 = time.perf_counter()
            batches = list(publisher.batches(specs, bulk.INSERT_BATCH))
            parts["build_s"].append(time.perf_counter() - t0)
            publisher.close()

            store = JobStore(os.path.join(workdir, "insert.db"))
            store.open()
            t0 = time.perf_counter()
            store.publish_stream(batches)
            parts["insert_s"].append(time.perf_counter() - t0)
            store.close()
            del batches, specs

            t0 = time.perf_counter()
            subprocess.run([exe, "--db", os.path.join(workdir, "cli.db"), "enqueue", "--file", jobs, "--queue", QUEUE],
                           capture_output=True, check=True)
            parts["cli_s"].append(time.perf_counter() - t0)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    med = {key: statistics.median(v) for key, v in parts.items()}
    return {
        "jobs": n, **med,
        "cli_jobs_per_s": n / med["cli_s"],
        # What the command could do if reading and building messages cost nothing: start-up and
        # the storage layer's insert alone.
        "ceiling_jobs_per_s": n / (med["startup_s"] + med["insert_s"]),
        "parse_us_per_job": med["parse_s"] / n * 1e6,
        "build_us_per_job": med["build_s"] / n * 1e6,
        "insert_us_per_job": med["insert_s"] / n * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=3000, help="tasks sent per peer and round")
    parser.add_argument("--bulk", type=int, default=100_000, help="jobs of the bulk file")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bounds.json"),
                        help="where the figures go as JSON (bench/results/bounds.json)")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    enq = enqueue_bounds(args.rounds, args.n)
    print(f"enqueue: send_task of a no-op task, one producer, median of {args.rounds} rounds of {args.n}")
    memory = enq["send_us"]["memory"]
    for name, us in enq["send_us"].items():
        extra = "" if name == "memory" else f"  (+{us - memory:.0f} us over memory://)"
        print(f"  {name:9} {us:7.1f} us/msg  {enq['per_s'][name]:8,.0f} msgs/s{extra}")
    for name, why in enq["skipped"].items():
        print(f"  {name:9} skipped: {why}")
    st = enq["storage"]
    print(f"  queuectl storage layer alone: JobStore.publish {st['publish_us']:.1f} us "
          f"({st['payload_bytes']:.0f}-byte message), empty write transaction {st['empty_write_us']:.1f} us")
    fastest = max((p for p in enq["per_s"] if p not in ("memory", "queuectl")), key=enq["per_s"].get, default=None)
    if fastest:
        budget = 1e6 / (1.2 * enq["per_s"][fastest])
        print(f"  1.2x {fastest} = {budget:.1f} us/msg: {budget - memory:.1f} us left after Celery's "
              f"own {memory:.1f} us for the broker's whole publish")

    bb = bulk_bounds(args.rounds, args.bulk)
    print(f"bulk: queuectl enqueue --file of {bb['jobs']:,} jobs, median of {args.rounds} rounds")
    print(f"  start-up (queuectl --help)       {bb['startup_s']:.2f} s")
    print(f"  read and check the lines         {bb['parse_s']:.2f} s  ({bb['parse_us_per_job']:.1f} us/job)")
    print(f"  build the messages               {bb['build_s']:.2f} s  ({bb['build_us_per_job']:.1f} us/job)")
    print(f"  storage layer insert, one txn    {bb['insert_s']:.2f} s  ({bb['insert_us_per_job']:.1f} us/job)")
    print(f"  the whole command                {bb['cli_s']:.2f} s  ({bb['cli_jobs_per_s']:,.0f} jobs/s)")
    print(f"  start-up + insert alone          {bb['startup_s'] + bb['insert_s']:.2f} s  "
          f"(a ceiling of {bb['ceiling_jobs_per_s']:,.0f} jobs/s with free parsing and building)")
    with open(args.output, "w") as f:
        json.dump({"started": started, "rounds": args.rounds, "n": args.n, "enqueue": enq, "bulk": bb}, f, indent=1)
        f.write("\n")
    print(f"figures: {os.path.relpath(args.output)}")


if __name__ == "__main__":
    main()
