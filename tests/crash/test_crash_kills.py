"""Issue 7, part 1: random SIGKILLs lose nothing.

For several rounds, with two prefork workers consuming and two producers publishing: SIGKILL a
worker's main process (its pool children die with it), a pool child in the middle of a task, a
producer in the middle of its stream, ``queuectl enqueue --file`` in the middle of a bulk
enqueue, ``queuectl enqueue --command`` and ``queuectl config set`` in the middle of their write.
Then, once the queue has drained, check that nothing was lost, nothing ran twice (beyond the
at-least-once window of a killed run), no lease was left behind and the file is intact.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest

from tests.support.events import Event
from tests.support.processes import Proc, Worker, pid_alive
from tests.support.waiting import wait_for

from .crashkit import Rig, record_figures, shell_job_command

LEASE = 3.0  # visibility-timeout: a killed worker's jobs come back within seconds
MAX_RETRIES = 2  # a job runs at most 3 times
ROUNDS = int(os.environ.get("QUEUECTL_CRASH_ROUNDS", "8"))
WORKERS = 2
CONCURRENCY = 2
PRODUCERS = 2
PRODUCER_RATE = 6.0  # messages per second per producer: under what the workers can take
FAIL_EVERY = 8  # every 8th published task always fails (retried, then dead)
MAX_SLEEP = 0.3  # crash.work sleeps up to this: kills land in the middle of runs
BULK_LINES = 2000
RUNNABLE_EVERY = 40  # one bulk line in 40 runs now (shell job); the others wait a day in queue "later"
#: A processing row whose lease expired longer ago than this, while workers live, was left behind:
#: the lease keeper recovers expired leases every visibility_timeout / 4 (at most 1 s); the rest is
#: slack for a 2-core machine running several test files at once.
RECOVERY_GRACE = 4.0
DRAIN_TIMEOUT = 90.0

#: A pool child whose run ended this long ago while its row is still processing is hung.
HANG_AFTER = 20.0
HANG_REASON = (
    "BUG (fork safety): a prefork pool child forked while the worker's lease-keeper thread was inside "
    "SQLite (its reads are not covered by queuectl_kombu.db's at-fork lock) inherited a locked SQLite "
    "mutex and hung in its first sqlite3.connect (storing its result); the live worker renews the "
    "job's lease forever, so the job never completes. Rescued here by SIGKILLing the child."
)

RECEIVED = re.compile(r"Task \S+\[([^\]]+)\] received")


class LeaseSampler(threading.Thread):
    """Every 0.25 s: rows in processing whose lease expired more than RECOVERY_GRACE ago."""

    def __init__(self, rig: Rig) -> None:
        super().__init__(daemon=True, name="lease-sampler")
        self.rig = rig
        self.stop_event = threading.Event()
        self.violations: list[tuple] = []
        self.samples = 0
        self.max_processing = 0

    def run(self) -> None:
        while not self.stop_event.wait(0.25):
            now = time.time()
            try:
                late = self.rig.sql(
                    "SELECT id, task_id, lease_owner, lease_expires_at FROM jobs "
                    "WHERE state = 'processing' AND lease_expires_at < ?", (now - RECOVERY_GRACE,))
                processing = self.rig.sql("SELECT COUNT(*) FROM jobs WHERE state = 'processing'")[0][0]
            except Exception as exc:  # noqa: BLE001 - a sample that fails is a finding too
                self.violations.append(("sample failed", repr(exc)))
                continue
            self.samples += 1
            self.max_processing = max(self.max_processing, processing)
            for row in late:
                self.violations.append((*row, f"expired {now - row[3]:.1f}s ago"))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


def write_bulk_file(rig: Rig, name: str) -> tuple[str, list[str]]:
    path = rig.tmp / f"{name}.jsonl"
    ids = []
    with open(path, "w") as f:
        for i in range(BULK_LINES):
            task_id = f"{name}-{i:05d}"
            ids.append(task_id)
            if i % RUNNABLE_EVERY == 0:
                job = {"id": task_id, "command": shell_job_command(task_id, rig.execlog), "queue": "celery"}
            else:
                job = {"id": task_id, "command": "true", "queue": "later", "delay": 86400}
            f.write(json.dumps(job) + "\n")
    return str(path), ids


# -- step 1 and 2: the processes, and the rounds of kills ----------------------------------------


class Rounds:
    """The processes of test_random_sigkills_lose_nothing and what it did to them: start(), then
    play(r) for each round, end_rounds() and drain(). Random choices come from the rig's seeded generator (a
    seed replays a run), drawn in the same order every time."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.rng = rig.rng
        self.workers: list[Worker] = []
        self.killed_workers: list[Worker] = []
        self.producers: list[Proc] = []
        self.producer_prefixes: list[str] = []
        self.bulk_runs: list[dict] = []
        self.cli_runs: list[dict] = []
        self.config_runs: list[dict] = []
        self.kinds: Counter[str] = Counter()
        self.busy_child_kills = 0
        self.bulk_seconds: list[float] = []  # how long a whole bulk enqueue takes here, now
        self.cli_seconds: dict[str, list[float]] = defaultdict(list)  # how long each command takes here, now
        self.hung: list[dict] = []  # pool children found hung after their run (a known bug: see HANG_REASON)
        self.last_hang_check = time.monotonic()

    def start(self) -> None:
        """The configuration (a short lease, few retries), the workers and the producers."""
        rig = self.rig
        setters = [rig.cli(f"set-{key}", "config", "set", key, str(value))
                   for key, value in (("visibility-timeout", LEASE), ("max-retries", MAX_RETRIES), ("backoff-base", 1))]
        for proc in setters:
            assert proc.wait(60) == 0, proc.tail()
        self.workers = [rig.worker(wait_ready=False, concurrency=CONCURRENCY) for _ in range(WORKERS)]
        for w in self.workers:
            w.wait_ready()
        for _ in range(PRODUCERS):
            self.new_producer()

    def new_producer(self) -> None:
        prefix = self.rig.uniq("P")
        self.producer_prefixes.append(prefix)
        self.producers.append(self.rig.producer(prefix, 100_000, rate=PRODUCER_RATE, fail_every=FAIL_EVERY,
                                                max_sleep=MAX_SLEEP, seed=self.rng.randrange(1 << 30)))

    # -- one round ------------------------------------------------------------------------------

    def play(self, r: int) -> None:
        """The writers of round `r` (a bulk enqueue, a single enqueue, a config write), each
        SIGKILLed at a random moment by its own thread; meanwhile a pool child, a worker's main
        process and a producer are SIGKILLed."""
        rig, rng = self.rig, self.rng
        bulk_path, bulk_ids = write_bulk_file(rig, f"B{r}")
        bulk = rig.cli(f"bulk{r}", "enqueue", "--file", bulk_path)
        cli_id = f"C{r}"
        single = rig.cli(f"single{r}", "enqueue", "--id", cli_id, "--command",
                         shell_job_command(cli_id, rig.execlog))
        config = rig.cli(f"config{r}", "config", "set", "visibility-timeout", str(LEASE))
        mode = ("whole", "mid", "before", "mid", "mid")[r % 5]
        # (each thread draws from its own generator, seeded from the test's: a seed replays a run)
        threads = [
            threading.Thread(target=self.kill_bulk, args=(bulk, mode, random.Random(rng.random()))),
            # every fourth round (the first one included) they run to their end: that measures them
            threading.Thread(target=self.kill_cli, args=(single, r % 4 != 0, random.Random(rng.random()))),
            threading.Thread(target=self.kill_cli, args=(config, r % 4 != 0, random.Random(rng.random()))),
        ]
        for t in threads:
            t.start()
        plan = sorted([(rng.uniform(0.0, 2.0), "child"), (rng.uniform(0.0, 2.0), "main"),
                       (rng.uniform(0.0, 2.0), "producer")])
        actions = {"child": self.kill_pool_child, "main": self.kill_worker_main, "producer": self.kill_producer}
        t0 = time.monotonic()
        for at, action in plan:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            actions[action]()
        for t in threads:
            t.join(90)
            assert not t.is_alive(), "a kill thread hangs"
        for proc in (bulk, single, config):
            proc.wait(60)
        self.bulk_runs.append({"proc": bulk, "ids": bulk_ids, "killed": bulk.killed_at is not None, "mode": mode})
        self.cli_runs.append({"proc": single, "id": cli_id, "killed": single.killed_at is not None})
        self.config_runs.append({"proc": config, "killed": config.killed_at is not None})

    def kill_bulk(self, bulk: Proc, mode: str, rng: random.Random) -> None:
        """before: at a random moment early in its life; mid: late in its life, around its one
        transaction; whole: let it finish (measuring it)."""
        if mode == "whole":
            bulk.wait(120)
            self.bulk_seconds.append(time.time() - bulk.started)
            return
        if mode == "mid":
            typical = statistics.median(self.bulk_seconds) if self.bulk_seconds else 1.5
            time.sleep(max(0.0, bulk.started + rng.uniform(0.5, 1.0) * typical - time.time()))
        else:
            time.sleep(rng.uniform(0.1, 0.6))
        if bulk.alive():
            self.rig.kill(bulk, "bulk_enqueue")

    def kill_cli(self, proc: Proc, kill: bool, rng: random.Random) -> None:
        """Let it finish (measuring it), or SIGKILL it at a random moment late in its life, around
        its write (the last part of a run)."""
        kind = proc.name.rstrip("0123456789")
        if not kill:
            proc.wait(60)
            self.cli_seconds[kind].append(time.time() - proc.started)
            return
        typical = statistics.median(self.cli_seconds[kind])
        time.sleep(max(0.0, proc.started + rng.uniform(0.6, 1.1) * typical - time.time()))
        if proc.alive():
            self.rig.kill(proc, kind)

    def kill_pool_child(self) -> None:
        """A pool child of a ready worker, one running a task when there is one."""
        ready = [w for w in self.workers if w.alive() and w.is_ready()]
        victim = self.rng.choice(ready)
        children = set(victim.children())
        busy = open_runs_of(self.rig, children)
        if children:
            pid = self.rng.choice(sorted(busy or children))
            self.busy_child_kills += bool(busy)
            self.rig.kill_pid(pid, "pool_child", victim.name)
            self.kinds["pool_child"] += 1

    def kill_worker_main(self) -> None:
        """A worker's main process, replaced at once by a new worker. One worker always lives (it
        recovers the others' leases): the replacement started at the last kill must be ready
        before another worker goes."""
        for w in self.workers:
            w.wait_ready()
        victim = self.rng.choice(self.workers)
        self.rig.kill(victim, "worker_main")
        self.kinds["worker_main"] += 1
        self.workers.remove(victim)
        self.killed_workers.append(victim)
        self.workers.append(self.rig.worker(wait_ready=False, concurrency=CONCURRENCY))

    def kill_producer(self) -> None:
        """A producer in the middle of its stream, replaced by a new one."""
        victim = self.rng.choice(self.producers)
        self.rig.kill(victim, "producer")
        self.kinds["producer"] += 1
        self.producers.remove(victim)
        self.new_producer()

    # -- step 3: the drain ----------------------------------------------------------------------

    def end_rounds(self) -> None:
        """Every worker up, the killed ones gone, the producers stopped."""
        for w in self.workers:
            w.wait_ready()
        for w in self.killed_workers:
            w.wait_group_gone()
        for p in self.producers:
            p.terminate()
        for p in self.producers:
            p.wait(30)

    def drain(self) -> None:
        """Until every job of the celery queue is completed or dead (hung pool children rescued)."""
        wait_for(self.drained, DRAIN_TIMEOUT, what="the celery queue to drain (every job completed or dead)",
                 interval=0.25, on_fail=self.stuck)

    def drained(self) -> bool:
        if time.monotonic() - self.last_hang_check > 2.0:
            self.last_hang_check = time.monotonic()
            self.rescue_hung_children()
        left = self.rig.sql("SELECT COUNT(*) FROM jobs WHERE queue = 'celery' "
                            "AND state IN ('pending', 'processing', 'failed')")
        return left[0][0] == 0

    def rescue_hung_children(self) -> None:
        """A pool child that logged the end of its run long ago, still alive, its row still
        processing under its live worker's lease: it hangs in its first SQLite call after a fork
        (HANG_REASON). Keep its stack for the report, then SIGKILL it: the worker requeues the job."""
        rig = self.rig
        now = time.time()
        rows = rig.sql("SELECT task_id, updated_at FROM jobs WHERE queue = 'celery' AND state = 'processing'")
        if not rows:
            return
        events, _ = rig.events()
        finished = {e.task_id: e for e in events if e.event in ("end", "fail")}
        killed = rig.killed_pids()
        for task_id, claimed_at in rows:
            e = finished.get(task_id)
            if (e is None or now - claimed_at < HANG_AFTER or e.pid in killed or not pid_alive(e.pid)
                    or not any(e.pid in w.children() for w in self.workers)):
                continue
            stack = rig.stack(e.pid)
            rig.kill_pid(e.pid, "hung_pool_child", task_id)
            self.hung.append({"pid": e.pid, "task_id": task_id, "stack": stack})

    def stuck(self) -> str:
        rows = self.rig.sql("SELECT id, task_id, lease_owner, lease_expires_at - ? FROM jobs "
                            "WHERE queue = 'celery' AND state = 'processing'", (time.time(),))
        return f"{self.rig.describe()}\n--- still processing: {rows}\n{self.rig.stacks()}"


