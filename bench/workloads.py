"""The workloads: one function each, taking a Run and returning {metric: value, ...}.

A Run gives the peer's publisher app, its URLs, a fresh work directory, the workload's size `n`
and `worker()`, which starts a worker on the peer with the workload's pool (the caller's `finally`
stops it). Add a workload by writing a function and listing it in WORKLOADS with its metrics, its
default size and, if it applies to some peers only, their names.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .celeryapp import QUEUE, make_app
from .worker import Worker, interrupted, wait_for

#: Where the scale workloads put their pending filler jobs: a queue no worker of the bench consumes.
OTHER_QUEUE = "queuectl-bench-other"
#: Sends a second, all producers together, in `mixed-paced`: under what every peer drains here
#: (about 1,000 tasks/s and more), so that the peers are compared at one load.
PACED_RATE = 600


@dataclass
class Run:
    peer: str
    broker: str
    backend: str | None
    workdir: str
    n: int = 0
    acks_late: bool = False
    pool: str = "prefork"
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app = make_app(self.broker, self.backend, acks_late=self.acks_late)
        self.record = os.path.join(self.workdir, "record.txt")
        self._offset = self._count = 0

    def worker(self) -> Worker:
        return self.start_workers(1)[0]

    def start_workers(self, k: int) -> list[Worker]:
        """k workers started together (all spawned, then each waited for), so that none has a head
        start of a whole worker start-up over the others."""
        started = [Worker(self.peer, self.broker, self.backend, self.workdir, self.record, self.acks_late,
                          pool=self.pool) for _ in range(k)]
        self.workers.extend(started)
        for w in started:
            w.wait_ready()
        return started

    def db_path(self) -> str:
        """The queuectl file of this run (queuectl only)."""
        assert self.broker.startswith("sqlite:///"), self.broker
        return self.broker[len("sqlite:///"):]

    def lines(self) -> list[list[str]]:
        if not os.path.exists(self.record):
            return []
        with open(self.record) as f:
            return [line.split() for line in f if line.endswith("\n")]

    def count(self) -> int:
        """Lines recorded so far; reads only what was appended since the last call (cheap)."""
        if os.path.exists(self.record):
            with open(self.record, "rb") as f:
                f.seek(self._offset)
                new = f.read()
            self._offset += len(new)
            self._count += new.count(b"\n")
        return self._count

    def wait_tasks(self, n: int, stall: float = 60.0) -> None:
        """Until `n` lines are recorded; fails when none came for `stall` seconds."""
        progress = [0, time.monotonic()]

        def done() -> bool:
            count = self.count()
            if count > progress[0]:
                progress[:] = [count, time.monotonic()]
            elif time.monotonic() - progress[1] > stall:
                try:
                    left: Any = self.queued()
                except Exception as exc:  # the queue itself may be gone
                    left = f"? ({exc})"
                raise TimeoutError(f"stalled: {count} of {n} tasks ran, none in the last {stall:g}s, "
                                   f"{left} still queued")
            return count >= n
        wait_for(done, 3600, f"{n} tasks to run", interval=0.1)

    def queued(self) -> int:
        with self.app.connection_for_write() as conn:
            return self.app.amqp.queues[QUEUE].bind(conn.default_channel).queue_declare(passive=True)[1]

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.app.close()


def check_interrupted() -> None:
    if interrupted.is_set():
        raise KeyboardInterrupt


def publish(run: Run, n: int, task: str = "bench.noop", first: int = 0) -> float:
    """Send n tasks `task(i)` one at a time through one producer; returns the seconds it took."""
    t0 = time.perf_counter()
    with run.app.producer_or_acquire() as producer:
        for i in range(first, first + n):
            check_interrupted()
            run.app.send_task(task, args=[i], producer=producer, ignore_result=True)
    return time.perf_counter() - t0


def enqueue(run: Run) -> dict[str, Any]:
    """One producer sends n no-op tasks one at a time (after 100 untimed ones that open the
    connection and declare the queue); msgs/s of the timed sends, then a check that all arrived."""
    warmup = 100
    publish(run, warmup, first=-warmup)
    seconds = publish(run, run.n)
    wait_for(lambda: run.queued() >= warmup + run.n, 60, "every message to be queued", interval=0.1)
    queued = run.queued() - warmup
    return {"per_s": run.n / seconds, "publish_s": seconds, "queued": queued, "missing": run.n - queued}


def queuectl_executable() -> str:
    """The console script of this interpreter (a pyenv shim would add its own start-up)."""
    beside = os.path.join(os.path.dirname(sys.executable), "queuectl")
    found = beside if os.path.exists(beside) else shutil.which("queuectl")
    if not found:
        raise RuntimeError("the queuectl console script is not installed: pip install -e .")
    return found


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bulk(run: Run) -> dict[str, Any]:
    """`queuectl --db FILE enqueue --file JOBS --queue queuectl-bench` of n shell jobs (one JSON
    object a line: {"command": "true"}); jobs/s of the whole CLI process, start-up included."""
    jobs = os.path.join(run.workdir, "jobs.jsonl")
    with open(jobs, "w") as f:
        f.writelines(json.dumps({"command": "true"}) + "\n" for _ in range(run.n))
    exe = queuectl_executable()
    cmd = [exe, "--db", run.db_path(), "enqueue", "--file", jobs, "--queue", QUEUE]
    cpu = children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu = children_cpu() - cpu
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}: {proc.stderr[-2000:]}")
    t0 = time.perf_counter()
    subprocess.run([exe, "--help"], capture_output=True, check=True)
    startup = time.perf_counter() - t0
    queued = run.queued()
    return {"jobs_per_s": run.n / wall, "wall_s": wall, "cpu_s": cpu, "jobs_per_cpu_s": run.n / cpu,
            "help_s": startup, "queued": queued, "missing": run.n - queued}


def deliveries(run: Run, n: int) -> dict[str, Any]:
    """What the record says of tasks 0..n-1: how many ran, twice or more, not at all."""
    ids = [int(r[0]) for r in run.lines()]
    unique = set(ids)
    return {"runs": len(ids), "duplicates": len(ids) - len(unique), "missing": len(set(range(n)) - unique)}


def drain(run: Run, task: str = "bench.noop",
          before_stop: Callable[[], dict[str, Any]] | None = None, workers: int = 1) -> dict[str, Any]:
    """Publish n tasks, then start `workers` workers; tasks/s from the first start to the last end."""
    n = run.n
    publish_s = publish(run, n, task)
    queued = run.queued()
    started = run.start_workers(workers)
    run.wait_tasks(n)
    time.sleep(0.5)  # a duplicate delivery would show up in the record
    extra = before_stop() if before_stop else {}
    for w in started:
        w.stop()
    rows = run.lines()
    first, last = min(float(r[1]) for r in rows), max(float(r[2]) for r in rows)
    if workers > 1:  # how far apart the workers became ready (their ready files' times)
        ready = [os.path.getmtime(w.ready_file) for w in started]
        extra = {**extra, "ready_spread_s": max(ready) - min(ready)}
    return {"tasks_per_s": n / (last - first), "drain_s": last - first, "publish_per_s": n / publish_s,
            "queued_before_start": queued, **deliveries(run, n), **extra}


def fresh(run: Run, tag: str) -> Run:
    """A Run on a new, empty broker of the same peer (a new file or database; the same Redis db or
    RabbitMQ queue, emptied), in a subdirectory of `run`'s; its workers are stopped with `run`'s."""
    from .peers import PEERS

    peer = PEERS[run.peer]
    workdir = os.path.join(run.workdir, tag)
    os.makedirs(workdir)
    broker, backend = peer.urls(workdir)
    sub = Run(run.peer, broker, backend, workdir, n=run.n, acks_late=run.acks_late, pool=run.pool)
    sub.workers = run.workers  # one_run stops them and shows their logs on a failure
    peer.reset(sub.app)
    return sub


def scaling(run: Run, ks: tuple[int, ...] = (1, 2, 3)) -> dict[str, Any]:
    """`drain` with k = 1, 2, 3 workers (each prefork -c 4) on one queue of one broker: each k
    publishes n tasks to a new, empty broker, then starts its k workers together; tasks/s from the
    first start to the last end, and its ratio to k = 1. Deliveries checked for each k."""
    from .peers import PEERS

    out: dict[str, Any] = {}
    for k in ks:
        check_interrupted()
        sub = run if k == ks[0] else fresh(run, f"k{k}")
        try:
            result = drain(sub, workers=k)
        finally:
            if sub is not run:
                sub.app.close()
        if sub is not run:
            PEERS[run.peer].release(sub.workdir)
        for key in ("tasks_per_s", "drain_s", "publish_per_s", "runs", "duplicates", "missing", "ready_spread_s"):
            if key in result:
                out[f"k{k}_{key}"] = result[key]
    for k in ks[1:]:
        out[f"k{k}_over_k{ks[0]}"] = out[f"k{k}_tasks_per_s"] / out[f"k{ks[0]}_tasks_per_s"]
    out["duplicates"] = sum(out[f"k{k}_duplicates"] for k in ks)
    out["missing"] = sum(out[f"k{k}_missing"] for k in ks)
    return out


def _schedstat() -> Callable[[], tuple[int, int]] | None:
    """A reader of this thread's (ns on a CPU, ns runnable but waiting for one) from
    /proc/thread-self/schedstat (Linux with schedstats), or None where there is none."""
    try:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None

    def read() -> tuple[int, int]:
        ran, waited, _ = os.pread(fd, 128, 0).split()
        return int(ran), int(waited)

    return read


def producer_main(broker: str, backend: str | None, ids: tuple[int, int], out: str, ready: Any, go: Any,
                  rate: float | None = None) -> None:
    """One producer process of `mixed`: connects, says it is ready, waits for the go, then sends
    bench.noop(i) for i in range(*ids) one at a time, timing each send_task with perf_counter:
    back to back, or with `rate` (sends a second) each send due at first + k / rate and timed from
    then (a send that starts late because the one before it took long counts the delay: open
    loop, as a web application's requests arrive whether or not the last one is done).
    Also, per send, the ms this thread spent on a CPU and runnable but waiting for one (schedstat).
    Writes {"first": wall time of the first send, "last": wall time after the last, "ms": [...],
    "cpu_ms": [...], "runq_ms": [...]}."""
    from .celeryapp import make_app

    app = make_app(broker, backend)
    ms: list[float] = []
    cpu_ms: list[float] = []
    runq_ms: list[float] = []
    sched = _schedstat()
    try:
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=3)
            ready.release()
            if not go.wait(120):
                raise TimeoutError("no go from the bench in 120 s")
            first = time.time()
            start = time.perf_counter()
            for k, i in enumerate(range(*ids)):
                due = start + k / rate if rate else None
                before = sched() if sched else (0, 0)  # before the sleep: a late wake-up counts
                ahead = 0.0 if due is None else due - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)  # the pace of the workload, not a wait on a condition
                t0 = time.perf_counter()
                app.send_task("bench.noop", args=[i], producer=producer, ignore_result=True)
                t1 = time.perf_counter()
                after = sched() if sched else (0, 0)
                ms.append((t1 - (t0 if due is None else min(t0, due))) * 1000)
                cpu_ms.append((after[0] - before[0]) / 1e6)
                runq_ms.append((after[1] - before[1]) / 1e6)
            last = time.time()
    finally:
        app.close()
    with open(out + ".tmp", "w") as f:
        json.dump({"first": first, "last": last, "ms": ms, "cpu_ms": cpu_ms if sched else None,
                   "runq_ms": runq_ms if sched else None}, f)
    os.replace(out + ".tmp", out)


def slowest_share(sent: list[dict[str, Any]]) -> dict[str, float]:
    """Where the slowest 1 % of sends spent their time, in % of it: waiting for a CPU while
    runnable, on one, and off it neither (asleep: a lock, I/O, the broker's reply). Empty without
    schedstat."""
    if any(s.get("runq_ms") is None for s in sent):
        return {}
    sends = sorted((ms, cpu, runq) for s in sent for ms, cpu, runq in zip(s["ms"], s["cpu_ms"], s["runq_ms"]))
    slow = sends[-max(1, len(sends) // 100):]
    total = sum(ms for ms, _, _ in slow) or 1.0
    runq = 100 * sum(r for _, _, r in slow) / total
    cpu = 100 * sum(c for _, c, _ in slow) / total
    return {"slowest_runq_pct": runq, "slowest_cpu_pct": cpu, "slowest_asleep_pct": max(0.0, 100 - runq - cpu)}


def mixed(run: Run, producers: int = 4, workers: int = 2, rate: float | None = None) -> dict[str, Any]:
    """`producers` processes (spawned) each send n/producers tasks one at a time, as fast as they
    can (or, with `rate`, at rate/producers sends a second each, timed from when each was due),
    while `workers` workers (each prefork -c 4, started and ready before) drain the queue:
    tasks/s from the first send to the last task's end, and the latency of each send_task (ms,
    all producers' together), and where the slowest 1 % spent it. Deliveries checked."""
    import multiprocessing

    n = run.n
    run.start_workers(workers)
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Semaphore(0), ctx.Event()
    outs, procs = [], []
    share, extra = divmod(n, producers)
    start = 0
    try:
        for j in range(producers):
            count = share + (j < extra)
            outs.append(os.path.join(run.workdir, f"producer-{j}.json"))
            procs.append(ctx.Process(target=producer_main, name=f"bench-producer-{j}", daemon=True,
                                     args=(run.broker, run.backend, (start, start + count), outs[-1], ready, go,
                                           None if rate is None else rate / producers)))
            start += count
        for p in procs:
            p.start()
        deadline = time.monotonic() + 120
        for _ in procs:  # every producer connected
            while not ready.acquire(timeout=0.5):
                check_interrupted()
                dead = [p for p in procs if p.exitcode is not None]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"producers not ready: exit codes {[p.exitcode for p in procs]}")
        go.set()
        run.wait_tasks(n)
        for p in procs:
            p.join(60)
            if p.exitcode != 0:
                raise RuntimeError(f"producer {p.name} exited with {p.exitcode}")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(10)
    time.sleep(0.5)  # a duplicate delivery would show up in the record
    sent = []
    for out in outs:
        with open(out) as f:
            sent.append(json.load(f))
    ms = sorted(x for s in sent for x in s["ms"])
    first_send, last_send = min(s["first"] for s in sent), max(s["last"] for s in sent)
    last_end = max(float(r[2]) for r in run.lines())
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"tasks_per_s": n / (last_end - first_send), "e2e_s": last_end - first_send,
            "publish_per_s": n / (last_send - first_send), "publish_p50_ms": q[49], "publish_p99_ms": q[98],
            "publish_max_ms": ms[-1], "publish_samples": len(ms), **slowest_share(sent), **deliveries(run, n)}


