"""Task priorities through Celery on the SQLite broker: AMQP semantics (0-9, higher first), FIFO
within a priority, the queue's x-max-priority from ``task_queue_max_priority``."""

from __future__ import annotations

import json

from tests.support.waiting import wait_for

from .kit import Env

# (tag, priority): several ties, both ends of the range, and no priority at all (0).
PLAN = [
    ("a", 3), ("b", None), ("c", 9), ("d", 3), ("e", 0), ("f", 7), ("g", 9), ("h", 1),
    ("i", 3), ("j", 5), ("k", None), ("l", 7), ("m", 2), ("n", 8), ("o", 4), ("p", 6), ("q", 9),
]


def test_tasks_run_highest_priority_first_then_fifo(env: Env) -> None:
    env.conf = {"task_queue_max_priority": 9}
    app = env.app()
    for tag, priority in PLAN:
        options = {} if priority is None else {"priority": priority}
        app.send_task("b.record", args=(tag,), **options)
    # Declared by the publisher with the app's x-max-priority, before any worker existed.
    ((arguments, max_priority),) = env.sql("SELECT arguments, max_priority FROM queues WHERE name = 'celery'")
    assert max_priority == 9 and json.loads(arguments)["x-max-priority"] == 9
    assert env.sql("SELECT COUNT(*) FROM jobs WHERE state = 'pending'") == [(len(PLAN),)]

    worker = env.worker("prio", "--prefetch-multiplier", "1", pool=("-P", "solo"), events=False)
    wait_for(lambda: len(env.runs("run")) >= len(PLAN), 60, interval=0.1, what="every task to run")
    order = [r.tag for r in env.runs("run")]
    expected = [tag for _, tag in sorted(
        ((-(p or 0), i), tag) for i, (tag, p) in enumerate(PLAN)
    )]
    assert order == expected
    assert order == ["c", "g", "q", "n", "f", "l", "p", "j", "o", "a", "d", "i", "m", "h", "b", "e", "k"]
    assert {r.hostname for r in env.runs("run")} == {worker.hostname}
