"""SQLiteBackend in this process (and forked ones): URLs, the entry point, groups, the SUCCESS rule,
expiry, locked databases, fork safety and waits that end on a commit rather than on a poll."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, states
from celery.beat import Scheduler
from celery.exceptions import ImproperlyConfigured, TimeoutError
from celery.result import AsyncResult, GroupResult

from queuectl_kombu.backend import SQLiteBackend, path_from_url
from queuectl_kombu.exceptions import DatabaseUnusable
from queuectl_kombu.results import ResultStore

FORK = multiprocessing.get_context("fork")


def make_app(db: str, **conf: Any) -> Celery:
    app = Celery("t", broker=f"sqlite:///{db}", backend=f"sqlite:///{db}", set_as_current=False)
    app.conf.update(conf)
    return app


@pytest.fixture
def app(db_path: str) -> Celery:
    return make_app(db_path)


@pytest.fixture
def backend(app: Celery) -> SQLiteBackend:
    backend = app.backend
    assert isinstance(backend, SQLiteBackend)
    return backend


# -- URLs and the entry point ------------------------------------------------------------------


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert path_from_url("sqlite:///rel.db") == str(tmp_path / "rel.db")
    assert path_from_url("sqlite:///sub/rel.db") == str(tmp_path / "sub" / "rel.db")
    assert path_from_url("sqlite:////abs/path.db") == "/abs/path.db"
    # No path: the broker's file, whichever way the broker names it.
    assert path_from_url("sqlite://", "sqlite:////var/q.db") == "/var/q.db"
    assert path_from_url(None, "sqlite:///q.db") == str(tmp_path / "q.db")
    with pytest.raises(ImproperlyConfigured, match="broker is not a sqlite:// file"):
        path_from_url("sqlite://", "redis://localhost/0")
    with pytest.raises(ImproperlyConfigured, match="no query string"):
        path_from_url("sqlite:///q.db?synchronous=FULL")


def test_backend_defaults_to_the_broker_file(db_path: str) -> None:
    app = Celery("t", broker=f"sqlite:///{db_path}", backend="sqlite://", set_as_current=False)
    assert app.backend.path == db_path
    assert app.backend.as_uri() == f"sqlite:///{db_path}"


def test_entry_point_works_with_nothing_imported(tmp_path: Path) -> None:
    script = """
