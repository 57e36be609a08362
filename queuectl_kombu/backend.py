"""Celery result backend keeping results in a queuectl SQLite file (the broker's file by default).

Features
========
* Every task state with result, traceback, date done, children; ``result_extended`` fields.
* A SUCCESS stored first is kept: a redelivered copy of the task cannot overwrite it.
* Groups (save, restore, delete); chords counted in the database (no ``celery.chord_unlock``),
  the body sent by the last part without waiting for any result (nested groups included).
* ``AsyncResult.get()`` wakes when the result is committed (inotify on the -wal file), not on a
  half-second poll; ``join_native`` reads a whole group in one statement.
* Results expire after ``result_expires`` without ``celery beat``.

Connection String
=================

.. code-block::

    sqlite:///relative/path.db      relative to the working directory of each process
    sqlite:////absolute/path.db
    sqlite://                       the file of the sqlite:// broker

The entry point ``sqlite`` (group ``celery.result_backends``) makes these URLs work with nothing
imported.

Transport Options
=================

Set through Celery's ``result_backend_transport_options``:

* ``synchronous``: SQLite's ``synchronous`` pragma, ``NORMAL`` (default) or ``FULL``.
* ``purge_interval``: seconds between deletions of expired results by a process's writes
  (default 60; 0 purges on every write).
* ``polling_interval``: how often a waiting ``get()`` looks at the file where inotify is not
  available (default 0.01).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from celery import states
from celery.backends.base import KeyValueStoreBackend
from celery.exceptions import ImproperlyConfigured, TimeoutError
from celery.backends.base import _create_chord_error_with_cause
from celery.canvas import maybe_signature
from celery.exceptions import ChordError
from celery.result import GroupResult, ResultSet, result_from_tuple
from kombu.utils.encoding import bytes_to_str

from .db import is_busy
from .paths import SCHEME, url_path
from .postgres import is_postgres_url, mask, target
from .exceptions import DatabaseUnusable
from .results import ResultStore, Value, result_store

logger = logging.getLogger(__name__)

#: Chord headers kept decoded per process (see SQLiteBackend._restore_group).
GROUP_CACHE_SIZE = 16


def path_from_url(url: str | None, broker_url: Any = None) -> str:
    """The absolute database path named by a ``sqlite://`` result URL (no path: the broker's file),
    or a ``postgresql://`` URL as it is."""
    url = url or SCHEME
    if is_postgres_url(url):
        try:
            return target(url).url  # checked here: a malformed URL fails at configuration
        except DatabaseUnusable as exc:
            raise ImproperlyConfigured(str(exc)) from None
    if not url.startswith(SCHEME):
        raise ImproperlyConfigured(f"not a sqlite:// result backend URL: {url!r}")
    if "?" in url:
        raise ImproperlyConfigured(
            f"{url!r}: the sqlite:// result backend takes no query string; use result_backend_transport_options"
        )
    if url.rstrip("/") == SCHEME.rstrip("/"):  # no file named: the broker's
        broker = broker_url.split(";")[0].strip() if isinstance(broker_url, str) else ""
        url = broker.split("?")[0]
        if not url.startswith(SCHEME):
            raise ImproperlyConfigured(
                "result_backend sqlite:// names no file and the broker is not a sqlite:// file: "
                "use sqlite:///relative.db or sqlite:////abs/path.db"
            )
    try:
        return url_path(url)
    except DatabaseUnusable as exc:
        raise ImproperlyConfigured(str(exc)) from None


class _NotReady(Exception):
    """A chord header result that is not stored yet (its task id is the argument)."""


