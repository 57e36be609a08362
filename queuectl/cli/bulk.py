"""The bulk path of `enqueue --file`: a JSON-lines file published in one transaction (or in batches)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from json.encoder import encode_basestring_ascii as encode_string  # type: ignore[attr-defined]
from typing import Any, TextIO

from celery import Celery

from queuectl_kombu import DuplicateJob, JobStore, NewJob, QueuectlError, message_rows, stored_message
from queuectl_kombu import route as route_to

from ..jobspec import InvalidJob, JobSpec, job_from_json
from ..tasks import RUN_SHELL

#: Jobs per insert statement of a whole-file transaction.
INSERT_BATCH = 5000
#: Longest kwargsrepr header, as Celery's default kwargsrepr_maxsize.
KWARGSREPR_MAX = 1024


def read_lines(path: str) -> list[str] | None:
    """All lines of stdin when `path` is "-" (it cannot be read twice), else None."""
    return sys.stdin.readlines() if path == "-" else None


@contextlib.contextmanager
def _lines(path: str, cached: list[str] | None) -> Iterator[Iterator[str]]:
    if cached is not None:
        yield iter(cached)
        return
    try:
        handle: TextIO = open(path, encoding="utf-8")
    except OSError as exc:
        raise InvalidJob(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        yield iter(handle)


def iter_jobs(
    path: str, cached: list[str] | None, defaults: Mapping[str, Any] | None = None
) -> Iterator[tuple[int, JobSpec]]:
    """(line number, job) of every non-blank line; InvalidJob names the first bad line."""
    name = "<stdin>" if path == "-" else path
    with _lines(path, cached) as lines:
        try:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    yield number, job_from_json(line, f"{name} line {number}: ", defaults)
        except UnicodeDecodeError as exc:
            raise InvalidJob(f"{name}: not UTF-8 text ({exc.reason})") from None


def checked_jobs(
    path: str, cached: list[str] | None, defaults: Mapping[str, Any] | None, ids: dict[str, int]
) -> Iterator[tuple[int, JobSpec]]:
    """iter_jobs, and InvalidJob at an id used twice; fills `ids` (explicit id -> line number)."""
    name = "<stdin>" if path == "-" else path
    for number, job in iter_jobs(path, cached, defaults):
        if job.id is not None:
            first = ids.setdefault(job.id, number)
            if first != number:
                raise InvalidJob(f"{name} line {number}: id {job.id!r} is already used on line {first}")
        yield number, job


#: The most jobs validate_file keeps, parsed, for the publish that follows (a larger file is
#: parsed again as it is published, so that memory stays bounded).
KEEP_PARSED = 250_000


def validate_file(
    path: str, cached: list[str] | None, defaults: Mapping[str, Any] | None = None
) -> tuple[int, dict[str, int], list[JobSpec] | None]:
    """Check every line before anything is written: (job count, explicit id -> line number, the
    jobs themselves when there are at most KEEP_PARSED of them, else None)."""
    ids: dict[str, int] = {}
    jobs: list[JobSpec] | None = []
    count = 0
    for _, job in checked_jobs(path, cached, defaults, ids):
        count += 1
        if jobs is not None:
            jobs.append(job)
            if count > KEEP_PARSED:
                jobs = None
    return count, ids, jobs


def check_new_ids(store: JobStore, ids: Mapping[str, int], path: str) -> None:
    """DuplicateJob, naming the line, if a job of the database already has one of `ids`."""
    found = store.existing_task_id(list(ids))
    if found is not None:
        name = "<stdin>" if path == "-" else path
        raise DuplicateJob(f"{name} line {ids[found]}: a job with id {found!r} already exists", found)


def _uuid4s(n: int) -> list[str]:
    """`n` random (version 4) UUIDs as text, as str(uuid.uuid4()) gives, from one read of urandom."""
    raw = bytearray(os.urandom(16 * n))
    out = []
    for i in range(0, 16 * n, 16):
        raw[i + 6] = (raw[i + 6] & 0x0F) | 0x40  # version 4
        raw[i + 8] = (raw[i + 8] & 0x3F) | 0x80  # RFC 4122 variant
        h = raw[i:i + 16].hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


#: Stand-ins of a message template (control characters: no job's text can hold them).
_BODY, _ID, _KWARGSREPR = "\x01body\x01", "\x01id\x01", "\x01kwargsrepr\x01"


def _body(kwargs: dict[str, Any], embed: Any) -> str:
    """A Celery protocol 2 body (args, kwargs, embed) as the virtual transport stores it: base64."""
    return base64.b64encode(json.dumps([[], kwargs, embed]).encode()).decode()


def _message(body: str, headers: dict[str, Any], route: tuple[str, str, list[str]], priority: int,
             task_id: str) -> dict[str, Any]:
    """The stored form of a message to `route` (exchange, routing key, queues)."""
    return stored_message(body, headers, exchange=route[0], routing_key=route[1], priority=priority,
                          correlation_id=task_id)


def _dumps_kwargs(kwargs: dict[str, Any]) -> str:
    """json.dumps(kwargs), the same text; a flat object of strings (most jobs) without the
    encoder's set-up, which costs more than the encoding."""
    if all(type(v) is str for v in kwargs.values()):
        return "{" + ", ".join(f"{encode_string(k)}: {encode_string(v)}" for k, v in kwargs.items()) + "}"
    return json.dumps(kwargs)