def roundtrip(run: Run, warmup: int = 20, warmup_budget: float = 10.0, budget: float = 60.0) -> dict[str, Any]:
    """`send_task(...).get()` of bench.result, whose result goes through the peer's result backend,
    one at a time to an idle worker: `warmup` trips (at most `warmup_budget` s), then n trips or as
    many as fit in `budget` s (a peer that polls every second gets fewer)."""
    run.worker()
    times: list[float] = []
    for count, seconds, keep in ((warmup, warmup_budget, False), (run.n, budget, True)):
        deadline = time.monotonic() + seconds
        for i in range(count):
            check_interrupted()
            t0 = time.perf_counter()
            value = run.app.send_task("bench.result", args=[i], ignore_result=False).get(timeout=30)
            took = time.perf_counter() - t0
            if value != i:
                raise AssertionError(f"bench.result({i}) returned {value!r}")
            if keep:
                times.append(took * 1000)
            if time.monotonic() > deadline:
                break
    times.sort()
    q = statistics.quantiles(times, n=100, method="inclusive")
    return {"p50_ms": q[49], "p95_ms": q[94], "p99_ms": q[98], "max_ms": times[-1], "samples": len(times)}


def roundtrip_phases(run: Run, warmup: int = 50) -> dict[str, Any]:
    """`roundtrip`, n trips of `bench.now` (which returns when it started), each cut in three
    phases by the clocks of the caller and the pool process: the publish (send_task returning),
    to the task's start (the worker's wake-up, claim and hand-over to the pool), and back (the
    result written, the caller woken, the result read). Its p99.9 and slowest trip too: one in a
    thousand is where a stop of every writer shows."""
    run.worker()
    for _ in range(warmup):
        run.app.send_task("bench.now", ignore_result=False).get(timeout=30)
    publish, start, back, total = [], [], [], []
    for _ in range(run.n):
        check_interrupted()
        t0 = time.time()
        result = run.app.send_task("bench.now", ignore_result=False)
        t1 = time.time()
        started = float(result.get(timeout=30))
        t2 = time.time()
        publish.append((t1 - t0) * 1000)
        start.append((started - t1) * 1000)
        back.append((t2 - started) * 1000)
        total.append((t2 - t0) * 1000)

    def q(values: list[float], at: int, n: int = 100) -> float:
        return statistics.quantiles(sorted(values), n=n, method="inclusive")[at - 1]

    return {"publish_p50_ms": q(publish, 50), "start_p50_ms": q(start, 50), "back_p50_ms": q(back, 50),
            "p50_ms": q(total, 50), "p99_ms": q(total, 99), "p999_ms": q(total, 999, 1000), "max_ms": max(total),
            "samples": len(total)}