def open_runs_of(rig: Rig, pids: set[int]) -> set[int]:
    """Pids among `pids` that logged a start without its end (running a task now)."""
    events, _ = rig.events()
    running: dict[tuple[str, int], int] = Counter()
    for e in events:
        if e.event == "start":
            running[(e.task_id, e.pid)] += 1
        elif e.event in ("end", "fail"):
            running[(e.task_id, e.pid)] -= 1
    return {pid for (_, pid), n in running.items() if n > 0 and pid in pids}


# -- step 4: the invariants -----------------------------------------------------------------------


@dataclass
class Kills:
    """Which runs and jobs a kill touched: a run in a killed process, or a job received by a
    killed worker."""

    killed: dict[int, list[float]]  # pid -> when it was SIGKILLed (Rig.killed_pids)
    received_by_killed: set[str]
    by_task: dict[str, list[tuple[int, Event]]]  # task_id -> (index in the log, event)

    def killed_after(self, pid: int, at: float | None) -> bool:
        return any(at is None or t >= at - 0.05 for t in self.killed.get(pid, ()))

    def touched(self, task_id: str) -> bool:
        if task_id in self.received_by_killed:
            return True
        starts = [e for _, e in self.by_task[task_id] if e.event == "start"]
        return any(self.killed_after(e.pid, e.time) for e in starts)


