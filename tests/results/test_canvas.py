"""Celery's canvas on this backend and broker, and the same cases on Redis broker and backend.

Each case asserts one expected outcome for both peers; the last test also compares the outcomes
the two peers recorded. Redis uses db 14 with keys prefixed per run (deleted at the end); it is
skipped, with the reason, when it cannot be reached.

The worker has one pool process (-c 1): a task that waited for another task's result inside the
pool (as Celery's generic chord join does) would wait for ever, and the case would fail at its
deadline instead of passing by luck. Every case waits at most WAIT seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery import chain, chord, group, states
from celery.exceptions import ChordError, TaskRevokedError

import rapp
from tests.support.peers import delete_keys, redis_client
from tests.support.postgres import fresh_database
from tests.support.waiting import wait_for

from .helpers import REDIS_URL, ResultWorker
from queuectl_kombu import JobStore

#: peer -> case -> outcome, for the final comparison.
OUTCOMES: dict[str, dict[str, Any]] = {}
#: The longest any case waits for a result (a deadlocked worker fails the case here).
WAIT = 15


class Peer:
    """A worker and a client app on one broker + backend pair."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        run = uuid.uuid4().hex[:8]
        conf: dict[str, Any] = {"task_default_queue": f"rtest-{run}"}
        self.redis = None
        self.prefix = f"rtest-{run}-"
        self._database = contextlib.ExitStack()
        if name == "sqlite":
            self.path = str(workdir / "queue.db")
            broker = backend = f"sqlite:///{self.path}"
        elif name == "postgresql":
            self.path = broker = backend = self._database.enter_context(fresh_database())
        else:
            self.redis = redis_client(REDIS_URL)
            broker = backend = REDIS_URL
            conf["broker_transport_options"] = {"global_keyprefix": self.prefix}
            conf["result_backend_transport_options"] = {"global_keyprefix": self.prefix}
        self.worker = ResultWorker(workdir, "rapp", broker, backend, conf, concurrency=1)
        self.app = rapp.make_app(broker, backend, conf)
        self.t = self.app.tasks
        self.published = workdir / "published-client.txt"

    def published_names(self) -> list[str]:
        """Every task name published so far, by this test process and by the worker."""
        names: list[str] = []
        for path in (self.published, self.worker.published):
            if path.exists():
                names.extend(path.read_text().split())
        return names

    def runs(self) -> list[str]:
        """The tags of every run the worker logged (rt.logged, rt.reject_first), in order."""
        path = self.worker.execlog
        return [line.split()[2] for line in path.read_text().splitlines()] if path.exists() else []

    def destination(self) -> list[str]:
        """The worker's node name, for remote control."""
        return [self.worker.hostname.replace("%h", socket.gethostname())]

    def record(self, case: str, outcome: Any) -> Any:
        OUTCOMES.setdefault(self.name, {})[case] = outcome
        return outcome

    def close(self) -> None:
        self.worker.stop()
        self._database.close()
        if self.redis is not None:
            delete_keys(self.redis, f"{self.prefix}*")
            self.redis.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "redis"])
def peer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    if request.param == "redis" and redis_client(REDIS_URL) is None:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    p = Peer(request.param, tmp_path_factory.mktemp(request.param))
    rapp.PUBLISHED["path"] = str(p.published)
    try:
        p.worker.wait_ready()
        yield p
    finally:
        rapp.PUBLISHED["path"] = None
        p.close()


def failure(exc: BaseException) -> tuple[str, str]:
    return (type(exc).__name__, str(exc))


def test_chain(peer: Peer) -> None:
    t = peer.t
    result = (t["rt.add"].s(1, 2) | t["rt.add"].s(3) | t["rt.mul"].s(2)).delay()
    assert peer.record("chain", result.get(timeout=WAIT)) == 12
    assert result.parent.get(timeout=WAIT) == 6


