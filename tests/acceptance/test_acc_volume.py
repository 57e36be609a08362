"""Items 2 and 7: volume. Many producers and workers share one file; nothing is lost or run twice;
with retention 0 the file stays small."""

from __future__ import annotations

import collections
import os
import time

import pytest

from queuectl_kombu import JobState

from .conftest import count_lines, read_events

PRODUCERS = 4
PER_PRODUCER = 5_000


def test_20k_tasks_4_producers_2_workers_exactly_once(harness):
    total = PRODUCERS * PER_PRODUCER
    started = time.monotonic()
    workers = [harness.start_worker(pool="prefork", concurrency=4, quiet=True) for _ in range(2)]
    producers = [harness.start_producer(PER_PRODUCER, f"p{i}") for i in range(PRODUCERS)]
    harness.wait_producers(producers, timeout=120)
    published = time.monotonic()
    harness.wait_for(lambda: count_lines(harness.execlog) >= total, 120, 0.5,
                     lambda: f"{total} runs, have {count_lines(harness.execlog)}")
    store = harness.store()
    harness.wait_for(lambda: store.counts()[JobState.COMPLETED] == total, 30, 0.2,
                     lambda: f"{total} completed rows, have {store.counts()}")
    drained = time.monotonic()

    runs = read_events(harness.execlog)
    by_tag = collections.Counter(e.tag for e in runs)
    expected = {f"p{p}-{i}" for p in range(PRODUCERS) for i in range(PER_PRODUCER)}
    missing = expected - set(by_tag)
    twice = {tag: n for tag, n in by_tag.items() if n > 1}
    assert not missing, f"{len(missing)} tasks never ran, e.g. {sorted(missing)[:5]}"
    assert not twice, f"{len(twice)} tasks ran more than once, e.g. {list(twice.items())[:5]}"
    assert set(by_tag) == expected
    assert len({e.task_id for e in runs}) == total

    counts = store.counts()
    assert counts == {**{s: 0 for s in JobState}, JobState.COMPLETED: total}, counts
    done = store.list_jobs(state=JobState.COMPLETED)
    assert all(j.attempts == 1 and j.lease_owner is None for j in done)
    assert {j.task_id for j in done} == {e.task_id for e in runs}

    # both workers took part (the queue is shared, not owned by the first consumer)
    per_worker = collections.Counter(e.pgid for e in runs)
    assert set(per_worker) == {w.pgid for w in workers}, per_worker
    print(f"\n20k: published in {published - started:.1f}s, drained in {drained - started:.1f}s, "
          f"per worker {dict(per_worker)}")


def file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


MB = 2**20
#: The issue asks for 100,000 tasks. That costs ~2.4 ms of CPU per task (publish ~0.9 ms, worker
#: ~1.5 ms), i.e. >= 2 minutes on this 2-core machine when it is idle and far more when shared,
#: which blows the suite's budget; 50,000 keep the claim (the file does not grow with the number
#: of tasks) testable in about a minute. QTEST_BULK_TASKS=100000 QTEST_BULK_TIMEOUT=900 runs the
#: full size (the test's own pytest timeout follows QTEST_BULK_TIMEOUT).
BULK_TASKS = int(os.environ.get("QTEST_BULK_TASKS", "50000"))
BULK_TIMEOUT = float(os.environ.get("QTEST_BULK_TIMEOUT", "360"))
#: Generous bound on the WAL at any moment: the keeper truncates it once it passes 8 MiB, checking
#: about once a second, while several producers can append ~15 MiB/s.
WAL_PEAK_LIMIT = 64 * MB


