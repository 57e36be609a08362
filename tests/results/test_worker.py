"""A real prefork worker with broker and results in one SQLite file: states, fields, forget, waits.

One worker serves the module (``task_track_started`` and ``result_extended`` on); every test uses
its own task ids and gate files, so the tests stay independent.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import group, states
from celery.exceptions import TaskRevokedError, TimeoutError

import rapp
from tests.support.waiting import wait_for

from .helpers import ResultWorker
from tests.conftest import ENGINES
from tests.support.postgres import fresh_database, url_of
from queuectl_kombu import JobStore
from queuectl_kombu.results import ResultStore


class Env:
    """The module's worker, its database file and a client app."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.workdir = workdir
        self.path = target
        url = url_of(target)
        # SQLite: "sqlite://" names the broker's file; PostgreSQL: the same URL for both
        backend = "sqlite://" if url.startswith("sqlite:") else url
        self.worker = ResultWorker(workdir, "rapp", url, backend,
                             {"task_track_started": True, "result_extended": True})
        self.app = rapp.make_app(url, backend)
        self.tasks = self.app.tasks

    def gate(self) -> Path:
        return self.workdir / f"gate-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module", params=ENGINES)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """The module's worker on each engine in turn."""
    workdir = tmp_path_factory.mktemp("worker")
    with contextlib.ExitStack() as stack:
        target = str(workdir / "queue.db") if request.param == "sqlite" else stack.enter_context(fresh_database())
        env = Env(workdir, target)
        try:
            env.worker.wait_ready()
            yield env
        finally:
            env.worker.stop()


def state_is(result: Any, state: str) -> bool:
    result.backend._cache.pop(result.id, None)
    return result.state == state


def test_success_with_date_done_and_extended_fields(env: Env) -> None:
    before = datetime.now(timezone.utc)
    result = env.tasks["rt.add"].apply_async((2,), {"y": 3})
    assert result.get(timeout=30) == 5
    assert result.state == states.SUCCESS
    assert before <= result.date_done <= datetime.now(timezone.utc)
    assert result.name == "rt.add"
    assert result.args == [2]
    assert result.kwargs == {"y": 3}
    assert result.worker == env.worker.hostname.replace("%h", socket.gethostname())
    assert result.retries == 0
    assert result.queue == "celery"


def test_failure_with_traceback(env: Env) -> None:
    result = env.tasks["rt.fail"].delay("x")
    with pytest.raises(rapp.AlwaysFails, match="always fails"):
        result.get(timeout=30)
    assert result.state == states.FAILURE
    assert isinstance(result.result, rapp.AlwaysFails)
    assert "Traceback (most recent call last)" in result.traceback
    assert "AlwaysFails: always fails" in result.traceback
    assert result.date_done is not None
    assert result.args == ["x"]


def test_started_and_custom_states(env: Env) -> None:
    gate1, gate2 = env.gate(), env.gate()
    started = env.tasks["rt.gated"].delay(str(gate1), "g")
    progress = env.tasks["rt.progress"].delay(str(gate2))
    wait_for(lambda: state_is(started, states.STARTED), 30, what="STARTED")
    assert started.date_done is None
    wait_for(lambda: state_is(progress, "PROGRESS"), 30, what="PROGRESS")
    assert progress.info == {"done": 1}
    gate1.touch()
    gate2.touch()
    assert started.get(timeout=30) == "g"
    assert progress.get(timeout=30) == "progressed"


def test_retry_state(env: Env) -> None:
    gate = env.gate()
    result = env.tasks["rt.retry_gated"].delay(str(gate))
    wait_for(lambda: state_is(result, states.RETRY), 30, what="RETRY")
    assert isinstance(result.info, rapp.AlwaysFails)
    gate.touch()
    assert result.get(timeout=30) == 1
    assert result.retries == 1


def test_revoked_state(env: Env) -> None:
    result = env.tasks["rt.add"].apply_async((1, 1), countdown=60)
    result.revoke()
    with pytest.raises(TaskRevokedError):
        result.get(timeout=30)
    assert result.state == states.REVOKED


def test_children(env: Env) -> None:
    result = env.tasks["rt.spawn"].delay(3)
    assert result.get(timeout=30) == 3
    assert len(result.children) == 3
    assert [child.get(timeout=30) for child in result.children] == [0, 2, 4]


def test_forget(env: Env) -> None:
    result = env.tasks["rt.add"].delay(20, 22)
    assert result.get(timeout=30) == 42
    key = result.backend.get_key_for_task(result.id)
    assert ResultStore(env.path).get(key) is not None
    result.forget()
    assert ResultStore(env.path).get(key) is None
    assert env.app.AsyncResult(result.id).state == states.PENDING