def test_group(peer: Peer) -> None:
    result = group(peer.t["rt.add"].s(i, i) for i in range(10)).delay()
    assert peer.record("group", result.get(timeout=WAIT)) == [2 * i for i in range(10)]
    assert result.completed_count() == 10


def test_chord(peer: Peer) -> None:
    result = chord((peer.t["rt.add"].s(i, i) for i in range(10)), peer.t["rt.tsum"].s()).delay()
    assert peer.record("chord", result.get(timeout=WAIT)) == 90


def test_chord_of_chords(peer: Peer) -> None:
    add, tsum = peer.t["rt.add"], peer.t["rt.tsum"]
    inner1 = chord([add.s(1, 1), add.s(2, 2)], tsum.s())
    inner2 = chord([add.s(3, 3), add.s(4, 4)], tsum.s())
    result = chord([inner1, inner2], tsum.s()).delay()
    assert peer.record("chord_of_chords", result.get(timeout=WAIT)) == 20


def test_chain_inside_a_chord_header(peer: Peer) -> None:
    add, mul, tsum = peer.t["rt.add"], peer.t["rt.mul"], peer.t["rt.tsum"]
    result = chord([add.s(1, 1) | mul.s(10), add.s(2, 2) | mul.s(10), add.s(0, 1)], tsum.s()).delay()
    assert peer.record("chain_in_header", result.get(timeout=WAIT)) == 61


def test_chord_in_a_chain(peer: Peer) -> None:
    add, tsum, mul = peer.t["rt.add"], peer.t["rt.tsum"], peer.t["rt.mul"]
    result = chain(add.s(1, 1), chord([add.s(1), add.s(2)], tsum.s()), mul.s(3)).delay()
    assert peer.record("chord_in_chain", result.get(timeout=WAIT)) == 21  # (2+1 + 2+2) * 3


def test_chord_header_failure_fails_the_body(peer: Peer) -> None:
    add, tsum = peer.t["rt.add"], peer.t["rt.tsum"]
    failing = peer.t["rt.fail"].s().set(task_id=f"failing-{uuid.uuid4().hex}")
    result = chord([add.s(1, 1), failing, add.s(2, 2)], tsum.s()).delay()
    # result.get() raises the header's own error (AsyncResult checks its parent group first,
    # with Redis as here); the body itself fails with ChordError.
    wait_for(result.ready, WAIT, what="the chord body to fail")
    with pytest.raises(rapp.AlwaysFails):
        result.get(timeout=WAIT)
    with pytest.raises(ChordError) as caught:
        peer.app.AsyncResult(result.id).get(timeout=WAIT)
    assert str(caught.value) == f"Dependency {failing.id} raised AlwaysFails('always fails')"
    assert result.state == states.FAILURE
    outcome = (failure(caught.value), peer.app.AsyncResult(failing.id).state)
    assert peer.record("chord_error", (outcome[0][0], outcome[1])) == ("ChordError", states.FAILURE)


def test_empty_chord_header(peer: Peer) -> None:
    result = chord([], peer.t["rt.tsum"].s()).delay()
    assert peer.record("empty_chord", result.get(timeout=WAIT)) == 0


def test_map_starmap_chunks(peer: Peer) -> None:
    t = peer.t
    assert peer.record("map", t["rt.echo"].map([1, "two", [3]]).delay().get(timeout=WAIT)) == [1, "two", [3]]
    assert peer.record("starmap", t["rt.add"].starmap([(1, 2), (3, 4)]).delay().get(timeout=WAIT)) == [3, 7]
    chunks = t["rt.add"].chunks(zip(range(10), range(10)), 3).delay()
    assert peer.record("chunks", chunks.get(timeout=WAIT)) == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]


