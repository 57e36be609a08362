"""Item 3: a worker SIGKILLed in the middle of a task loses nothing (the lease expires and a fresh
worker runs it); a worker stopped with SIGTERM hands its prefetched messages back at once.
Item 4: a task longer than the lease is not delivered twice while its worker lives."""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from queuectl_kombu import JobState


LEASE = 3.0
TASK_SECONDS = 10.0
ROUNDS = 10
KILL_AFTER = 4.0  # seconds into the task
LANES = 3  # rounds run in three independent lanes (queues) at once: about a minute instead of three

CRASH_CONF = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "broker_transport_options": {"visibility_timeout": LEASE},
}

SEND_SLEEPY = """
import qapp
print(qapp.sleepy.apply_async(({tag!r}, {seconds}), queue={queue!r}).id)
"""


def events_for(harness, task_id: str, event: str | None = None):
    return [e for e in harness.events(event) if e.task_id == task_id]


@pytest.mark.slow
def test_sigkill_mid_task_ten_rounds_nothing_lost(harness):
    """Each lane has its own queue. In a round the only consumer of the queue (the victim) starts a
    10 s task; a fresh worker (the rescuer) is started; the victim's whole process group is
    SIGKILLed; the rescuer runs the task to completion once the lease expired. The rescuer is the
    next round's victim."""
    harness.conf = CRASH_CONF
    lock = threading.Lock()
    results: list[dict] = []  # appended by the lane threads

    def start_worker(queue: str):
        return harness.start_worker(pool="prefork", concurrency=1, queues=[queue])

    def lane(lane_no: int, rounds: int) -> None:
        queue = f"crash{lane_no}"
        store = harness.store()
        victim = start_worker(queue)
        for r in range(rounds):
            tag = f"lane{lane_no}-round{r}"
            task_id = harness.send(SEND_SLEEPY.format(tag=tag, seconds=TASK_SECONDS, queue=queue))
            harness.wait_for(lambda: events_for(harness, task_id, "start"), 20, interval=0.05, what=f"{tag} to start")
            [first] = events_for(harness, task_id, "start")
            assert first.pgid == victim.pgid, "only the victim consumes this queue so far"

            # kill it in the middle of its run, not just after it started
            time.sleep(max(0.0, first.time + KILL_AFTER - time.time()))
            [row] = store.jobs_for_task(task_id)
            assert row.state is JobState.PROCESSING and f":{victim.pid}:" in row.lease_owner, row
            pool = victim.children()
            assert first.pid in pool and first.pid != victim.pid, "the task runs in a pool child"
            victim.kill_group()  # main process and pool children at once
            killed_at = time.time()
            [row] = store.jobs_for_task(task_id)  # the last lease the victim renewed
            assert row.state is JobState.PROCESSING and row.lease_expires_at > killed_at, row
            lease_at_kill = row.lease_expires_at
            victim.wait_group_gone(zombies=True)
            assert not events_for(harness, task_id, "end"), f"{tag} ended before the kill: kill it earlier"
            # a fresh worker, started after the kill (starting it before could delay the kill past the
            # task's end on a loaded machine); its start-up overlaps the wait for the lease to expire
            rescuer = start_worker(queue)  # returns once the rescuer is ready
            rescuer_ready = time.time()

            harness.wait_for(lambda: len(events_for(harness, task_id, "start")) == 2, LEASE + 20, interval=0.05,
                             what=f"{tag} to be delivered again after the lease expired")
            second = events_for(harness, task_id, "start")[1]
            assert second.pgid == rescuer.pgid
            harness.wait_for(lambda: events_for(harness, task_id, "end"), TASK_SECONDS + 15, interval=0.1,
                             what=f"{tag} to complete on the rescuer")
            harness.wait_for(lambda: store.jobs_for_task(task_id)[0].state is JobState.COMPLETED, 10, interval=0.05,
                             what=f"{tag} row completed")
            [done] = store.jobs_for_task(task_id)
            with lock:
                results.append({
                    "tag": tag, "task_id": task_id, "ran_before_kill": killed_at - first.time,
                    "redelivered_after_kill": second.time - killed_at,
                    "lease_at_kill": lease_at_kill, "second_start": second.time, "attempts": done.attempts,
                    "rescuer_ready": rescuer_ready,
                })
            victim = rescuer

    per_lane = [ROUNDS // LANES + (1 if i < ROUNDS % LANES else 0) for i in range(LANES)]
    with ThreadPoolExecutor(LANES) as pool:
        futures = [pool.submit(lane, i, n) for i, n in enumerate(per_lane)]
        for f in futures:
            f.result()

    assert len(results) == ROUNDS
    for res in results:
        # killed in the middle: it had run a while and had not finished
        assert KILL_AFTER - 0.5 < res["ran_before_kill"] < TASK_SECONDS - 1, res
        # delivered again only once the victim's lease had expired (not before), and promptly after
        assert res["second_start"] >= res["lease_at_kill"] - 0.05, res
        # ... once both the lease had expired and the rescuer was up (a loaded machine can take
        # several seconds to start a worker)
        assert res["second_start"] - max(res["lease_at_kill"], res["rescuer_ready"]) < 5, res
        assert res["attempts"] == 2, res
    starts = collections.Counter(e.task_id for e in harness.events("start"))
    ends = collections.Counter(e.task_id for e in harness.events("end"))
    ids = {r["task_id"] for r in results}
    assert set(starts) == ids and set(starts.values()) == {2}, starts
    assert set(ends) == ids and set(ends.values()) == {1}, "each task completed exactly once"
    counts = harness.store().counts()
    assert counts[JobState.COMPLETED] == ROUNDS and sum(counts.values()) == ROUNDS, counts
    print("\n" + "\n".join(
        f"{r['tag']}: killed after {r['ran_before_kill']:.1f}s, redelivered {r['redelivered_after_kill']:.1f}s "
        "after the kill" for r in sorted(results, key=lambda r: r["tag"])))


def test_sigterm_hands_back_prefetched_messages_at_once(harness, engine):
    """On a SQLite file, then on a PostgreSQL database (the harness reads `engine`)."""
    harness.conf = {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # a long lease: if the messages were not handed back they would stay processing for a minute
        "broker_transport_options": {"visibility_timeout": 60},
    }
    store = harness.store()
    n = 5
    ids = harness.send(
        "import qapp\n"
        f"print(','.join(qapp.sleepy.delay('slow-%d' % i, 3).id for i in range({n})))"
    ).split(",")
    worker = harness.start_worker(pool="prefork", concurrency=1, prefetch_multiplier=4)
    harness.wait_for(lambda: harness.events("start"), 20, interval=0.05, what="the first task to start")
    # the worker holds the first task and has prefetched three more (prefetch 4 = 1 x 4)
    harness.wait_for(lambda: store.counts()[JobState.PROCESSING] == 4, 5, interval=0.05, what="4 claimed messages")
    claimed = store.list_jobs(state=JobState.PROCESSING)
    assert all(f":{worker.pid}:" in j.lease_owner for j in claimed)
    [running] = harness.events("start")
    assert not harness.events("end"), "SIGTERM must come while the first task runs"

    worker.terminate()  # warm shutdown: the running task finishes, the prefetched ones go back
    rc = worker.wait(30)
    exited_at = time.time()
    rows = {j.task_id: j for j in store.list_jobs()}
    assert rc == 0, worker.tail()
    assert rows[running.task_id].state is JobState.COMPLETED
    assert [e.task_id for e in harness.events("end")] == [running.task_id]
    rest = [rows[t] for t in ids if t != running.task_id]
    # handed back now, not after a lease expiry: pending, no lease, attempt not counted
    assert [j.state for j in rest] == [JobState.PENDING] * (n - 1), rest
    assert all(j.lease_owner is None and j.lease_expires_at is None for j in rest), rest
    assert all(j.attempts == 0 for j in rest), rest
    assert all(j.next_run_at <= exited_at for j in rest), rest

    harness.start_worker(pool="prefork", concurrency=4)
    harness.wait_for(lambda: len(harness.events("end")) == n, 30, interval=0.1, what="every task to finish")
    harness.wait_for(lambda: store.counts()[JobState.COMPLETED] == n, 10, interval=0.05, what="every row completed")
    starts = collections.Counter(e.task_id for e in harness.events("start"))
    assert starts == {t: 1 for t in ids}, "each task ran exactly once"


def test_task_longer_than_lease_not_delivered_twice(harness, engine):
    """On both engines (the harness reads `engine`)."""
    harness.conf = {
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {"visibility_timeout": 2},
    }
    store = harness.store()
    w1 = harness.start_worker(pool="prefork", concurrency=2)
    w2 = harness.start_worker(pool="prefork", concurrency=2)
    task_id = harness.send("import qapp\nprint(qapp.sleepy.delay('long', 6).id)")
    harness.wait_for(lambda: events_for(harness, task_id, "end"), 20, interval=0.1, what="the 6 s task to finish")
    harness.wait_for(lambda: store.jobs_for_task(task_id)[0].state is JobState.COMPLETED, 5, interval=0.05,
                     what="row completed")
    starts = events_for(harness, task_id, "start")
    assert len(starts) == 1, f"delivered more than once while its worker lived: {starts}"
    [end] = events_for(harness, task_id, "end")
    assert end.time - starts[0].time >= 6
    [row] = store.jobs_for_task(task_id)
    assert row.attempts == 1, row
    # no lease expiry was logged by either worker
    for w in (w1, w2):
        assert "lease expired" not in w.output() and "ack ignored" not in w.output(), w.tail()
    assert w1.popen.poll() is None and w2.popen.poll() is None