import json, sys
from celery import Celery
app = Celery("x", broker="memory://", backend="sqlite:///results.db")
before = "queuectl_kombu" in sys.modules
backend = app.backend
backend.store_result("tid", {"answer": 42}, "SUCCESS")
print(json.dumps({
    "imported_before": before,
    "cls": type(backend).__module__ + ":" + type(backend).__name__,
    "path": backend.path,
    "meta": app.AsyncResult("tid").get(timeout=5),
}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True
    )
    report = json.loads(out.stdout)
    assert report == {
        "imported_before": False,
        "cls": "queuectl_kombu.backend:SQLiteBackend",
        "path": str(tmp_path / "results.db"),
        "meta": {"answer": 42},
    }


def test_backend_survives_pickling(backend: SQLiteBackend) -> None:
    import pickle

    copy = pickle.loads(pickle.dumps(backend))
    assert isinstance(copy, SQLiteBackend)
    assert copy.path == backend.path


# -- results and groups -------------------------------------------------------------------------


def test_pickle_and_compressed_results_round_trip(db_path: str) -> None:
    app = make_app(db_path, result_serializer="pickle", accept_content=["pickle", "json"],
                   result_accept_content=["pickle"], result_compression="zlib")
    app.backend.store_result("p", {"set": {1, 2}, "bytes": b"\x00\xff"}, states.SUCCESS)
    assert app.AsyncResult("p").get(timeout=5) == {"set": {1, 2}, "bytes": b"\x00\xff"}


def test_group_save_restore_delete(app: Celery, backend: SQLiteBackend) -> None:
    inner = GroupResult("inner", [AsyncResult("c", app=app), AsyncResult("d", app=app)], app=app)
    saved = GroupResult("g1", [AsyncResult("a", app=app), AsyncResult("b", app=app), inner], app=app)
    saved.save(backend=backend)
    restored = GroupResult.restore("g1", app=app, backend=backend)
    assert restored is not None
    assert restored.as_tuple() == saved.as_tuple()
    # Saving a group again replaces it (a frozen chord applied twice reuses its group id).
    GroupResult("g1", [AsyncResult("z", app=app)], app=app).save(backend=backend)
    assert [r.id for r in GroupResult.restore("g1", app=app, backend=backend).results] == ["z"]
    restored.delete(backend=backend)
    assert GroupResult.restore("g1", app=app, backend=backend) is None


def test_success_is_kept_against_later_states(app: Celery, backend: SQLiteBackend) -> None:
    backend.mark_as_started("t")
    backend.mark_as_done("t", "first")
    backend.mark_as_started("t")
    backend.mark_as_retry("t", ValueError("again"))
    backend.mark_as_failure("t", ValueError("late failure"))
    backend.mark_as_done("t", "second")
    meta = backend.get_task_meta("t", cache=False)
    assert (meta["status"], meta["result"]) == (states.SUCCESS, "first")


def _race_writer(db: str, index: int, writers: int, tasks: int, start: Any) -> None:
    backend = make_app(db).backend
    start.wait(30)
    for j in range(tasks):
        tid = f"race-{j}"
        backend.mark_as_started(tid)
        if j % writers == index:
            backend.mark_as_done(tid, index)
        else:
            backend.mark_as_failure(tid, ValueError(f"copy {index}"))
    os._exit(0)


def test_success_is_kept_when_processes_race(db_path: str, backend: SQLiteBackend) -> None:
    """One writer per task stores SUCCESS, the others STARTED and FAILURE, all at once."""
    backend.store.open()
    writers, tasks = 4, 120
    start = FORK.Event()
    procs = [FORK.Process(target=_race_writer, args=(db_path, i, writers, tasks, start)) for i in range(writers)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * writers
    metas = {j: backend.get_task_meta(f"race-{j}", cache=False) for j in range(tasks)}
    assert {j: (m["status"], m["result"]) for j, m in metas.items()} == {
        j: (states.SUCCESS, j % writers) for j in range(tasks)
    }


def test_task_result_fields(app: Celery, backend: SQLiteBackend) -> None:
    try:
        raise KeyError("boom")
    except KeyError as exc:
        backend.mark_as_failure("f", exc, traceback="Traceback (most recent call last):\n  boom")
    result = app.AsyncResult("f")
    assert result.state == states.FAILURE
    assert isinstance(result.result, KeyError)
    assert "boom" in result.traceback
    assert result.date_done is not None
    backend.forget("f")
    assert app.AsyncResult("f").state == states.PENDING


# -- expiry -------------------------------------------------------------------------------------


def test_results_expire_without_beat(db_path: str, clock: Any) -> None:
    app = make_app(db_path, result_expires=10, result_failure_expires=100)
    backend = app.backend
    backend._store = ResultStore(db_path, clock=clock, purge_interval=3600)
    backend.mark_as_done("ok", 1)
    backend.mark_as_failure("bad", ValueError("kept longer"))
    GroupResult("g", [AsyncResult("ok", app=app)], app=app).save(backend=backend)
    clock.advance(11)
    assert backend.get_task_meta("ok", cache=False)["status"] == states.PENDING
    assert backend.restore_group("g", cache=False) is None
    assert backend.get_task_meta("bad", cache=False)["status"] == states.FAILURE
    assert backend.store.count() == 3
    backend.cleanup()
    assert backend.store.count() == 1
    clock.advance(100)
    backend.mark_as_done("new", 2)  # a write purges (the first one of a store always does)
    backend.cleanup()
    assert backend.store.count() == 1
    assert backend.get_task_meta("new", cache=False)["result"] == 2


def test_beat_would_not_schedule_a_cleanup(app: Celery) -> None:
    assert app.backend.supports_autoexpire
    entries: dict[str, Any] = {}
    Scheduler(app, lazy=True).install_default_entries(entries)
    assert "celery.backend_cleanup" not in entries


# -- locked databases -----------------------------------------------------------------------------


def _locked_error(path: Path) -> sqlite3.OperationalError:
    """A real 'database is locked' from SQLite (its error code, not its text, is what counts)."""
    holder, other = sqlite3.connect(path, isolation_level=None), sqlite3.connect(path, timeout=0)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as caught:
            other.execute("BEGIN IMMEDIATE")
        return caught.value
    finally:
        holder.close()
        other.close()


def test_only_a_locked_database_is_safe_to_retry(backend: SQLiteBackend, tmp_path: Path) -> None:
    locked = _locked_error(tmp_path / "locked.db")
    try:
        raise DatabaseUnusable("cannot open database x: database is locked") from locked
    except DatabaseUnusable as exc:
        wrapped = exc
    assert backend.exception_safe_to_retry(locked)
    assert backend.exception_safe_to_retry(wrapped)
    assert not backend.exception_safe_to_retry(sqlite3.OperationalError("no such table: results"))
    assert not backend.exception_safe_to_retry(ValueError("database is locked"))
    assert not backend.exception_safe_to_retry(sqlite3.OperationalError("database is locked"))  # text alone


def test_a_locked_database_is_retried_not_failed(
    backend: SQLiteBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    store = backend.store
    locked = _locked_error(tmp_path / "locked.db")
    real = store.store_task_result
    calls: list[str] = []

    def flaky(*args: Any, **kwargs: Any) -> bool:
        calls.append(args[2])
        if len(calls) <= 2:
            raise locked
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "store_task_result", flaky)
    backend.mark_as_done("t", "stored at last")
    assert calls == [states.SUCCESS] * 3
    assert backend.get_task_meta("t", cache=False)["result"] == "stored at last"
    monkeypatch.setattr(store, "store_task_result", lambda *a, **k: (_ for _ in ()).throw(
        sqlite3.OperationalError("no such table: results")))
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        backend.mark_as_done("u", 1)


def test_a_held_write_lock_delays_a_store(db_path: str, backend: SQLiteBackend) -> None:
    holder = ResultStore(db_path)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.db.write():  # BEGIN IMMEDIATE: every other writer waits
            locked.set()
            release.wait(30)
        holder.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(10)
    done = threading.Event()
    writer = threading.Thread(target=lambda: (backend.mark_as_done("t", "late"), done.set()))
    writer.start()
    assert not done.wait(0.3)  # blocked behind the lock, not failed
    release.set()
    assert done.wait(30)
    thread.join(10)
    writer.join(10)
    assert backend.get_task_meta("t", cache=False)["result"] == "late"


def test_concurrent_first_use_of_a_new_file(tmp_path: Path) -> None:
    backend = make_app(str(tmp_path / "fresh.db")).backend
    errors: list[BaseException] = []

    def store(i: int) -> None:
        try:
            backend.mark_as_done(f"t{i}", i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=store, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert [backend.get_task_meta(f"t{i}", cache=False)["result"] for i in range(8)] == list(range(8))


# -- fork ---------------------------------------------------------------------------------------


def _forked_parts(backend: SQLiteBackend, index: int, parts: int) -> None:
    for j in range(parts):
        backend.mark_as_done(f"child-{index}-{j}", j)
        backend.incr("counter")
    # A wait in the child uses its own descriptor and connection, not the parent's.
    meta = backend.wait_for(f"child-{index}-0", timeout=10)
    os._exit(0 if meta["result"] == 0 else 3)


def test_backend_used_before_fork_works_in_children(backend: SQLiteBackend) -> None:
    backend.mark_as_done("parent", "before")
    backend.wait_for("parent", timeout=5)  # the parent has a connection and a change waiter
    children, parts = 4, 30
    procs = [FORK.Process(target=_forked_parts, args=(backend, i, parts)) for i in range(children)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * children
    assert backend.incr("counter") == children * parts + 1
    ids = [f"child-{i}-{j}" for i in range(children) for j in range(parts)]
    got = dict(backend.get_many(ids, timeout=5))
    assert {k: v["result"] for k, v in got.items()} == {f"child-{i}-{j}": j for i in range(children) for j in range(parts)}
    backend.mark_as_done("parent-after", "after")
    assert backend.get_task_meta("parent-after", cache=False)["result"] == "after"


# -- waiting ------------------------------------------------------------------------------------


def _store_when_told(db: str, go: Any) -> None:
    go.wait(30)
    make_app(db).backend.mark_as_done("late", "from another process")
    os._exit(0)


def test_get_wakes_on_a_commit_from_another_process(
    db_path: str, app: Celery, backend: SQLiteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """get(interval=3600) returns the result: the wait ends on the commit, not on an interval."""
    go = FORK.Event()
    wakes: list[bool] = []
    real_wait = backend.store.wait_for_change

    def wait_then_tell(stamp: int, timeout: float | None = None) -> bool:
        go.set()  # the writer stores only once this process is about to block
        woke = real_wait(stamp, timeout)
        wakes.append(woke)
        return woke

    monkeypatch.setattr(backend.store, "wait_for_change", wait_then_tell)
    backend.store.open()
    writer = FORK.Process(target=_store_when_told, args=(db_path, go))
    writer.start()
    try:
        assert app.AsyncResult("late").get(timeout=30, interval=3600) == "from another process"
    finally:
        writer.join(30)
    assert wakes and all(wakes)  # every wait ended because someone committed


def test_get_timeout_raises_celery_timeout_error(app: Celery) -> None:
    with pytest.raises(TimeoutError):
        app.AsyncResult("never").get(timeout=0.2)
    with pytest.raises(TimeoutError):
        app.AsyncResult("never").get(timeout=0)
    group = GroupResult("gnever", [AsyncResult("never", app=app), AsyncResult("never2", app=app)], app=app)
    with pytest.raises(TimeoutError):
        group.join_native(timeout=0.2)
    with pytest.raises(TimeoutError):
        group.join(timeout=0.2)


def test_a_bounded_look_does_not_wait(backend: SQLiteBackend) -> None:
    backend.mark_as_done("here", 1)
    got: list[Any] = []
    look = threading.Thread(target=lambda: got.extend(backend.get_many(["here", "never"], max_iterations=1)))
    look.start()
    look.join(5)
    assert not look.is_alive()
    assert [(task_id, meta["result"]) for task_id, meta in got] == [("here", 1)]


def test_join_native_reads_ready_results_in_one_pass(app: Celery, backend: SQLiteBackend) -> None:
    for i in range(50):
        backend.mark_as_done(f"j{i}", i)
    group = GroupResult("gj", [AsyncResult(f"j{i}", app=app) for i in range(50)], app=app)
    assert group.join_native(timeout=5) == list(range(50))
    assert group.join(timeout=5) == list(range(50))


# -- chords, counted in the database -----------------------------------------------------------


def _published(db: str, task_name: str) -> list[list[Any]]:
    """The positional arguments of every message of `task_name` in the broker's jobs table."""
    import base64

    from queuectl_kombu import JobStore

    found = []
    for job in JobStore(db).list_jobs():
        if job.task_name == task_name:
            body = json.loads(job.payload)["body"]
            found.append(json.loads(base64.b64decode(body))[0])
    return found


def _part(app: Celery, backend: SQLiteBackend, task_id: str, gid: str, body: Any, size: int,
          value: Any = None, fail: bool = False) -> None:
    from celery.app.task import Context

    request = Context(id=task_id, group=gid, chord=dict(body, chord_size=size), delivery_info={})
    if fail:
        backend.mark_as_failure(task_id, ValueError(f"{task_id} failed"), request=request)
    else:
        backend.mark_as_done(task_id, value, request=request)


def test_chord_parts_are_counted_and_the_body_published_once(db_path: str, app: Celery,
                                                             backend: SQLiteBackend) -> None:
    body = app.signature("rt.count").set(task_id="body")
    ids = [f"part-{i}" for i in range(5)]
    backend.apply_chord(("g", [AsyncResult(i, app=app) for i in ids]), body)
    for i, task_id in enumerate(ids[:-1]):
        _part(app, backend, task_id, "g", body, len(ids), value=i * 10)
        assert _published(db_path, "rt.count") == []
    _part(app, backend, ids[-1], "g", body, len(ids), value=40)
    assert _published(db_path, "rt.count") == [[[0, 10, 20, 30, 40]]]
    assert _published(db_path, "celery.chord_unlock") == []
    # The chord's bookkeeping is gone; the header results stay for result_expires.
    assert backend.get(backend.get_key_for_chord("g")) is None
    assert backend.restore_group("g", cache=False) is None
    assert backend.get_task_meta("part-0", cache=False)["result"] == 0


def test_chord_whose_group_is_gone_fails_the_body(app: Celery, backend: SQLiteBackend) -> None:
    body = app.signature("rt.count").set(task_id="body2")
    ids = ["a", "b"]
    backend.apply_chord(("g2", [AsyncResult(i, app=app) for i in ids]), body)
    _part(app, backend, "a", "g2", body, 2, value=1)  # this process has now read the group once
    backend.delete_group("g2")
    _part(app, backend, "b", "g2", body, 2, value=2)
    meta = backend.get_task_meta("body2", cache=False)
    assert meta["status"] == states.FAILURE
    assert str(meta["result"]) == "GroupResult g2 no longer exists"


def test_chord_with_a_failed_part_names_it(db_path: str, app: Celery, backend: SQLiteBackend) -> None:
    body = app.signature("rt.count").set(task_id="body3")
    ids = ["ok", "bad", "ok2"]
    backend.apply_chord(("g3", [AsyncResult(i, app=app) for i in ids]), body)
    _part(app, backend, "ok", "g3", body, 3, value=1)
    _part(app, backend, "bad", "g3", body, 3, fail=True)
    _part(app, backend, "ok2", "g3", body, 3, value=3)
    meta = backend.get_task_meta("body3", cache=False)
    assert meta["status"] == states.FAILURE
    assert str(meta["result"]) == "Dependency bad raised ValueError('bad failed')"
    assert _published(db_path, "rt.count") == []


def test_a_chord_part_run_twice_counts_once(db_path: str, app: Celery, backend: SQLiteBackend) -> None:
    """A header task delivered again (its worker died before the ack) neither counts twice
    nor fails the finished chord."""
    body = app.signature("rt.count").set(task_id="body4")
    ids = ["x", "y", "z"]
    backend.apply_chord(("g4", [AsyncResult(i, app=app) for i in ids]), body)
    _part(app, backend, "x", "g4", body, 3, value=1)
    _part(app, backend, "x", "g4", body, 3, value=1)  # the copy: not a second part
    _part(app, backend, "y", "g4", body, 3, value=2)
    assert _published(db_path, "rt.count") == []
    _part(app, backend, "z", "g4", body, 3, value=3)
    assert _published(db_path, "rt.count") == [[[1, 2, 3]]]
    _part(app, backend, "z", "g4", body, 3, value=3)  # a late copy, after the body was sent
    assert _published(db_path, "rt.count") == [[[1, 2, 3]]]
    assert backend.get_task_meta("body4", cache=False)["status"] == states.PENDING  # not failed
    # The same frozen chord applied again is a new run, counted from zero (its tasks keep
    # the ids, and so the SUCCESS results, of the first run).
    backend.apply_chord(("g4", [AsyncResult(i, app=app) for i in ids]), body)
    for i, task_id in enumerate(ids[:-1]):
        _part(app, backend, task_id, "g4", body, 3, value=i + 1)
    assert len(_published(db_path, "rt.count")) == 1
    _part(app, backend, "z", "g4", body, 3, value=3)
    assert _published(db_path, "rt.count") == [[[1, 2, 3]], [[1, 2, 3]]]


def _counted(app: Celery, backend: SQLiteBackend, task_id: str, gid: str, body: Any, index: int,
             value: Any) -> None:
    """A header part as Celery reports it: the size is not in the request (set_chord_size gave it)."""
    from celery.app.task import Context

    request = Context(id=task_id, group=gid, group_index=index, chord=dict(body), delivery_info={})
    backend.mark_as_done(task_id, value, request=request)


def test_a_chord_with_a_nested_group_waits_for_the_size_celery_gave(db_path: str, app: Celery,
                                                                    backend: SQLiteBackend) -> None:
    """Two header entries, three parts: the body is sent by the third, with the nested group's
    values as a list, and no part ever waits for a result."""
    body = app.signature("rt.count").set(task_id="body5")
    inner = GroupResult("inner5", [AsyncResult("b", app=app), AsyncResult("c", app=app)], app=app)
    backend.apply_chord(("g5", [AsyncResult("a", app=app), inner]), body)
    backend.set_chord_size("g5", 3)
    _counted(app, backend, "a", "g5", body, 0, 1)
    _counted(app, backend, "b", "g5", body, 1, 2)  # two entries counted: not complete yet
    assert _published(db_path, "rt.count") == []
    _counted(app, backend, "c", "g5", body, 1, 3)
    assert _published(db_path, "rt.count") == [[[1, [2, 3]]]]


def test_add_to_chord_waits_for_one_more_part(db_path: str, app: Celery, backend: SQLiteBackend) -> None:
    body = app.signature("rt.count").set(task_id="body6")
    backend.apply_chord(("g6", [AsyncResult("a", app=app), AsyncResult("b", app=app)]), body)
    backend.set_chord_size("g6", 1)
    backend.add_to_chord("g6", AsyncResult("b", app=app))
    _counted(app, backend, "a", "g6", body, 0, 1)
    assert _published(db_path, "rt.count") == []
    _counted(app, backend, "b", "g6", body, 0, 2)
    assert _published(db_path, "rt.count") == [[[1, 2]]]


def test_a_forgotten_part_fails_the_chord_at_once(db_path: str, app: Celery, backend: SQLiteBackend) -> None:
    """Every part counted but one result gone: the body fails now (Celery's join would wait
    result_chord_join_timeout inside the task, then fail it)."""
    body = app.signature("rt.count").set(task_id="body7")
    backend.apply_chord(("g7", [AsyncResult("a", app=app), AsyncResult("b", app=app)]), body)
    backend.set_chord_size("g7", 2)
    _counted(app, backend, "a", "g7", body, 0, 1)
    backend.forget("a")
    _counted(app, backend, "b", "g7", body, 1, 2)
    meta = backend.get_task_meta("body7", cache=False)
    assert meta["status"] == states.FAILURE
    assert str(meta["result"]) == "Dependency a has no result"
    assert _published(db_path, "rt.count") == []