@pytest.mark.slow
@pytest.mark.timeout(BULK_TIMEOUT + 60)
def test_bulk_tasks_retention_0_keep_the_file_small(harness):
    """BULK_TASKS (issue: 100,000) tasks through one prefork worker with retention 0, published
    by four producers as a steady load (each pauses while more than max_backlog messages wait: the
    file has to hold the backlog, and a 100k burst needs ~120 MB whatever the retention). Deleted
    rows' pages must be reused and the WAL checkpointed: the file does not grow with the number of
    tasks."""
    total, producers_n, max_backlog = BULK_TASKS, 4, 4_000
    per = total // producers_n
    harness.conf = {"broker_transport_options": {"retention": 0}}
    started = time.monotonic()
    worker = harness.start_worker(pool="prefork", concurrency=4, quiet=True)
    producers = [harness.start_producer(per, f"p{i}", max_backlog=max_backlog) for i in range(producers_n)]
    db, wal = str(harness.db), str(harness.db) + "-wal"
    peak = {"db": 0, "wal": 0}
    samples: list[tuple[float, int, int, int]] = []

    def progress() -> bool:
        done = count_lines(harness.execlog)
        sizes = file_size(db), file_size(wal)
        peak["db"], peak["wal"] = max(peak["db"], sizes[0]), max(peak["wal"], sizes[1])
        samples.append((time.monotonic() - started, done, *sizes))
        return done >= total and all(p.poll() is not None for p in producers)

    harness.wait_for(progress, BULK_TIMEOUT, 1.0, lambda: f"{total} runs, have {count_lines(harness.execlog)}")
    harness.wait_producers(producers, timeout=5)
    store = harness.store()
    harness.wait_for(lambda: sum(store.counts().values()) == 0, 30, 0.2,
                     lambda: f"every row deleted on ack, have {store.counts()}")
    drained = time.monotonic()
    runs = read_events(harness.execlog)
    assert len(runs) == total and len({e.tag for e in runs}) == total, "each task ran exactly once"
    sizes = {"db": file_size(db), "wal": file_size(wal)}
    quarter = next(s for s in samples if s[1] >= total // 4)
    wal_peak_at = max(samples, key=lambda s: s[3])
    (harness.tmp / "sizes.tsv").write_text("".join(f"{t:.1f}\t{n}\t{d}\t{w}\n" for t, n, d, w in samples))
    print(f"\n{total} tasks, retention 0: all run in {drained - started:.1f}s; "
          f"end sizes db={sizes['db'] / MB:.2f} MiB wal={sizes['wal'] / MB:.2f} MiB; "
          f"peak db={peak['db'] / MB:.2f} MiB wal={peak['wal'] / MB:.2f} MiB "
          f"(at {wal_peak_at[0]:.0f}s, {wal_peak_at[1]} runs); "
          f"db after {quarter[1]} runs {quarter[2] / MB:.2f} MiB")
    for path in sorted(harness.tmp.glob("producer-*.log")):
        print(f"{path.name}: {path.read_text().strip()}")
    assert sizes["db"] < 20 * MB, sizes
    assert sizes["wal"] <= 16 * MB, sizes
    assert peak["wal"] <= WAL_PEAK_LIMIT, (peak, wal_peak_at)
    # the file stops growing once the backlog is reached: no growth with the number of tasks
    assert sizes["db"] <= quarter[2] * 1.5 + 2 * MB, (quarter, sizes)
    assert worker.proc.poll() is None, worker.tail()


def test_wal_stays_bounded_while_four_producers_publish(harness):
    """The WAL (not only the database) stays bounded while four producers publish back to back
    and a worker drains with retention 0. Several writing processes leave no moment without a
    reader, so passive checkpoints never restart the WAL: before the worker's lease keeper
    truncated it past 8 MiB (commit 97a3416) it grew ~15 MiB/s (184 MiB for these 8000 messages)."""
    harness.conf = {"broker_transport_options": {"retention": 0}}
    harness.start_worker(pool="prefork", concurrency=2, quiet=True)
    producers = [harness.start_producer(2_000, f"p{i}") for i in range(4)]
    wal = str(harness.db) + "-wal"
    peak = 0

    def published() -> bool:
        nonlocal peak
        peak = max(peak, file_size(wal))
        return all(p.poll() is not None for p in producers)

    harness.wait_for(published, 120, 0.2, "the producers to finish")
    harness.wait_producers(producers, timeout=5)
    print(f"\npeak WAL while 4 producers published 8000 messages: {peak / MB:.1f} MiB")
    assert peak <= WAL_PEAK_LIMIT, f"WAL grew to {peak / MB:.1f} MiB"
