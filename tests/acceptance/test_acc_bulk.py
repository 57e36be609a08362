"""Item 7: volume with retention 0 — the file stays small while many tasks go through one worker.

In a file of its own so that the test runner can run it beside the other volume tests.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.support.events import count_lines
from .test_acc_volume import MB, WAL_PEAK_LIMIT, file_size

#: The issue asks for 100,000 tasks. That costs ~2.4 ms of CPU per task (publish ~0.9 ms, worker
#: ~1.5 ms), i.e. >= 2 minutes on this 2-core machine when it is idle and far more when shared,
#: which blows the suite's budget; 30,000 keep the claim (the file does not grow with the number
#: of tasks) testable in about a minute. QTEST_BULK_TASKS=100000 QTEST_BULK_TIMEOUT=900 runs the
#: full size (the test's own pytest timeout follows QTEST_BULK_TIMEOUT).
BULK_TASKS = int(os.environ.get("QTEST_BULK_TASKS", "30000"))
BULK_TIMEOUT = float(os.environ.get("QTEST_BULK_TIMEOUT", "360"))


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
        return done >= total and all(not p.alive() for p in producers)

    harness.wait_for(progress, BULK_TIMEOUT, interval=1.0,
                     what=lambda: f"{total} runs, have {count_lines(harness.execlog)}")
    harness.wait_producers(producers, timeout=5)
    store = harness.store()
    harness.wait_for(lambda: sum(store.counts().values()) == 0, 30, interval=0.2,
                     what=lambda: f"every row deleted on ack, have {store.counts()}")
    drained = time.monotonic()
    runs = harness.events()
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
    assert worker.popen.poll() is None, worker.tail()
