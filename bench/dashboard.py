"""The dashboard's cost: first page render and one live update on a database of 100,000 jobs,
and what a dashboard adds to an idle worker.

    python3 bench/dashboard.py                          # 100,000 jobs, 15 s per idle phase
    python3 bench/dashboard.py --jobs 20000 --idle 5    # a quick look

Pages are rendered in this process through Flask's test client (the server's own work, no
network): "first render" is the first GET / of a freshly made app (templates compiled then),
the median over --apps apps; "warm" the median of --repeat more. "Live update, database" is the
reads of one update: when the file changed, its three reads (counts per queue and state, the
oldest pending job, the last hour's stats); when it did not, one PRAGMA data_version. "Live update,
request" is the whole GET /live/overview. The load average is printed: on a shared machine the
figures also measure the neighbours. The idle check runs a real worker on
an empty file and counts its CPU time (main process and pool) in three phases of --idle seconds:
no dashboard, a dashboard nobody looks at, a dashboard whose overview is open (one live update
every 2 s, the workers asked every 5 s). Targets: first render < 300 ms, live update < 20 ms of
database time. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository

from click.testing import CliRunner  # noqa: E402

from queuectl.cli import cli  # noqa: E402
from queuectl.dashboard import create_app  # noqa: E402
from queuectl.dashboard.overview import OverviewReader  # noqa: E402
from queuectl_kombu import JobStore, NewJob  # noqa: E402

OWNER = "bench"
BATCH = 10_000


def build(path: Path, jobs: int) -> None:
    """`jobs` run_shell jobs (a real message, copied), then moved as workers would: 20% completed,
    5% failed, 4% dead, 1% processing, the rest pending."""
    result = CliRunner().invoke(cli, ["--db", str(path), "enqueue", "--command", "make test", "--id", "model"])
    assert result.exit_code == 0, result.output
    store = JobStore(str(path))
    store.open()
    try:
        payload = store.find_job("model").payload

        def batches():  # noqa: ANN202
            for start in range(0, jobs - 1, BATCH):
                yield [NewJob(queue="celery" if i % 10 else "batch", payload=payload, task_id=f"job-{i}",
                              task_name="queuectl.run_shell") for i in range(start, min(start + BATCH, jobs - 1))]

        store.publish_stream(batches())
        for share, outcome in ((0.20, "ack"), (0.05, "failed"), (0.04, "dead"), (0.01, "run")):
            claimed = store.claim(["celery", "batch"], int(jobs * share), OWNER, 3600)
            ids = [c.id for c in claimed]
            if outcome == "ack":
                store.ack_many(ids, OWNER, retention=86400)
            elif outcome != "run":
                for job_id in ids:
                    store.fail(job_id, OWNER, "exit code 1", max_retries=3 if outcome == "failed" else 0)
        print("states:", {s.value: n for s, n in store.counts().items()})
    finally:
        store.close()


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def median_ms(action: Callable[[], object], repeat: int) -> float:
    return statistics.median(timed(action) for _ in range(repeat))


def page_figures(path: Path, apps: int, repeat: int) -> None:
    """Render times of the pages, and the database cost of a live update."""
    first = []
    for _ in range(apps):
        app = create_app(str(path))
        client = app.test_client()
        first.append(timed(lambda: client.get("/").close()))
        app.extensions["queuectl"].close()
    app = create_app(str(path))
    client = app.test_client()
    store = app.extensions["queuectl"].store
    reader = OverviewReader(store)

    def get(url: str) -> Callable[[], None]:
        def fetch() -> None:
            reply = client.get(url)
            assert reply.status_code == 200, (url, reply.status_code)
        return fetch

    figures = {
        "first render of / (fresh app)": statistics.median(first),
        "GET / (warm)": median_ms(get("/"), repeat),
        "live update, database, the file changed": median_ms(lambda: OverviewReader(store).overview(time.time()),
                                                             repeat),
        "live update, database, the file unchanged": median_ms(lambda: reader.overview(time.time()), repeat),
        "live update, request (GET /live/overview)": median_ms(get("/live/overview"), repeat),
        "GET /jobs (first page, newest first)": median_ms(get("/jobs"), repeat),
        "GET /jobs?state=dead": median_ms(get("/jobs?state=dead"), repeat),
        "GET /dlq": median_ms(get("/dlq"), repeat),
        "GET /jobs?q=job-99999 (search, whole file)": median_ms(get("/jobs?q=job-99999"), max(3, repeat // 4)),
        "GET /jobs/<id> (one job, its result)": median_ms(get(f"/jobs/{store.find_job('job-5').id}"), repeat),
    }
    app.extensions["queuectl"].close()
    for name, ms in figures.items():
        print(f"  {name:<46} {ms:8.1f} ms")


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) of the live processes of group `pgid`, their reaped children included."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / tick


def idle_worker(seconds: float) -> None:
    """The CPU an idle worker spends with no dashboard, with one nobody looks at, with one open."""
    with tempfile.TemporaryDirectory(prefix="qdash-idle-") as tmp:
        db = Path(tmp) / "idle.db"
        env = dict(os.environ, QUEUECTL_DB=str(db))
        name = f"idle-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        out = open(Path(tmp) / "worker.out", "wb")  # noqa: SIM115
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "queuectl", "worker", "-c", "2", "-n", name,
                                   "-l", "INFO"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while f"{name} ready." not in (Path(tmp) / "worker.out").read_text(errors="replace"):
                if time.monotonic() > deadline or worker.poll() is not None:
                    sys.exit("the worker did not start")
                time.sleep(0.1)
            time.sleep(3)  # let its start-up settle

            def phase(label: str, during: Callable[[threading.Event], None] | None) -> None:
                stop = threading.Event()
                helper = threading.Thread(target=during, args=(stop,)) if during else None
                before = group_cpu(worker.pid)
                if helper:
                    helper.start()
                time.sleep(seconds)
                stop.set()
                if helper:
                    helper.join()
                used = group_cpu(worker.pid) - before
                print(f"  {label:<46} {used * 1000 / seconds * 60:8.0f} ms CPU per minute")

            phase("no dashboard", None)
            app = create_app(str(db))
            client = app.test_client()
            phase("a dashboard, nobody looking", lambda stop: stop.wait())

            def look(stop: threading.Event) -> None:
                client.get("/").close()
                while not stop.wait(2.0):
                    client.get("/live/overview").close()

            phase("the overview open (updates every 2 s)", look)
            app.extensions["queuectl"].close()
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
            out.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--apps", type=int, default=5, help="fresh apps for the first render")
    parser.add_argument("--repeat", type=int, default=20, help="runs of each warm figure")
    parser.add_argument("--idle", type=float, default=15.0, help="seconds of each idle-worker phase (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qdash-") as tmp:
        path = Path(tmp) / "bench.db"
        started = time.perf_counter()
        build(path, args.jobs)
        print(f"built {args.jobs:,} jobs in {time.perf_counter() - started:.1f} s; load average {os.getloadavg()[0]:.1f}")
        print(f"pages (median ms; first render over {args.apps} apps, the others over {args.repeat} runs):")
        page_figures(path, args.apps, args.repeat)
    if args.idle > 0:
        print(f"an idle worker (-c 2) over {args.idle:g} s per phase:")
        idle_worker(args.idle)


if __name__ == "__main__":
    main()