@dataclass
class Ledger:
    """The acknowledged jobs (task_id -> kind) and what the writers' runs left behind."""

    acked: dict[str, str] = field(default_factory=dict)
    cli_acked: int = 0
    bulk_outcomes: Counter[str] = field(default_factory=Counter)


def acknowledged(rig: Rig, rounds: Rounds, rows: dict[str, tuple], problems: list[str]) -> Ledger:
    """Acknowledged jobs: the producers' logs, the ids the CLI printed, the bulk files that finished
    (the whole file or nothing); the exit codes of the writers that were not killed."""
    ledger = Ledger()
    for prefix in rounds.producer_prefixes:
        path = rig.producer_log(prefix)
        if path.exists():
            for line in path.read_text().splitlines():
                task_id, kind, _ = line.split()
                ledger.acked[task_id] = kind
    for run in rounds.cli_runs:
        printed = run["proc"].stdout().split()
        if run["id"] in printed:
            ledger.acked[run["id"]] = "shell"
            ledger.cli_acked += 1
        else:
            assert run["killed"], f"queuectl enqueue exited without printing its id:\n{run['proc'].tail()}"
    for run in rounds.bulk_runs:
        ids = run["ids"]
        present = [i for i in ids if i in rows]
        n = len(present)
        rc = run["proc"].popen.returncode
        if not run["killed"]:
            assert rc == 0, run["proc"].tail()
        if rc == 0:
            assert n == len(ids), f"{run['proc'].name} exited 0 but {len(ids) - n} of its jobs are missing"
            for i, task_id in enumerate(ids):
                ledger.acked[task_id] = "shell" if i % RUNNABLE_EVERY == 0 else "later"
        # the whole file or nothing
        if n not in (0, len(ids)):
            problems.append(f"{run['proc'].name}: {n} jobs of a {len(ids)}-line file were written: "
                            "a bulk enqueue must be all or nothing")
        ledger.bulk_outcomes["whole file" if n == len(ids) else "none" if n == 0 else "part"] += 1
        print(f"{run['proc'].name}: kill {run['mode']}, exit code {rc}, {n} of {len(ids)} jobs written")
    for run in rounds.config_runs:
        if not run["killed"]:
            assert run["proc"].popen.returncode == 0, run["proc"].tail()
    return ledger