class _Template:
    """The JSON text of a message cut where the body, the task id and the kwargs' repr go."""

    def __init__(self, text: str, embed: Any) -> None:
        slots = [json.dumps(s) for s in (_BODY, _ID, _KWARGSREPR)]
        self.parts = re.split("(" + "|".join(re.escape(slot) for slot in slots) + ")", text)
        #: (index in parts, which value: 0 body, 1 id, 2 kwargs' repr) of every stand-in
        self.slots = [(i, slots.index(part)) for i, part in enumerate(self.parts) if part in slots]
        self.embed_json = json.dumps(embed)

    def fill(self, task_id: str, kwargs: dict[str, Any]) -> str:
        body = base64.b64encode(f"[[], {_dumps_kwargs(kwargs)}, {self.embed_json}]".encode()).decode()
        values = (f'"{body}"', encode_string(task_id), encode_string(repr(kwargs)[:KWARGSREPR_MAX]))
        parts = self.parts.copy()
        for i, which in self.slots:
            parts[i] = values[which]
        return "".join(parts)


class BulkPublisher:
    """Turns JobSpecs into the stored form of the Celery messages run_shell.apply_async sends.

    Celery builds the headers of the first job (``as_task_v2``); the others copy them and change
    what differs (the id and the kwargs' repr), and jobs with an ETA go through Celery whole.
    """

    def __init__(self, app: Celery, jobstore: JobStore) -> None:
        self.app = app
        self.connection = app.connection_for_write()
        self.channel: Any = self.connection.default_channel
        #: On the same connection as the channel's (JobStore.shared): queues declared while the
        #: file's transaction is open join it.
        self.jobstore = jobstore
        self._routes: dict[str | None, tuple[str, str, list[str]]] = {}
        self._origin = f"queuectl@{uuid.uuid4().hex[:8]}"
        headers, _, body, _ = self._celery_message(str(uuid.uuid4()), {"command": ""}, None, None)
        self._headers = headers
        self._embed = body[2]
        self._ids: list[str] = []
        self._templates: dict[tuple[str, str, int, int | None], _Template] = {}

    def close(self) -> None:
        """Release the broker connection."""
        self.connection.release()

    def _celery_message(self, task_id: str, kwargs: dict[str, Any], countdown: float | None,
                        eta: Any) -> Any:
        return self.app.amqp.as_task_v2(
            task_id, RUN_SHELL, args=(), kwargs=kwargs, countdown=countdown, eta=eta, origin=self._origin,
            # Celery's saferepr costs more than the rest of the message: these are flat and small.
            argsrepr="()", kwargsrepr=repr(kwargs)[:KWARGSREPR_MAX],
        )

    def _route(self, queue_name: str | None) -> tuple[str, str, list[str]]:
        """(exchange, routing key, queues it reaches) of a queue, declared once, as Celery does."""
        route = self._routes.get(queue_name)
        if route is None:
            name = queue_name or self.app.conf.task_default_queue
            queue = self.app.amqp.queues[name]
            queue(self.channel).declare()
            # As Celery's send_task_message: a direct queue is reached through the anonymous exchange.
            exchange, key = ("", name) if queue.exchange.type == "direct" else (queue.exchange.name, queue.routing_key)
            route = (exchange, key, route_to(self.jobstore, exchange, key))
            self._routes[queue_name] = route
        return route

    def _task_id(self) -> str:
        if not self._ids:
            self._ids = _uuid4s(1000)
        return self._ids.pop()

    def jobs(self, job: JobSpec) -> list[NewJob]:
        """The rows of one job (one per queue its route reaches)."""
        task_id = job.id or self._task_id()
        kwargs = job.task_kwargs()
        route = self._route(job.queue)
        priority = job.priority or 0
        if job.delay is None and job.run_at is None:
            payload = self._template(route, priority, job.max_retries).fill(task_id, kwargs)
        else:
            headers, _, body, _ = self._celery_message(task_id, kwargs, job.delay, job.run_at)
            headers.update(job.headers())
            message = _message(_body(kwargs, body[2]), headers, route, priority, task_id)
            return message_rows(message, route[2], json.dumps(message))
        return [
            NewJob(queue=queue, payload=payload, priority=priority, task_id=task_id, task_name=RUN_SHELL,
                   max_retries=job.max_retries)
            for queue in route[2]
        ]

    def _template(self, route: tuple[str, str, list[str]], priority: int, max_retries: int | None) -> _Template:
        key = (route[0], route[1], priority, max_retries)
        template = self._templates.get(key)
        if template is None:
            headers = dict(self._headers, id=_ID, root_id=_ID, kwargsrepr=_KWARGSREPR)
            headers.update(JobSpec(command="", max_retries=max_retries).headers())
            template = self._templates[key] = _Template(
                json.dumps(_message(_BODY, headers, route, priority, _ID)), self._embed
            )
        return template

    def batches(self, specs: Iterable[JobSpec], size: int) -> Iterator[list[NewJob]]:
        """The rows of `specs`, `size` jobs at a time."""
        batch: list[NewJob] = []
        for spec in specs:
            batch.extend(self.jobs(spec))
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch


