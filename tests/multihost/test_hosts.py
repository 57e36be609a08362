"""Several worker hosts on one PostgreSQL broker: network namespaces, real ``celery worker``s.

Each host is a network namespace linked to the lab's bridge (conftest.py), running one prefork
worker of hostapp.py with 4 processes, acks late and a visibility timeout of 5 s. The test
process publishes from the root namespace and reads the job rows (queuectl.jobs) through SQL on
the lab's server; every run of a task appends ``job host pid start end task_id`` to a run log
that all hosts share (the namespaces share the file system), so what ran where is known without
asking the broker.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import Celery
from kombu.utils.json import dumps

from queuectl_kombu import JobStore, message_rows, stored_message
from queuectl_kombu.loop import ACK_BATCH
from tests.support.waiting import wait_for

from .conftest import CONCURRENCY, Cluster
from .hostapp import VISIBILITY_TIMEOUT

pytestmark = pytest.mark.slow

TASK = "multihost.run"
QUEUE = "celery"
#: The most jobs a worker holds: Celery's worker_prefetch_multiplier (4, the default) a process.
PREFETCH = 4 * CONCURRENCY
#: Jobs inserted per transaction by publish().
PUBLISH_BATCH = 1000
#: A housekeeper's lease line (queuectl_kombu/store/housekeeping.py, recover_expired_leases).
LEASE_EXPIRED = re.compile(r"WARNING/\w+\] job (\d+) \(task ([^)]+)\): lease expired after attempt (\d+), now (\w+)")
#: Lines a worker logs at ERROR or above, and tracebacks.
ERROR_LINE = re.compile(r"^(?:\[[^\]]*: (?:ERROR|CRITICAL)/.*|Traceback \(most recent call last\):)$", re.M)

# The publisher's Celery app builds each message with as_task_v2, as send_task does; the messages
# go in by the thousand through the store's bulk insert (publish_many), not one transaction and
# one NOTIFY waking every host per message: send_task took 3 to 5 ms a message here, over a
# minute for 20,000.
_publisher = Celery("multihost-publisher", set_as_current=False)
_publisher.conf.update(task_serializer="json", accept_content=["json"])


def publish(url: str, jobs: Iterable[int], seconds: float) -> dict[int, str]:
    """Publish one ``multihost.run(job, seconds)`` per job number to the queue ``celery`` in
    transactions of PUBLISH_BATCH; returns each job number's task id."""
    store = JobStore(url)
    task_ids: dict[int, str] = {}
    batch = []
    try:
        for job in jobs:
            task_id = str(uuid.uuid4())
            message = _publisher.amqp.as_task_v2(task_id, TASK, args=(job, seconds), kwargs={})
            body = base64.b64encode(dumps(message.body).encode()).decode()
            stored = stored_message(body, message.headers, exchange="", routing_key=QUEUE, priority=0,
                                    correlation_id=task_id)
            batch.extend(message_rows(stored, [QUEUE]))
            task_ids[job] = task_id
            if len(batch) >= PUBLISH_BATCH:
                store.publish_many(batch)
                batch = []
        if batch:
            store.publish_many(batch)
    finally:
        store.close()
    return task_ids


@dataclass(frozen=True)
class Run:
    """One line of the run log: one run of a task."""

    job: int
    host: str
    pid: int
    start: float
    end: float
    task_id: str


