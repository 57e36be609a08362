"""Celery's canvas on this backend and broker, and the same cases on Redis broker and backend.

Each case asserts one expected outcome for both peers; the last test also compares the outcomes
the two peers recorded. Redis uses db 14 with keys prefixed per run (deleted at the end); it is
skipped, with the reason, when it cannot be reached.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import chain, chord, group, states
from celery.exceptions import ChordError, TaskRevokedError

import rapp
from .helpers import REDIS_URL, Worker, delete_redis_prefix, redis_client, wait_until
from queuectl_kombu import JobStore

#: peer -> case -> outcome, for the final comparison.
OUTCOMES: dict[str, dict[str, Any]] = {}


class Peer:
    """A worker and a client app on one broker + backend pair."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        run = uuid.uuid4().hex[:8]
        conf: dict[str, Any] = {"task_default_queue": f"rtest-{run}"}
        self.redis = None
        self.prefix = f"rtest-{run}-"
        if name == "sqlite":
            self.path = str(workdir / "queue.db")
            broker = backend = f"sqlite:///{self.path}"
        else:
            self.redis = redis_client()
            broker = backend = REDIS_URL
            conf["broker_transport_options"] = {"global_keyprefix": self.prefix}
            conf["result_backend_transport_options"] = {"global_keyprefix": self.prefix}
        self.worker = Worker(workdir, "rapp", broker, backend, conf)
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

    def record(self, case: str, outcome: Any) -> Any:
        OUTCOMES.setdefault(self.name, {})[case] = outcome
        return outcome

    def close(self) -> None:
        self.worker.stop()
        if self.redis is not None:
            delete_redis_prefix(self.redis, self.prefix)
            self.redis.close()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def peer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    if request.param == "redis" and redis_client() is None:
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
    assert peer.record("chain", result.get(timeout=30)) == 12
    assert result.parent.get(timeout=30) == 6


def test_group(peer: Peer) -> None:
    result = group(peer.t["rt.add"].s(i, i) for i in range(10)).delay()
    assert peer.record("group", result.get(timeout=30)) == [2 * i for i in range(10)]
    assert result.completed_count() == 10


def test_chord(peer: Peer) -> None:
    result = chord((peer.t["rt.add"].s(i, i) for i in range(10)), peer.t["rt.tsum"].s()).delay()
    assert peer.record("chord", result.get(timeout=30)) == 90


def test_chord_of_chords(peer: Peer) -> None:
    add, tsum = peer.t["rt.add"], peer.t["rt.tsum"]
    inner1 = chord([add.s(1, 1), add.s(2, 2)], tsum.s())
    inner2 = chord([add.s(3, 3), add.s(4, 4)], tsum.s())
    result = chord([inner1, inner2], tsum.s()).delay()
    assert peer.record("chord_of_chords", result.get(timeout=30)) == 20


def test_chain_inside_a_chord_header(peer: Peer) -> None:
    add, mul, tsum = peer.t["rt.add"], peer.t["rt.mul"], peer.t["rt.tsum"]
    result = chord([add.s(1, 1) | mul.s(10), add.s(2, 2) | mul.s(10), add.s(0, 1)], tsum.s()).delay()
    assert peer.record("chain_in_header", result.get(timeout=30)) == 61


def test_chord_in_a_chain(peer: Peer) -> None:
    add, tsum, mul = peer.t["rt.add"], peer.t["rt.tsum"], peer.t["rt.mul"]
    result = chain(add.s(1, 1), chord([add.s(1), add.s(2)], tsum.s()), mul.s(3)).delay()
    assert peer.record("chord_in_chain", result.get(timeout=30)) == 21  # (2+1 + 2+2) * 3


def test_chord_header_failure_fails_the_body(peer: Peer) -> None:
    add, tsum = peer.t["rt.add"], peer.t["rt.tsum"]
    failing = peer.t["rt.fail"].s().set(task_id=f"failing-{uuid.uuid4().hex}")
    result = chord([add.s(1, 1), failing, add.s(2, 2)], tsum.s()).delay()
    # result.get() raises the header's own error (AsyncResult checks its parent group first,
    # with Redis as here); the body itself fails with ChordError.
    wait_until(result.ready, 30, "the chord body to fail")
    with pytest.raises(rapp.AlwaysFails):
        result.get(timeout=30)
    with pytest.raises(ChordError) as caught:
        peer.app.AsyncResult(result.id).get(timeout=30)
    assert str(caught.value) == f"Dependency {failing.id} raised AlwaysFails('always fails')"
    assert result.state == states.FAILURE
    outcome = (failure(caught.value), peer.app.AsyncResult(failing.id).state)
    assert peer.record("chord_error", (outcome[0][0], outcome[1])) == ("ChordError", states.FAILURE)


def test_empty_chord_header(peer: Peer) -> None:
    result = chord([], peer.t["rt.tsum"].s()).delay()
    assert peer.record("empty_chord", result.get(timeout=30)) == 0


def test_map_starmap_chunks(peer: Peer) -> None:
    t = peer.t
    assert peer.record("map", t["rt.echo"].map([1, "two", [3]]).delay().get(timeout=30)) == [1, "two", [3]]
    assert peer.record("starmap", t["rt.add"].starmap([(1, 2), (3, 4)]).delay().get(timeout=30)) == [3, 7]
    chunks = t["rt.add"].chunks(zip(range(10), range(10)), 3).delay()
    assert peer.record("chunks", chunks.get(timeout=30)) == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]


def test_link_and_link_error(peer: Peer) -> None:
    t = peer.t
    callback = t["rt.mul"].s(10).set(task_id=f"cb-{uuid.uuid4().hex}")
    parent = t["rt.add"].apply_async((2, 2), link=callback)
    assert parent.get(timeout=30) == 4
    assert peer.record("link", peer.app.AsyncResult(callback.id).get(timeout=30)) == 40
    errback = t["rt.on_error"].s().set(task_id=f"eb-{uuid.uuid4().hex}")
    failed = t["rt.fail"].apply_async(link_error=errback)
    with pytest.raises(rapp.AlwaysFails):
        failed.get(timeout=30)
    assert peer.app.AsyncResult(errback.id).get(timeout=30) == f"failed:{failed.id}"
    peer.record("link_error", "failed:<id>")


def test_revoke(peer: Peer) -> None:
    result = peer.t["rt.add"].apply_async((1, 1), countdown=60)
    result.revoke()
    with pytest.raises(TaskRevokedError):
        result.get(timeout=30)
    assert peer.record("revoke", result.state) == states.REVOKED


def test_no_chord_unlock_is_ever_published(peer: Peer) -> None:
    add, tsum = peer.t["rt.add"], peer.t["rt.tsum"]
    assert chord([add.s(i, 1) for i in range(5)], tsum.s()).delay().get(timeout=30) == 15
    names = peer.published_names()
    assert "rt.tsum" in names  # the bodies were published (by the workers) ...
    assert "celery.chord_unlock" not in names  # ... and never through chord_unlock
    if peer.name == "sqlite":
        jobs = JobStore(peer.path).list_jobs()
        task_names = {job.task_name for job in jobs}
        assert "rt.tsum" in task_names
        assert "celery.chord_unlock" not in task_names
        assert "celery.chord_unlock" not in peer.worker.log()


def test_both_peers_gave_the_same_results() -> None:
    if set(OUTCOMES) != {"sqlite", "redis"}:
        pytest.skip(f"needs both peers; ran: {sorted(OUTCOMES) or 'none'}")
    assert OUTCOMES["sqlite"] == OUTCOMES["redis"]
    assert len(OUTCOMES["sqlite"]) == 14