def publish_file(
    app: Celery,
    jobstore: JobStore,
    specs: Iterable[JobSpec],
    batch_size: int | None,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Publish every job of `specs` (read from a file as they are published); returns the count.

    Without `batch_size`, ONE transaction: a bad line (InvalidJob raised by `specs`) or an id
    already used anywhere rolls everything back. With `batch_size`, a transaction every
    `batch_size` jobs (validate the file first).
    """
    publisher = BulkPublisher(app, jobstore)
    store = jobstore
    counted = 0

    def counting() -> Iterator[JobSpec]:
        nonlocal counted
        for spec in specs:
            counted += 1
            yield spec

    try:
        if batch_size is None:
            def progress() -> Iterator[list[NewJob]]:
                for batch in publisher.batches(counting(), INSERT_BATCH):
                    yield batch
                    if on_batch:
                        on_batch(len(batch))
            store.publish_stream(progress(), unique_task_ids=True)
            return counted
        done = 0
        for batch in publisher.batches(counting(), batch_size):
            try:
                store.publish_many(batch, unique_task_ids=True)
            except QueuectlError as exc:
                if done:
                    raise type(exc)(f"{exc} ({done} jobs of earlier batches were enqueued)") from exc
                raise
            done += len(batch)
            if on_batch:
                on_batch(len(batch))
        return counted
    finally:
        publisher.close()