def read_runs(path: Path) -> list[Run]:
    """The complete lines of the run log (the last may still be being written)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    runs = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            continue
        job, host, pid, start, end, task_id = line.split()
        runs.append(Run(int(job), host, int(pid), float(start), float(end), task_id))
    return runs


def unexpected_errors(output: str) -> list[str]:
    """A worker's lines at ERROR or above (and tracebacks). An ack and the same worker's lease
    renewal once deadlocked here now and then; renewal and recovery now pass over the rows an ack
    holds (SKIP LOCKED), so any such line fails the test."""
    return ERROR_LINE.findall(output)


def job_states(cluster: Cluster) -> dict[str, int]:
    return dict(cluster.query("SELECT state, count(*) FROM queuectl.jobs WHERE queue = %s GROUP BY state", (QUEUE,)))


def wait_drained(cluster: Cluster, total: int, timeout: float) -> None:
    """Until every one of the `total` jobs of the queue is completed."""
    wait_for(lambda: job_states(cluster).get("completed", 0) == total, timeout, interval=0.5,
             what=lambda: f"all {total} jobs completed (jobs by state: {job_states(cluster)})",
             on_fail=cluster.describe)


def cut_host_sessions(cluster: Cluster, address: str) -> dict[str, int]:
    """The server's sessions of the host at `address`, by state (and, in a transaction, the
    first words of the statement it ran last)."""
    rows = cluster.query("SELECT coalesce(state, '?'), query FROM pg_stat_activity WHERE client_addr = %s", (address,))
    return dict(Counter(state + (f" ({' '.join(query.split()[:4])})" if "transaction" in state else "")
                        for state, query in rows))


def figures(name: str, **values: object) -> None:
    print(f"\n[multihost figures] {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)


@pytest.mark.timeout(480)  # the drain's own deadline (240 s) fails first, saying what it saw
def test_three_hosts_drain_20000_tasks_exactly_once(cluster: Cluster) -> None:
    """20,000 instant tasks, drained by three hosts: each ran exactly once (none missing, none
    twice, each run the message published for it, by a pool process of the host it names), each
    host ran a share, and every job row ends completed after one delivery."""
    total = 20_000
    workers = cluster.start_workers(quiet=True)
    pools = {name: set(worker.children()) for name, worker in workers.items()}
    started = time.monotonic()
    task_ids = publish(cluster.url, range(total), 0.0)
    published = time.monotonic() - started
    wait_drained(cluster, total, timeout=240)
    drained = time.monotonic() - started
    for name, worker in workers.items():
        pools[name] |= set(worker.children())

    runs = read_runs(cluster.runlog)
    counts = Counter(run.job for run in runs)
    twice = sorted(job for job, n in counts.items() if n > 1)
    missing = sorted(set(range(total)) - set(counts))
    assert not twice, f"{len(twice)} tasks ran more than once, e.g. {twice[:10]}"
    assert not missing, f"{len(missing)} tasks never ran, e.g. {missing[:10]}"
    assert len(runs) == total
    wrong = [run for run in runs if task_ids[run.job] != run.task_id]
    assert not wrong, f"runs of another message than their job's: {wrong[:5]}"
    strangers = [run for run in runs if run.pid not in pools.get(run.host, set())]
    assert not strangers, f"runs by a process that is not in the pool of the host they name: {strangers[:5]}"
    per_host = Counter(run.host for run in runs)
    assert set(per_host) == set(workers), f"runs per host: {dict(per_host)}"
    assert all(n > 0 for n in per_host.values()), f"runs per host: {dict(per_host)}"

    rows = cluster.query(
        "SELECT state, count(*), min(deliveries), max(deliveries), count(lease_owner) FROM queuectl.jobs"
        " WHERE queue = %s GROUP BY state", (QUEUE,))
    assert rows == [("completed", total, 1, 1, 0)], f"(state, jobs, min/max deliveries, leased): {rows}"
    for name, worker in workers.items():
        errors = unexpected_errors(worker.output())
        assert not errors, f"{name} logged errors: {errors[:5]}\n{worker.tail(80)}"

    figures("drain", tasks=total, per_host=dict(sorted(per_host.items())), publish_s=round(published, 1),
            drain_s=round(drained, 1), tasks_per_s=round(total / drained))


def test_cut_host_leases_are_redelivered(cluster: Cluster) -> None:
    """One host's link is cut mid-drain while it holds leased jobs: once their leases expire, the
    housekeeper of a surviving worker puts them back to pending (and logs it), the other hosts run
    them, and every task completes. Only those jobs are delivered twice, and a task runs twice
    only if the cut host had taken it before the cut (at least once): each duplicate's first run
    was on the cut host, its second on another host.

    3,000 tasks of 20 ms rather than 20,000: on this 2-core machine the 12 processes drain them
    in 10 to 15 s after the cut, 5 s of it waiting for the cut host's leases to run out; 20,000
    would add a minute or more (some 2 ms of CPU a task) and no case, the volume being the
    instant-task test's.
    """
    total, seconds = 3_000, 0.02
    workers = cluster.start_workers(quiet=False)
    victim = cluster.hosts[1]
    cut_worker = workers[victim.name]
    survivors = {name: worker for name, worker in workers.items() if name != victim.name}
    # lease_owner is "<hostname>:<pid>:<random>", pid that of the worker's main process, which is
    # the process Popen started (ip netns exec execs the worker in place).
    owner_like = f"%:{cut_worker.pid}:%"
    task_ids = publish(cluster.url, range(total), seconds)
    job_of_task = {task_id: job for job, task_id in task_ids.items()}

    def held_by_victim() -> list[tuple[int, str]]:
        return cluster.query("SELECT id, task_id FROM queuectl.jobs WHERE state = 'processing' AND lease_owner LIKE %s",
                             (owner_like,))

    def mid_drain() -> bool:
        ran = sum(1 for run in read_runs(cluster.runlog) if run.host == victim.name)
        return ran >= 150 and len(held_by_victim()) >= CONCURRENCY

    wait_for(mid_drain, 90, interval=0.1, what=f"{victim.name} to have run 150 tasks and hold {CONCURRENCY} leases",
             on_fail=cluster.describe)
    victim.cut()
    cut_at = time.time()
    leased_at_cut = {task_id for _, task_id in held_by_victim()}
    states_at_cut = job_states(cluster)
    sessions_at_cut = cut_host_sessions(cluster, victim.ip)

    wait_drained(cluster, total, timeout=120)
    drained_at = time.time()
    sessions_left = cut_host_sessions(cluster, victim.ip)
    # The cut host cannot reach the broker: stopped now (its group SIGKILLed), its record is final.
    cut_worker.kill_group()
    cut_worker.wait_group_gone()

    runs = read_runs(cluster.runlog)
    by_task: dict[str, list[Run]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: r.start):
        by_task[run.task_id].append(run)
    rows = cluster.query(
        "SELECT id, task_id, state, attempts, deliveries, lease_owner, last_error FROM queuectl.jobs"
        " WHERE queue = %s", (QUEUE,))
    assert len(rows) == total
    job_id = {row[1]: row[0] for row in rows}

    # Nothing lost: every job completed, every task ran.
    assert {row[2] for row in rows} == {"completed"}, f"jobs by state: {Counter(row[2] for row in rows)}"
    assert all(row[5] is None for row in rows), "a completed job still names a lease owner"
    missing = set(task_ids.values()) - set(by_task)
    assert not missing, f"{len(missing)} tasks never ran: {sorted(job_of_task[t] for t in missing)[:10]}"
    wrong = [run for run in runs if task_ids[run.job] != run.task_id]
    assert not wrong, f"runs of another message than their job's: {wrong[:5]}"

    # The jobs whose lease the cut host held were recovered from it, and only those were
    # delivered again: once, to a surviving host, after the cut.
    expired_note = re.compile(rf"lease of [^:]+:{cut_worker.pid}:\w+ expired")
    recovered = {row[1] for row in rows if row[6] and expired_note.fullmatch(row[6])}
    assert recovered, f"no job was recovered from {victim.name} (leased at the cut: {len(leased_at_cut)})"
    # At the cut a worker's leases are its prefetch window (tasks not acked yet) plus the acks it
    # made but had not written yet (they wait up to 5 ms, at most ACK_BATCH of them; each one
    # freed a slot of the window, which a claim may have filled again): PREFETCH alone failed with
    # 17 here, one ack waiting.
    assert len(recovered) <= PREFETCH + ACK_BATCH, \
        f"{victim.name} held {len(recovered)} jobs, more than its prefetch window and unwritten acks"
    redelivered = {row[1] for row in rows if row[4] > 1}
    assert redelivered == recovered, (
        f"delivered again without having been recovered from the cut host: {sorted(redelivered - recovered)[:10]}; "
        f"recovered but not delivered again: {sorted(recovered - redelivered)[:10]}")
    assert all((row[3], row[4]) == (2, 2) for row in rows if row[1] in recovered), \
        "a recovered job was claimed more than twice (or its attempts were not counted)"
    delays = []
    for task_id in recovered:
        elsewhere = [run for run in by_task[task_id] if run.host != victim.name]
        assert len(elsewhere) == 1, f"job {job_id[task_id]} leased by the cut host ran {len(elsewhere)} times elsewhere"
        assert elsewhere[0].start > cut_at, f"job {job_id[task_id]} ran elsewhere before the cut: {elsewhere[0]}"
        delays.append(elsewhere[0].start - cut_at)
    # The cut host's leases were set (by its claims, or renewed every third of their length at
    # most) shortly before the cut: none ran out, and none was delivered again, within half of
    # the visibility timeout after it.
    assert min(delays) > VISIBILITY_TIMEOUT / 2, f"redelivered {min(delays):.2f}s after the cut"

    # At least once, never more than that: a task that ran twice was first run by the cut host.
    duplicates = {task_id: task_runs for task_id, task_runs in by_task.items() if len(task_runs) > 1}
    for task_id, task_runs in duplicates.items():
        hosts = [run.host for run in task_runs]
        assert task_id in recovered, f"job {job_id[task_id]} ran twice ({hosts}) but was not taken from the cut host"
        assert task_runs[0].host == victim.name and victim.name not in hosts[1:], \
            f"job {job_id[task_id]}: runs on {hosts}, the first should be the cut host's, and only the first"
    late = [run for run in runs if run.host == victim.name and run.start > cut_at]
    assert {run.task_id for run in late} <= recovered, "the cut host started a job it held no lease on"

    # A surviving worker said so, once per job: "job N (task T): lease expired after attempt 1, now pending".
    said: list[tuple[int, str, int, str]] = []
    for worker in survivors.values():
        said += [(int(m[0]), m[1], int(m[2]), m[3]) for m in LEASE_EXPIRED.findall(worker.output())]
    assert sorted(s[0] for s in said) == sorted(job_id[t] for t in recovered), \
        f"lease lines of the surviving workers: {said[:10]} (recovered: {len(recovered)})"
    assert all(job_id.get(task_id) == job and attempt == 1 and state == "pending"
               for job, task_id, attempt, state in said), f"lease lines: {said[:10]}"
    for name, worker in survivors.items():
        errors = unexpected_errors(worker.output())
        assert not errors, f"{name} logged errors: {errors[:5]}\n{worker.tail(80)}"

    per_host = Counter(run.host for run in runs)
    assert all(per_host[name] > 0 for name in workers), f"runs per host: {dict(per_host)}"
    figures("cut", tasks=total, cut=victim.name, per_host=dict(sorted(per_host.items())),
            pending_at_cut=states_at_cut.get("pending", 0), leased_at_cut=len(leased_at_cut),
            redelivered=len(recovered), duplicates=len(duplicates), cut_host_starts_after_cut=len(late),
            redeliver_s=f"{min(delays):.2f}..{max(delays):.2f}", drain_after_cut_s=round(drained_at - cut_at, 1),
            cut_host_sessions=sessions_at_cut, cut_host_sessions_left=sessions_left)