#: A CPU-bound process beside the round trip of `roundtrip-busy` (one per core). It ends on its
#: own once its parent is gone, should the bench be killed before it can end it.
BUSY = "import os, sys\nwhile os.getppid() == int(sys.argv[1]):\n    for _ in range(100_000): pass\n"


def roundtrip_busy(run: Run) -> dict[str, Any]:
    """`roundtrip` while CPU-bound processes (one per core) share the machine, as a web server's
    other requests do: every process of the trip waits for a CPU at times, and a broker whose
    wake-ups can be missed in such a moment shows it here (a trip of a whole timer)."""
    busy = [subprocess.Popen([sys.executable, "-c", BUSY, str(os.getpid())], stdin=subprocess.DEVNULL)
            for _ in range(os.cpu_count() or 2)]
    try:
        return roundtrip(run)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()


def db_bytes(path: str) -> int:
    """The database file plus its WAL."""
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def fill(run: Run, total: int, pending_every: int = 10, batch: int = 50_000) -> dict[str, Any]:
    """Put `total` jobs in the run's queuectl file through the storage layer (JobStore): one in
    `pending_every` pending in OTHER_QUEUE (no worker takes them), the others completed in the
    bench queue, ids interleaved. Each batch: publish_many, then claim + ack_many of its
    bench-queue jobs (retention 1 day: they stay). Payloads are real messages of bench.noop as the
    bench publishes them, each with its own task id."""
    from queuectl_kombu import JobStore, NewJob

    owner = "bench-fill"
    store = JobStore(run.db_path())
    try:
        templates = {}
        for queue in (QUEUE, OTHER_QUEUE):  # one real message of each queue, taken back at once
            run.app.send_task("bench.noop", args=[0], queue=queue, ignore_result=True)
            [job] = store.take([queue], 1)
            assert job.task_id and len(job.task_id) == 36, job.task_id
            templates[queue] = (job.payload, job.task_id)
        t0 = time.perf_counter()
        done = 0
        while done < total:
            check_interrupted()
            jobs = []
            completed = 0
            for i in range(done, min(total, done + batch)):
                queue = OTHER_QUEUE if i % pending_every == pending_every - 1 else QUEUE
                completed += queue == QUEUE
                payload, template_id = templates[queue]
                task_id = f"00000000-0000-4000-8000-{i:012d}"
                jobs.append(NewJob(queue, payload.replace(template_id, task_id), task_id=task_id,
                                   task_name="bench.noop"))
            store.publish_many(jobs)
            claimed = store.claim([QUEUE], completed, owner, 3600)
            lost = store.ack_many([job.id for job in claimed], owner, retention=86400)
            if len(claimed) != completed or lost:
                raise RuntimeError(f"fill: {len(claimed)} of {completed} claimed, {len(lost)} acks lost")
            done += len(jobs)
        seconds = time.perf_counter() - t0
        counts = {str(k): v for k, v in store.counts().items()}
        # The drain starts from a settled file: the fill's WAL checkpointed and the kernel done
        # writing the fill back to disk (1.5 GB for 1M jobs), which it would otherwise do
        # during the drain, and at a cost no broker's steady state pays.
        store.checkpoint()
        os.sync()
    finally:
        store.close()
    return {"fill_s": seconds, "fill_per_s": total / seconds, "filled": counts,
            "db_mb_filled": db_bytes(run.db_path()) / 1e6}