def test_link_and_link_error(peer: Peer) -> None:
    t = peer.t
    callback = t["rt.mul"].s(10).set(task_id=f"cb-{uuid.uuid4().hex}")
    parent = t["rt.add"].apply_async((2, 2), link=callback)
    assert parent.get(timeout=WAIT) == 4
    assert peer.record("link", peer.app.AsyncResult(callback.id).get(timeout=WAIT)) == 40
    errback = t["rt.on_error"].s().set(task_id=f"eb-{uuid.uuid4().hex}")
    failed = t["rt.fail"].apply_async(link_error=errback)
    with pytest.raises(rapp.AlwaysFails):
        failed.get(timeout=WAIT)
    assert peer.app.AsyncResult(errback.id).get(timeout=WAIT) == f"failed:{failed.id}"
    peer.record("link_error", "failed:<id>")


def test_revoke(peer: Peer) -> None:
    result = peer.t["rt.add"].apply_async((1, 1), countdown=60)
    result.revoke()
    with pytest.raises(TaskRevokedError):
        result.get(timeout=WAIT)
    assert peer.record("revoke", result.state) == states.REVOKED


def test_no_chord_unlock_is_ever_published(peer: Peer) -> None:
    add, tsum = peer.t["rt.add"], peer.t["rt.tsum"]
    assert chord([add.s(i, 1) for i in range(5)], tsum.s()).delay().get(timeout=WAIT) == 15
    names = peer.published_names()
    assert "rt.tsum" in names  # the bodies were published (by the workers) ...
    assert "celery.chord_unlock" not in names  # ... and never through chord_unlock
    if peer.name != "redis":
        jobs = JobStore(peer.path).list_jobs()
        task_names = {job.task_name for job in jobs}
        assert "rt.tsum" in task_names
        assert "celery.chord_unlock" not in task_names
        assert "celery.chord_unlock" not in peer.worker.output()


# -- issue 13: what differed from Redis -------------------------------------------------------


def test_a_group_inside_a_chain_inside_a_chord_header(peer: Peer) -> None:
    """The chord's size counts the nested group's tasks; the last part sends the body without
    waiting (it deadlocked a -c 1 worker: the part that came too early joined the others)."""
    add = peer.t["rt.add"]
    result = chain(
        add.si(1, 0),
        group(add.si(1, 100), chain(add.si(1, 200), group(add.si(1, 1000), add.si(1, 2000)))),
        add.si(1, 10),
    )()
    assert peer.record("nested_group_in_header", result.get(timeout=WAIT)) == 11


def test_a_chord_header_of_chains_ending_in_groups(peer: Peer) -> None:
    """What a chord body receives: a nested group's results as a list in its place (a group of
    one task is that task, as Celery builds it)."""
    add, echo = peer.t["rt.add"], peer.t["rt.echo"]
    header = [
        add.si(1, 1),
        chain(add.si(2, 2), group(add.si(3, 3), add.si(4, 4))),
        chain(add.si(5, 5), group(add.si(6, 6))),
    ]
    outcome = peer.record("groups_of_chains", chord(header, echo.s()).delay().get(timeout=WAIT))
    assert outcome == [2, [6, 8], 12]


def test_a_failing_chord_header_task_fails_the_result_promptly(peer: Peer) -> None:
    add = peer.t["rt.add"]
    result = chord([add.s(1, 1), peer.t["rt.fail"].s()], add.s())()
    with pytest.raises(rapp.AlwaysFails):
        result.get(timeout=WAIT)
    with pytest.raises(ChordError):
        peer.app.AsyncResult(result.id).get(timeout=WAIT)
    peer.record("chord_header_fails", "AlwaysFails/ChordError")


def test_replaced_tasks(peer: Peer) -> None:
    t = peer.t
    assert peer.record("replace_chain", t["rt.replaced"].delay("chain", 3).get(timeout=WAIT)) == 8
    assert peer.record("replace_group", t["rt.replaced"].delay("group", 3).get(timeout=WAIT)) == [3, 4]
    in_header = chord([t["rt.replaced"].s("chain", 1), t["rt.add"].s(10, 10)], t["rt.tsum"].s())
    assert peer.record("replace_in_header", in_header.delay().get(timeout=WAIT)) == 24