class SQLiteBackend(KeyValueStoreBackend):
    """Celery results in the ``results`` table of a queuectl SQLite file."""

    supports_autoexpire = True
    supports_native_join = True
    supports_result_compression = True  # values are stored as they come: str or bytes
    supports_failure_expires = True
    implements_incr = True
    persistent = True
    key_t = bytes_to_str  # keys are TEXT in the results table

    def __init__(self, app: Any, url: str | None = None, path: str | None = None, **kwargs: Any) -> None:
        super().__init__(app, url=url, **kwargs)
        conf = self.app.conf
        options = dict(conf.get("result_backend_transport_options") or {})
        if path:
            self.path = path if is_postgres_url(path) else os.path.abspath(os.path.expanduser(path))
        else:
            self.path = path_from_url(url, conf.broker_url)
        if not url:
            self.url = self.path if is_postgres_url(self.path) else "sqlite:///" + self.path
        broker_options = conf.get("broker_transport_options") or {}
        #: PostgreSQL: the schema of the queuectl tables (the broker's unless set for results)
        self.schema = options.get("schema") or broker_options.get("schema") or None
        self.synchronous = str(options.get("synchronous", "NORMAL")).upper()
        self.purge_interval = float(options.get("purge_interval", 60.0))
        self.polling_interval = float(options.get("polling_interval", 0.01))
        failure_expires = conf.get("result_failure_expires")
        self.failure_expires = (
            self.expires if failure_expires is None else self.prepare_expires(failure_expires)
        )
        # 'database is locked' is transient on one host: always retry it (and nothing else,
        # see exception_safe_to_retry) rather than failing the task whose result it is.
        self.always_retry = True
        self._store: ResultStore | None = None
        self._chord_part = threading.local()
        self._groups: dict[str, tuple[Value, dict[str, Any]]] = {}

    @property
    def store(self) -> ResultStore:
        """The ResultStore of this backend's file, shared within the process."""
        if self._store is None or self._store.db.moved():  # (a new file at the path: a new store)
            self._store = result_store(
                self.path, self.synchronous, schema=self.schema,
                purge_interval=self.purge_interval, poll_interval=self.polling_interval,
            )
        return self._store

    def _retrying(self, fun: Callable[..., Any], *args: Any) -> Any:
        return self._ensure_retryable(fun, *args)

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        """Only a locked or busy database is retried."""
        return is_busy(exc)

    # -- the key/value verbs of KeyValueStoreBackend --------------------------------------------

    def get(self, key: str | bytes) -> Value | None:
        """The value of a live key, or None."""
        return self._retrying(self.store.get, bytes_to_str(key))

    def mget(self, keys: Iterable[str | bytes]) -> list[Value | None]:
        """Values of `keys` in order, in one statement."""
        return self._retrying(self.store.mget, [bytes_to_str(k) for k in keys])

    def set(self, key: str | bytes, value: Value) -> None:
        """Store a value for result_expires seconds."""
        self._retrying(self.store.set, bytes_to_str(key), value, self.expires)

    def _set_with_state(self, key: str | bytes, value: Value, state: str) -> None:
        expires = self.failure_expires if state == states.FAILURE else self.expires
        self._retrying(self.store.set, bytes_to_str(key), value, expires)

    def delete(self, key: str | bytes) -> None:
        """Delete a key; a chord counter is kept as finished instead (see on_chord_part_return)."""
        key = bytes_to_str(key)
        if key.startswith(bytes_to_str(self.chord_keyprefix)):
            # Celery deletes the counter once the body is sent. Keeping it as 'done' for
            # result_chord_expires means a late copy of a header task counts nothing.
            self._retrying(self.store.finish_counter, key, self.chord_expires)
        else:
            self._retrying(self.store.delete, key)

    def incr(self, key: str | bytes) -> int:
        """Add one to a counter, atomically."""
        return self._retrying(self.store.incr, bytes_to_str(key), self.chord_expires)

    def expire(self, key: str | bytes, value: float | None) -> None:
        """Set a key's lifetime in seconds (0 or None: no expiry)."""
        self._retrying(self.store.expire, bytes_to_str(key), value)

    def _store_result(
        self, task_id: str, result: Any, state: str, traceback: str | None = None,
        request: Any = None, **kwargs: Any,
    ) -> Any:
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        # The SUCCESS check is in the statement itself, not a read before the write: two
        # processes storing the same task at once cannot both win.
        key = self.get_key_for_task(task_id)
        stored = self._retrying(self.store.store_task_result, key, self.encode(meta), state, expires)
        if not stored:
            logger.info("task %s: kept the stored SUCCESS; %s not stored", task_id, state)
        return result

    # -- chords: counted in the database, the body sent by the last part, nobody waits ----------

    def _apply_chord_incr(self, header_result_args: Any, body: Any, **kwargs: Any) -> Any:
        # A frozen chord applied again reuses its group id but is a new run: start a new count.
        self._retrying(self.store.reset_counter, bytes_to_str(self.get_key_for_chord(header_result_args[0])))
        return super()._apply_chord_incr(header_result_args, body, **kwargs)

    def set_chord_size(self, group_id: str, chord_size: int) -> None:
        """Celery tells the number of parts (nested groups counted by their tasks) before it
        publishes the last header task."""
        key = bytes_to_str(self.get_key_for_chord(group_id))
        self._retrying(self.store.set_chord_size, key, chord_size, self.chord_expires)

    def add_to_chord(self, group_id: str, result: Any) -> None:
        """``Task.add_to_chord``: the chord waits for one more part."""
        key = bytes_to_str(self.get_key_for_chord(group_id))
        self._retrying(self.store.grow_chord, key, self.chord_expires)

    def on_chord_part_return(self, request: Any, state: str, result: Any, **kwargs: Any) -> Any:
        """Count this header part; the part that completes the chord sends its body.

        Never waits for a result: the part that makes the count reach the chord's size (which
        Celery gives through set_chord_size, nested groups counted by their tasks) reads every
        header result in one statement. Each part counts once, by task id and header index (a
        redelivered copy counts nothing), and one statement decides which part sends the body.
        """
        gid, tid = request.group, request.id
        if not gid or not tid:
            return None
        key = bytes_to_str(self.get_key_for_chord(gid))
        member = f"{tid}:{getattr(request, 'group_index', None)}"
        count, size = self._retrying(self.store.count_chord_part, key, member, self.chord_expires)
        if not count:
            logger.info("chord %s: part %s was counted already; not counting it again", gid, tid)
            return None
        known = size is not None  # Celery told the size (set_chord_size): every part has counted
        if size is None:
            size = (request.chord or {}).get("chord_size")
        if size is not None and count < size:
            self.expire(self.get_key_for_group(gid), self._chord_result_expires)
            self.expire(self.get_key_for_task(tid), self._chord_result_expires)
            return None
        part = self._chord_part
        part.active = True
        try:
            deps = GroupResult.restore(gid, backend=self)
        except Exception as exc:  # noqa: BLE001 - Celery's own handling of an unreadable group
            logger.exception("Chord %r raised: %r", gid, exc)
            return self._fail_chord(request, ChordError(f"Cannot restore group: {exc!r}"))
        finally:
            part.active = False
        if deps is None:
            logger.error("Chord %r: its group result no longer exists", gid)
            return self._fail_chord(request, ChordError(f"GroupResult {gid} no longer exists"))
        try:
            values = self._header_values(deps)
        except _NotReady as missing:
            if not known:  # the size is a guess (a chord applied by another Celery): a later part sends it
                logger.info("chord %s: %d parts counted, %s has no result yet", gid, count, missing)
                return None
            # Every part has counted, each after storing its result: this one was forgotten or
            # expired. Celery's join would wait result_chord_join_timeout and fail the body; we
            # fail it at once rather than wait inside a task.
            values = ChordError(f"Dependency {missing} has no result")
        if not self._retrying(self.store.claim_counter, key, self.chord_expires):
            return None  # another part that completed the chord at the same time sends it
        self._send_chord_body(gid, request, deps, values)
        return None

    def _fail_chord(self, request: Any, error: ChordError) -> Any:
        """Fail the chord's body with `error` (Celery takes the traceback from the current stack)."""
        try:
            raise error
        except ChordError as exc:
            return self.chord_error_from_stack(maybe_signature(request.chord, app=self.app), exc)

    def _send_chord_body(self, gid: str, request: Any, deps: Any, values: Any) -> None:
        callback = maybe_signature(request.chord, app=self.app)
        try:
            if isinstance(values, ChordError):
                logger.error("Chord %r raised: %r", gid, str(values))
                self._fail_chord(request, values)
                return
            try:
                self.app.amqp._retry_publish(callback.delay, values)
            except Exception as exc:  # noqa: BLE001 - the body fails with the reason, as in Celery
                logger.exception("Chord %r raised: %r", gid, exc)
                self.chord_error_from_stack(
                    callback=callback,
                    exc=_create_chord_error_with_cause(message=f"Callback error: {exc!r}", original_exc=exc),
                )
        finally:
            deps.delete()
            # The chord is done: give the header results back their normal lifetime.
            for dep in deps.results:
                self.expire(self.get_key_for_task(dep.id), self.expires)

    def _header_values(self, deps: Any) -> Any:
        """The values a chord body receives, read without waiting (nested groups as lists).

        A ChordError (naming the first header result that failed, in header order, as Celery's
        join does) when a part failed; _NotReady when some part has no result yet.
        """
        leaves: list[Any] = []

        def collect(results: Any) -> None:
            for r in results.results:
                if isinstance(r, ResultSet):
                    collect(r)
                else:
                    leaves.append(r)

        collect(deps)
        ids = [r.id for r in leaves]
        metas = {}
        for task_id, raw in zip(ids, self.mget([self.get_key_for_task(i) for i in ids])):
            if raw is not None:
                metas[task_id] = self.decode_result(raw)
        for task_id in ids:
            meta = metas.get(task_id)
            if meta is None or meta["status"] not in states.READY_STATES:
                raise _NotReady(task_id)
        for task_id in ids:
            meta = metas[task_id]
            if meta["status"] in states.PROPAGATE_STATES:
                exc = meta["result"]
                return _create_chord_error_with_cause(
                    message=f"Dependency {task_id} raised {exc!r}", original_exc=exc,
                )

        def values(results: Any) -> list[Any]:
            return [values(r) if isinstance(r, ResultSet) else metas[r.id]["result"] for r in results.results]

        return values(deps)

    def _restore_group(self, group_id: str) -> dict[str, Any] | None:
        # Every part of a chord restores the whole header group only to see that it still
        # exists; building 1,000 AsyncResults per part made a 1,000-task chord quadratic. During
        # a chord part the stored value is still read every time (so expiry and deletion are
        # seen at once), but it is decoded once per process while it stays the same.
        if not getattr(self._chord_part, "active", False):
            return super()._restore_group(group_id)
        key = bytes_to_str(self.get_key_for_group(group_id))
        raw = self.get(key)
        if not raw:
            return None
        cached = self._groups.get(key)
        if cached is not None and cached[0] == raw:
            return cached[1]
        meta = self.decode(raw)
        meta["result"] = result_from_tuple(meta["result"], self.app)
        self._groups.pop(key, None)
        self._groups[key] = (raw, meta)
        while len(self._groups) > GROUP_CACHE_SIZE:
            self._groups.pop(next(iter(self._groups)), None)
        return meta

    def _delete_group(self, group_id: str) -> None:
        self._groups.pop(bytes_to_str(self.get_key_for_group(group_id)), None)
        super()._delete_group(group_id)

    def cleanup(self) -> None:
        """Delete every expired result now (writes also do it every purge_interval seconds)."""
        self._retrying(self.store.purge_expired)

    # -- waiting: on database change, never on a fixed interval ------------------------------

    def wait_for(
        self, task_id: str, timeout: float | None = None, interval: float = 0.5, no_ack: bool = True,
        on_interval: Callable[[], Any] | None = None,
    ) -> dict[str, Any]:
        """Wait for the task's result; wakes when the database changes (`interval` is not used)."""
        self._ensure_not_eager()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            stamp = self.store.change_stamp()
            meta = self.get_task_meta(task_id)
            if meta["status"] in states.READY_STATES:
                if on_interval and meta["status"] in states.PROPAGATE_STATES:
                    # get() raises a failed parent's own error (a chord header task's, not the
                    # body's ChordError) through on_interval, also when both were stored at once.
                    on_interval()
                return meta
            if on_interval:
                on_interval()
            self._wait_change(stamp, deadline, "The operation timed out.")

    def get_many(
        self, task_ids: Iterable[str], timeout: float | None = None, interval: float = 0.5,
        no_ack: bool = True, on_message: Callable[[Any], Any] | None = None,
        on_interval: Callable[[], Any] | None = None, max_iterations: int | None = None,
        READY_STATES: frozenset[str] = states.READY_STATES,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (task_id, meta) as results become ready; wakes when the database changes."""
        ids = set(task_ids)
        for task_id in list(ids):
            cached = self._cache.get(task_id)
            if cached is not None and cached["status"] in READY_STATES:
                ids.discard(task_id)
                yield bytes_to_str(task_id), cached
        deadline = None if timeout is None else time.monotonic() + timeout
        iterations = 0
        while ids:
            stamp = self.store.change_stamp()
            keys = list(ids)
            ready = self._mget_to_results(
                self.mget([self.get_key_for_task(k) for k in keys]), keys, READY_STATES
            )
            self._cache.update(ready)
            ids.difference_update({bytes_to_str(k) for k in ready})
            for key, value in ready.items():
                if on_message is not None:
                    on_message(value)
                yield bytes_to_str(key), value
            if not ids:
                break
            if on_interval:
                on_interval()
            iterations += 1
            if max_iterations and iterations >= max_iterations:
                break  # a bounded look (ResultSet._iter_meta): do not wait after the last read
            self._wait_change(stamp, deadline, f"Operation timed out ({timeout})")

    def _wait_change(self, stamp: int, deadline: float | None, message: str) -> None:
        if deadline is None:
            self.store.wait_for_change(stamp)
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(message)
        self.store.wait_for_change(stamp, remaining)  # then one more read, even at the deadline

    def as_uri(self, include_password: bool = False) -> str:
        """The URL of the database in use (``sqlite:////abs/path.db``, even when given as
        ``sqlite://``; a postgresql:// URL with its password masked)."""
        if is_postgres_url(self.path):
            return self.path if include_password else mask(self.path)
        return "sqlite:///" + self.path

    def __reduce__(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = dict(kwargs or {}, url=self.url, path=self.path)
        return super().__reduce__(args, kwargs)