def judge_rows(rows: dict[str, tuple], kills: Kills, problems: list[str]) -> tuple[Counter[str], int]:
    """Each job's final row against its runs: (outcomes, duplicate runs explained by a kill)."""
    now = time.time()
    outcome: Counter[str] = Counter()
    explained_duplicates = 0
    for task_id, (_, state, attempts, max_retries, next_run_at, queue, task_name, last_error) in rows.items():
        if task_id is None or queue not in ("celery", "later"):
            continue
        evs = [e for _, e in kills.by_task.get(task_id, [])]
        ends = [e for e in evs if e.event == "end"]
        fails = [e for e in evs if e.event == "fail"]
        limit = 1 + (MAX_RETRIES if max_retries is None else max_retries)
        always_fails = task_name == "crash.fail"
        if queue == "later":
            if state != "pending" or next_run_at <= now or attempts or evs:
                problems.append(f"{task_id}: a delayed job is {state} (attempts {attempts}, runs {len(evs)})")
            outcome["pending, due tomorrow"] += 1
            continue
        if state == "completed":
            if always_fails:
                problems.append(f"{task_id}: a job that always fails is completed")
            elif not ends:
                problems.append(f"{task_id}: completed without a finished run")
            else:
                # every finished run before the last must have been cut off by a kill before its ack
                for e in ends[:-1]:
                    start = next((s for s in evs if s.event == "start" and s.pid == e.pid), None)
                    # a shell whose pool child was SIGKILLed before the shell started sees PPID 1
                    # (it runs on, orphaned): that run was cut off by a kill too
                    if e.pid == 1 or kills.killed_after(e.pid, start.time if start else None):
                        explained_duplicates += 1
                    else:
                        problems.append(f"{task_id}: ran to its end {len(ends)} times; the run of pid {e.pid} "
                                        "was not killed (a duplicate delivery)")
            outcome["completed"] += 1
        elif state == "dead":
            if attempts != limit:
                problems.append(f"{task_id}: dead after {attempts} attempts, not {limit}")
            if always_fails:
                if len(fails) != limit and not kills.touched(task_id):
                    problems.append(f"{task_id}: dead after {len(fails)} failed runs, not {limit}")
                if len(fails) > limit + sum(1 for e in evs if e.event == "start" and kills.killed_after(e.pid, e.time)):
                    problems.append(f"{task_id}: {len(fails)} failed runs for {limit} attempts")
                outcome["dead (always fails)"] += 1
            else:
                if ends or not kills.touched(task_id):
                    problems.append(f"{task_id}: a job that succeeds is dead ({len(ends)} finished runs; "
                                    f"last error {last_error!r})")
                outcome["dead (every attempt killed)"] += 1
        else:
            problems.append(f"{task_id}: still {state} after the drain (next run in {next_run_at - now:.1f}s)")
    return outcome, explained_duplicates