def test_stamped_headers_reach_the_task(peer: Peer) -> None:
    sig = peer.t["rt.stamps"].s()
    sig.stamp(monitoring_id="m-1")
    assert peer.record("stamps", sig.apply_async().get(timeout=WAIT)) == {"monitoring_id": "m-1"}


def test_retry_with_countdown(peer: Peer) -> None:
    assert peer.record("retry_countdown", peer.t["rt.retry_once"].delay().get(timeout=WAIT)) == 1


def test_an_eta_task_runs_at_its_eta(peer: Peer) -> None:
    from datetime import datetime, timedelta, timezone

    eta = datetime.now(timezone.utc) + timedelta(seconds=1)
    result = peer.t["rt.add"].apply_async((2, 3), eta=eta)
    assert peer.record("eta", result.get(timeout=WAIT)) == 5
    done = result.date_done  # UTC, naive or not
    done = done if done.tzinfo else done.replace(tzinfo=timezone.utc)
    assert done >= eta - timedelta(seconds=0.1)  # not run before its ETA (Celery's timer may round)


def test_an_expired_task_is_revoked(peer: Peer) -> None:
    from datetime import datetime, timedelta, timezone

    result = peer.t["rt.add"].apply_async((1, 1), expires=datetime.now(timezone.utc) - timedelta(seconds=1))
    with pytest.raises(TaskRevokedError):
        result.get(timeout=WAIT)
    assert peer.record("expires", result.state) == states.REVOKED


def test_reject_with_requeue_runs_again_as_redelivered(peer: Peer) -> None:
    """``if not self.request.delivery_info.get('redelivered'): raise Reject(requeue=True)``:
    the second delivery says redelivered, so the task runs once more and succeeds."""
    result = peer.t["rt.reject_first"].delay()
    assert peer.record("reject_requeue", result.get(timeout=WAIT)) == "redelivered"
    assert peer.runs().count("reject_first") == 2


