"""Issue 17's acceptance: application transactions that save an order and enqueue its
confirmation, a third of them rolled back, with workers running: exactly the committed ones run,
each once, also when the producer is SIGKILLed at random points."""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.support.processes import Proc
from tests.support.waiting import wait_for

from .conftest import APPS, Queue


def produce(queue: Queue, tmp_path: Path, *args: str) -> Proc:
    name = "produce-" + "-".join(args)
    return Proc(name, [sys.executable, str(APPS / "produce_orders.py"), *args], env=queue.env(), cwd=tmp_path,
                out=tmp_path / f"{name}.err", stdout_file=tmp_path / f"{name}.out")


def committed(proc: Proc) -> list[int]:
    return [int(line.split()[1]) for line in proc.stdout().splitlines() if line.startswith("committed ")]


def assert_each_committed_order_ran_once(queue: Queue, workers: list[Any], timeout: float = 90) -> None:
    orders = queue.orders()

    def all_ran() -> bool:
        return set(queue.ran()) >= orders

    wait_for(all_ran, timeout, what=lambda: f"{len(orders)} confirmations ({len(set(queue.ran()))} ran)",
             on_fail=lambda: "\n".join(w.tail() for w in workers))
    runs = Counter(queue.ran())
    assert set(runs) == orders, f"ran for orders never committed: {sorted(set(runs) - orders)[:10]}"
    twice = {order: n for order, n in runs.items() if n > 1}
    assert not twice, f"confirmations that ran more than once: {twice}"


def test_a_thousand_transactions_a_third_rolled_back(queue: Queue, start_worker: Any, tmp_path: Path) -> None:
    workers = [start_worker(), start_worker()]
    proc = produce(queue, tmp_path, "1", "1000")
    assert proc.wait(120) == 0, proc.tail()
    assert "done" in proc.stdout()
    expected = {i for i in range(1, 1001) if i % 3}
    assert set(committed(proc)) == expected
    assert queue.orders() == expected
    assert_each_committed_order_ran_once(queue, workers)
    assert len(queue.ran()) == len(expected) == 667


@pytest.mark.slow
def test_the_producer_killed_at_random_points(queue: Queue, start_worker: Any, tmp_path: Path) -> None:
    workers = [start_worker()]
    rng = random.Random(17)
    first = 1
    seen_committed: set[int] = set()
    for round_ in range(5):
        proc = produce(queue, tmp_path, str(first), "400")
        at = rng.randint(5, 200)  # committed transactions before the kill
        wait_for(lambda: len(committed(proc)) >= at or not proc.alive(), 60,
                 what=f"round {round_}: {at} commits", on_fail=proc.tail)
        proc.kill()
        proc.wait(10)
        seen_committed |= set(committed(proc))
        first += 400
    orders = queue.orders()
    assert seen_committed <= orders, "a commit the producer saw was lost"
    assert all(order % 3 for order in orders), "a rolled-back order was saved"
    assert len(orders - seen_committed) <= 5, "more than one commit per kill went unseen"
    assert_each_committed_order_ran_once(queue, workers)


def test_a_process_killed_before_its_commit_leaves_nothing(queue: Queue, producer: Celery, tmp_path: Path) -> None:
    proc = produce(queue, tmp_path, "hold", "5")
    wait_for(lambda: "enqueued" in proc.stdout() or not proc.alive(), 30, what="the message enqueued",
             on_fail=proc.tail)
    assert proc.alive(), proc.tail()
    assert queue.jobs() == 0
    proc.kill()
    proc.wait(10)
    assert queue.jobs() == 0
    assert queue.orders() == set()
    # the killed transaction holds nothing any more: the next publish goes through
    producer.send_task("orders.confirm", (6,))
    assert queue.jobs() == 1