def scale(run: Run, jobs: int) -> dict[str, Any]:
    """drain of n no-op tasks with `jobs` jobs already in the database (see fill)."""
    filled = fill(run, jobs)
    result = drain(run, before_stop=lambda: {"db_mb": db_bytes(run.db_path()) / 1e6})
    return {**filled, **result}


def latency(run: Run, warmup: int = 20, spacing: float = 0.02) -> dict[str, Any]:
    """Publish-to-start delay of n single tasks sent `spacing` apart to an idle worker."""
    n = run.n
    run.worker()
    with run.app.producer_or_acquire() as producer:
        for ids in (range(-warmup, 0), range(n)):  # the warm-up wakes every pool process
            expected = run.count() + len(ids)
            next_at = time.monotonic()
            for i in ids:
                next_at += spacing
                run.app.send_task("bench.stamp", args=[i, time.time()], producer=producer,
                                  ignore_result=True)
                time.sleep(max(0.0, next_at - time.monotonic()))
            run.wait_tasks(expected)
    delays = sorted((float(r[2]) - float(r[1])) * 1000 for r in run.lines() if int(r[0]) >= 0)
    q = statistics.quantiles(delays, n=100, method="inclusive")
    return {"p50_ms": q[49], "p95_ms": q[94], "p99_ms": q[98], "max_ms": delays[-1], "samples": len(delays)}