# -- the test -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_random_sigkills_lose_nothing(rig: Rig) -> None:
    started = time.monotonic()
    rounds = Rounds(rig)
    rounds.start()
    sampler = LeaseSampler(rig)
    sampler.start()
    for r in range(ROUNDS):
        rounds.play(r)
    rounds.end_rounds()
    rounds_done_at = time.monotonic()
    rounds.drain()
    sampler.stop()
    drained_at = time.monotonic()

    problems: list[str] = []
    assert rig.integrity() == "ok"
    assert all(w.alive() for w in rounds.workers), [w.tail() for w in rounds.workers if not w.alive()]
    events, malformed = rig.events()
    assert not malformed, f"execution log lines written in pieces: {malformed[:5]}"
    by_task: dict[str, list[tuple[int, Event]]] = defaultdict(list)
    for index, e in enumerate(events):
        by_task[e.task_id].append((index, e))
    rows = {
        row[0]: row for row in rig.sql(
            "SELECT task_id, state, attempts, max_retries, next_run_at, queue, task_name, last_error "
            "FROM jobs WHERE queue IN ('celery', 'later')")
    }
    received_by_killed = {task_id for w in rounds.killed_workers for task_id in RECEIVED.findall(w.output())}
    kills = Kills(rig.killed_pids(), received_by_killed, by_task)

    ledger = acknowledged(rig, rounds, rows, problems)
    got = rig.run_cli("config", "get", "visibility-timeout")
    assert got.returncode == 0 and float(got.stdout) == LEASE, got
    lost = sorted(t for t in ledger.acked if t not in rows)
    if lost:
        problems.append(f"{len(lost)} acknowledged jobs are missing: {lost[:10]}")
    outcome, explained_duplicates = judge_rows(rows, kills, problems)
    phantom = sorted({e.task_id for e in events} - set(rows))
    if phantom:
        problems.append(f"jobs ran that have no row: {phantom[:10]}")
    if sampler.violations:
        problems.append(f"rows left in processing after their lease expired: {sampler.violations[:10]}")
    locked = [p.name for p in rig.procs if "database is locked" in p.output()]
    if locked:
        problems.append(f"'database is locked' reached: {locked}")

    kinds = rounds.kinds
    kinds["bulk_enqueue"] = sum(r["killed"] for r in rounds.bulk_runs)
    kinds["hung_pool_child_rescued"] = len(rounds.hung)
    kinds["cli_enqueue"] = sum(r["killed"] for r in rounds.cli_runs)
    kinds["cli_config_set"] = sum(r["killed"] for r in rounds.config_runs)
    figures = {
        "rounds": ROUNDS,
        "seed": rig.seed,
        "kills": dict(kinds),
        "pool_child_kills_mid_task": rounds.busy_child_kills,
        "bulk_enqueue_outcomes": dict(ledger.bulk_outcomes),
        "cli_enqueue_acknowledged": ledger.cli_acked,
        "cli_seconds_median": {k: round(statistics.median(v), 2) for k, v in rounds.cli_seconds.items()},
        "jobs_acknowledged": len(ledger.acked),
        "rows": len(rows),
        "outcomes": dict(outcome),
        "duplicate_runs_after_kill_before_ack": explained_duplicates,
        "unexplained_duplicates_or_losses": len(problems),
        "lease_samples": sampler.samples,
        "most_rows_processing_at_once": sampler.max_processing,
        "integrity_check": "ok",
        "seconds_rounds": round(rounds_done_at - started, 1),
        "seconds_drain": round(drained_at - rounds_done_at, 1),
    }
    record_figures("crash_random_sigkills", figures)
    assert not problems, "\n".join(problems[:40])
    assert len(ledger.acked) > 0 and outcome["completed"] > 0 and outcome["dead (always fails)"] > 0, figures
    assert kinds["worker_main"] >= ROUNDS // 2 and kinds["pool_child"] >= ROUNDS // 2, figures
    if rounds.hung:
        # every other invariant held (the rescued jobs included); the hang itself is the bug
        details = "\n".join(f"pid {h['pid']} (job {h['task_id']}):\n{h['stack']}" for h in rounds.hung)
        pytest.xfail(f"{HANG_REASON}\n{details}")