def stop_between_writes(pid: int, path: str) -> None:
    """SIGSTOP a worker's main process at a moment it holds no write transaction (its lease
    keeper writes now and then): the test's publishes must not wait for a stopped writer."""
    deadline = time.monotonic() + WAIT
    while True:
        os.kill(pid, signal.SIGSTOP)
        if path.startswith("postgresql://"):
            with psycopg.connect(path, autocommit=True) as conn:
                busy = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state = 'idle in transaction'").fetchone()[0]
            if not busy:
                return
            os.kill(pid, signal.SIGCONT)
            if time.monotonic() > deadline:
                pytest.fail(f"the worker held a transaction open in {path} for {WAIT} s")
            continue
        probe = sqlite3.connect(path, timeout=0.05, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            os.kill(pid, signal.SIGCONT)  # stopped inside a write: let it finish, stop it again
            if time.monotonic() > deadline:
                pytest.fail(f"the worker held the write lock of {path} for {WAIT} s")
        finally:
            probe.close()


def test_a_revoke_sent_just_before_its_task_is_obeyed(peer: Peer) -> None:
    """Control messages are taken before task messages published after them.

    The worker's main process is stopped (SIGSTOP) while both are published, so that
    it finds them in one look at the file, as a busy worker does: the order is the broker's,
    not the luck of a wake-up between the two publishes."""
    if peer.name == "redis":
        pytest.skip("Redis sends a broadcast on a pub/sub socket and a task through a list: which one the "
                    "worker reads first is a race (the task won once in a full run), so it is not compared")
    stop_between_writes(peer.worker.pid, peer.path)
    try:
        stamp = f"m-{uuid.uuid4().hex}"
        peer.app.control.revoke_by_stamped_headers({"monitoring_id": [stamp]}, destination=peer.destination())
        sig = peer.t["rt.add"].s(1, 2)
        sig.stamp(monitoring_id=stamp)
        by_stamp = sig.apply_async()
        task_id = f"revoked-{uuid.uuid4().hex}"
        peer.app.control.revoke(task_id, destination=peer.destination())
        by_id = peer.t["rt.add"].apply_async((3, 4), task_id=task_id)
    finally:
        os.kill(peer.worker.pid, signal.SIGCONT)
    for result in (by_stamp, by_id):
        with pytest.raises(TaskRevokedError):
            result.get(timeout=WAIT)
    assert peer.record("revoke_before_task", (by_stamp.state, by_id.state)) == (states.REVOKED, states.REVOKED)


def test_inspect_scheduled_lists_a_countdown_task(peer: Peer) -> None:
    """Redis's worker holds the ETA task in memory; queuectl's broker holds it: both list it."""
    result = peer.t["rt.add"].apply_async((5, 6), countdown=60, priority=3)
    inspect = peer.app.control.inspect(destination=peer.destination(), timeout=2)

    def listed() -> dict[str, Any] | None:
        for entries in (inspect.scheduled() or {}).values():
            for entry in entries:
                if entry["request"]["id"] == result.id:
                    return entry
        return None

    entry = wait_for(listed, WAIT, what="the countdown task in inspect scheduled")
    request = entry["request"]
    assert set(entry) == {"eta", "priority", "request"}
    assert set(request) == {"id", "name", "args", "kwargs", "type", "hostname", "time_start",
                            "acknowledged", "delivery_info", "worker_pid"}
    assert (request["name"], request["type"], request["args"], request["kwargs"]) == ("rt.add", "rt.add", [5, 6], {})
    assert request["hostname"] == peer.destination()[0]
    assert request["acknowledged"] is False and request["worker_pid"] is None
    assert request["delivery_info"]["redelivered"] is False
    from datetime import datetime, timezone

    eta = datetime.fromisoformat(entry["eta"])
    assert 30 < (eta - datetime.now(timezone.utc)).total_seconds() <= 61
    peer.record("inspect_scheduled", sorted(request))
    result.revoke()
    with pytest.raises(TaskRevokedError):
        result.get(timeout=WAIT)


def test_a_message_published_twice_runs_twice(peer: Peer) -> None:
    """At least once: both copies of the chain's first task run (as on RabbitMQ or Redis), each
    applies the chord again, and its body still gets every header result."""
    t = peer.t
    first = t["rt.logged"].si("t1", 1)
    body = t["rt.tsum"].s()
    rapp.DUPLICATE.update(task="rt.logged", app=peer.app)
    try:
        result = chain(first, chord([t["rt.logged"].si("t2", 2), t["rt.logged"].si("t3", 3)], body)).delay()
    finally:
        rapp.DUPLICATE["task"] = None
    assert result.get(timeout=WAIT) == 5

    def both_headers_ran_twice() -> list[str] | None:
        runs = peer.runs()
        return runs if runs.count("t2") >= 2 and runs.count("t3") >= 2 else None

    runs = wait_for(both_headers_ran_twice, WAIT, what="each header task to run once per copy of t1")
    assert runs.count("t1") == 2
    peer.record("published_twice", (runs.count("t1"), runs.count("t2"), runs.count("t3")))


def test_postgresql_gave_the_results_sqlite_gave() -> None:
    if not {"sqlite", "postgresql"} <= set(OUTCOMES):
        pytest.skip(f"needs both engines; ran: {sorted(OUTCOMES) or 'none'}")
    assert OUTCOMES["postgresql"] == OUTCOMES["sqlite"]


def test_both_peers_gave_the_same_results() -> None:
    if not {"sqlite", "redis"} <= set(OUTCOMES):
        pytest.skip(f"needs both peers; ran: {sorted(OUTCOMES) or 'none'}")
    assert set(OUTCOMES["sqlite"]) - set(OUTCOMES["redis"]) == {"revoke_before_task"}  # a race on Redis
    assert {case: OUTCOMES["sqlite"][case] for case in OUTCOMES["redis"]} == OUTCOMES["redis"]
    assert len(OUTCOMES["sqlite"]) == 28