def idle(run: Run, seconds: float = 10.0, settle: float = 2.0, interval: float = 0.25) -> dict[str, Any]:
    """CPU (% of one core) and peak RSS of an idle worker, main process plus pool."""
    worker = run.worker()
    time.sleep(settle)
    base: dict[int, float] = {}
    last: dict[int, float] = {}
    peak_rss = peak_pss = 0
    t0 = time.monotonic()
    first = True
    while True:
        rss = pss = 0
        for proc in worker.processes():
            try:
                with proc.oneshot():
                    cpu = proc.cpu_times()
                    mem = proc.memory_full_info()  # PSS: shared pages of the forked pool counted once
                    rss, pss = rss + mem.rss, pss + mem.pss
            except Exception:  # a process that just exited
                continue
            total = cpu.user + cpu.system
            base.setdefault(proc.pid, total if first else 0.0)
            last[proc.pid] = total
        first = False
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        elapsed = time.monotonic() - t0
        if elapsed >= seconds:
            break
        time.sleep(min(interval, seconds - elapsed))
    cpu_s = sum(last[pid] - base[pid] for pid in last)
    return {"cpu_pct": 100 * cpu_s / elapsed, "cpu_s": cpu_s, "rss_mb": peak_rss / 2**20, "pss_mb": peak_pss / 2**20,
            "processes": len(last)}