def test_ignored_result_is_not_stored(env: Env) -> None:
    result = env.tasks["rt.ignored"].delay()
    marker = env.tasks["rt.add"].delay(0, 0)  # same queue, sent after: done after the ignored one
    assert marker.get(timeout=30) == 0
    wait_for(lambda: JobStore(env.path).jobs_for_task(result.id), 30, what="the ignored task's job")
    assert env.app.AsyncResult(result.id).state == states.PENDING


def _open_gate_when_waiting(backend: Any, gate: Path, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Open `gate` once this process blocks in a wait; returns how each wait ended."""
    store = backend.store
    real = store.wait_for_change
    ends: list[bool] = []

    def wait(stamp: int, timeout: float | None = None) -> bool:
        if not gate.exists():
            threading.Timer(0.05, gate.touch).start()  # once we are surely inside the wait
        woke = real(stamp, timeout)
        ends.append(woke)
        return woke

    monkeypatch.setattr(store, "wait_for_change", wait)
    return ends


def test_get_wakes_on_the_commit_not_on_an_interval(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = env.gate()
    result = env.tasks["rt.gated"].delay(str(gate), "woken")
    wait_for(lambda: state_is(result, states.STARTED), 30, what="STARTED")
    ends = _open_gate_when_waiting(env.app.backend, gate, monkeypatch)
    # With Celery's polling wait, interval=3600 would sleep until the timeout and raise.
    assert result.get(timeout=30, interval=3600) == "woken"
    assert ends and all(ends)


def test_join_and_join_native(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    add = env.tasks["rt.add"]
    first = group(add.s(i, i) for i in range(20)).delay()
    assert first.join(timeout=30, interval=3600) == [2 * i for i in range(20)]
    second = group(add.s(i, 1) for i in range(20)).delay()
    assert second.join_native(timeout=30, interval=3600) == [i + 1 for i in range(20)]
    gate = env.gate()
    third = group([add.s(1, 2), env.tasks["rt.gated"].s(str(gate), 7)]).delay()
    wait_for(lambda: state_is(third.results[1], states.STARTED), 30, what="STARTED")
    ends = _open_gate_when_waiting(env.app.backend, gate, monkeypatch)
    assert third.join_native(timeout=30, interval=3600) == [3, 7]
    assert ends and all(ends)
    assert third.get(timeout=30) == [3, 7]


def test_get_timeout(env: Env) -> None:
    gate = env.gate()
    result = env.tasks["rt.gated"].delay(str(gate), "late")
    pending = group([env.tasks["rt.add"].s(1, 1), env.tasks["rt.gated"].s(str(gate), 2)]).delay()
    with pytest.raises(TimeoutError):
        result.get(timeout=0.3)
    with pytest.raises(TimeoutError):
        pending.join_native(timeout=0.3)
    with pytest.raises(TimeoutError):
        pending.join(timeout=0.3)
    gate.touch()
    assert result.get(timeout=30) == "late"
    assert pending.get(timeout=30) == [2, 2]


def test_results_share_the_broker_file(env: Env) -> None:
    result = env.tasks["rt.add"].delay(5, 5)
    assert result.get(timeout=30) == 10
    assert env.app.backend.path == env.path
    jobs = JobStore(env.path).jobs_for_task(result.id)
    assert [job.task_name for job in jobs] == ["rt.add"]
    assert ResultStore(env.path).get(env.app.backend.get_key_for_task(result.id)) is not None


def test_locked_database_delays_the_result_not_fails_it(env: Env) -> None:
    if env.path.startswith("postgresql://"):
        pytest.skip("SQLite's file-wide write lock; PostgreSQL locks rows")
    gate = env.gate()
    result = env.tasks["rt.gated"].delay(str(gate), "after the lock")
    wait_for(lambda: state_is(result, states.STARTED), 30, what="STARTED")
    holder = ResultStore(env.path)
    with holder.db.write():  # BEGIN IMMEDIATE: the worker's result store and ack must wait
        gate.touch()
        wait_for(Path(f"{gate}.passed").exists, 30, what="the task to return")
        # For half a second the result cannot land: the worker is waiting for the lock.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert state_is(result, states.STARTED)
            time.sleep(0.05)
    holder.close()
    assert result.get(timeout=30) == "after the lock"
    assert result.state == states.SUCCESS
    assert "database is locked" not in env.worker.output()