def human(n: int) -> str:
    """5000 -> 5k, 1000000 -> 1M, 200 -> 200."""
    for div, unit in ((1_000_000, "M"), (1000, "k")):
        if n >= div and n % (div // 10) == 0:
            return f"{n / div:g}{unit}"
    return f"{n:,}"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str  # "{n}" is replaced by the workload's size, as 5k
    higher_is_better: bool
    decimals: int = 0  # digits after the point in the table
    unit: str = ""  # of the chart's axis


@dataclass(frozen=True)
class Workload:
    name: str
    fn: Callable[[Run], dict[str, Any]]
    metrics: tuple[Metric, ...]
    n: int  # its size: tasks, jobs or trips (run.py --n NAME=N changes it)
    acks_late: bool = False
    pool: str = "prefork"
    peers: tuple[str, ...] | None = None  # the peers it applies to (None: all)
    fill: int = 0  # scale: jobs already in the database

    def applies_to(self, peer: str) -> bool:
        return self.peers is None or peer in self.peers


def _drain_metric(what: str) -> tuple[Metric, ...]:
    return (Metric("tasks_per_s", f"drain {{n}} {what}, tasks/s", True, unit="tasks/s"),)


def _scale(jobs: int) -> Workload:
    return Workload(f"scale-{human(jobs).lower()}", functools.partial(scale, jobs=jobs),
                    (Metric("tasks_per_s", f"drain {{n}} with {human(jobs)} jobs in the file, tasks/s", True,
                            unit="tasks/s"),
                     Metric("db_mb", f"file + WAL with {human(jobs)} jobs, MB", False, 1, unit="MB")),
                    5000, peers=("queuectl",), fill=jobs)


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("enqueue", enqueue, (Metric("per_s", "enqueue {n}, one producer, msgs/s", True, unit="msgs/s"),),
             5000),
    Workload("bulk", bulk, (Metric("jobs_per_s", "queuectl enqueue --file {n}, jobs/s", True, unit="jobs/s"),),
             100_000, peers=("queuectl",)),
    Workload("drain", drain, _drain_metric("prefork -c 4"), 5000),
    Workload("drain-acks-late", drain, _drain_metric("prefork -c 4 acks_late"), 5000, acks_late=True),
    Workload("drain-threads", drain, _drain_metric("threads -c 4"), 5000, pool="threads"),
    Workload("drain-threads-acks-late", drain, _drain_metric("threads -c 4 acks_late"), 5000,
             acks_late=True, pool="threads"),
    Workload("shell-drain", functools.partial(drain, task="bench.shell"),
             (Metric("tasks_per_s", "shell drain {n} (`true`), prefork -c 4, tasks/s", True, unit="tasks/s"),),
             5000),
    Workload("latency", latency, (Metric("p50_ms", "latency p50, ms", False, 1, unit="ms"),
                                  Metric("p95_ms", "latency p95, ms", False, 1, unit="ms"),
                                  Metric("p99_ms", "latency p99, ms", False, 1, unit="ms")), 200),
    Workload("roundtrip", roundtrip, (Metric("p50_ms", "roundtrip p50, ms", False, 1, unit="ms"),
                                      Metric("p95_ms", "roundtrip p95, ms", False, 1, unit="ms"),
                                      Metric("p99_ms", "roundtrip p99, ms", False, 1, unit="ms")), 200),
    Workload("roundtrip-phases", roundtrip_phases,
             (Metric("publish_p50_ms", "roundtrip {n}: publish p50, ms", False, 2, unit="ms"),
              Metric("start_p50_ms", "roundtrip {n}: from the publish to the task's start, p50, ms", False, 2,
                     unit="ms"),
              Metric("back_p50_ms", "roundtrip {n}: from the task's start to the result read, p50, ms", False, 2,
                     unit="ms"),
              Metric("p50_ms", "roundtrip {n}: p50, ms", False, 2, unit="ms"),
              Metric("p99_ms", "roundtrip {n}: p99, ms", False, 2, unit="ms"),
              Metric("p999_ms", "roundtrip {n}: p99.9, ms", False, 1, unit="ms"),
              Metric("max_ms", "roundtrip {n}: slowest trip, ms", False, 1, unit="ms")), 3000),
    Workload("roundtrip-busy", roundtrip_busy,
             (Metric("p50_ms", "roundtrip beside a busy process per core, p50, ms", False, 1, unit="ms"),
              Metric("p99_ms", "roundtrip beside a busy process per core, p99, ms", False, 1, unit="ms"),
              Metric("max_ms", "roundtrip beside a busy process per core, slowest trip, ms", False, 1, unit="ms")),
             500),
    Workload("idle", idle, (Metric("cpu_pct", "idle CPU, % of a core", False, 2, unit="% of a core"),
                            Metric("rss_mb", "idle peak RSS total, MiB", False, unit="MiB"),
                            Metric("pss_mb", "idle peak PSS total, MiB", False, unit="MiB")), 0),
    Workload("scaling", scaling,
             (*(Metric(f"k{k}_tasks_per_s", f"scaling drain {{n}}, {k} worker(s) prefork -c 4, tasks/s", True,
                       unit="tasks/s") for k in (1, 2, 3)),
              Metric("k2_over_k1", "scaling drain {n}, 2 workers / 1 worker", True, 2, unit="x"),
              Metric("k3_over_k1", "scaling drain {n}, 3 workers / 1 worker", True, 2, unit="x")),
             20_000),
    *(Workload(name, functools.partial(mixed, producers=p),
               (Metric("tasks_per_s", f"mixed {{n}}, {p} producers + 2 workers, end-to-end tasks/s", True,
                       unit="tasks/s"),
                Metric("publish_p50_ms", f"mixed {{n}}, {p} producers, publish p50, ms", False, 2, unit="ms"),
                Metric("publish_p99_ms", f"mixed {{n}}, {p} producers, publish p99, ms", False, 2, unit="ms"),
                Metric("publish_max_ms", f"mixed {{n}}, {p} producers, publish max, ms", False, 1, unit="ms"),
                Metric("slowest_runq_pct", f"mixed {{n}}, {p} producers, slowest 1 % of publishes: % of their "
                       "time runnable, waiting for a CPU", False, unit="%")),
               10_000)
      for name, p in (("mixed", 4), ("mixed-8", 8))),
    Workload("mixed-paced", functools.partial(mixed, producers=4, rate=PACED_RATE),
             (Metric("publish_p50_ms", f"mixed-paced {{n}}, 4 producers at {PACED_RATE:,} sends/s in all, "
                     "publish p50 (from when due), ms", False, 2, unit="ms"),
              Metric("publish_p99_ms", f"mixed-paced {{n}}, 4 producers at {PACED_RATE:,} sends/s in all, "
                     "publish p99 (from when due), ms", False, 2, unit="ms"),
              Metric("publish_max_ms", f"mixed-paced {{n}}, 4 producers at {PACED_RATE:,} sends/s in all, "
                     "publish max (from when due), ms", False, 1, unit="ms"),
              Metric("slowest_runq_pct", "mixed-paced {n}, slowest 1 % of publishes: % of their time runnable, "
                     "waiting for a CPU", False, unit="%")),
             6_000),
    _scale(10_000),
    _scale(100_000),
    _scale(1_000_000),
)}
