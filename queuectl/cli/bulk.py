"""The bulk path of `enqueue --file`: validate a JSON-lines file, then publish it in batched transactions."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TextIO

from celery import Celery
from kombu.serialization import dumps as serialize

from queuectl_kombu import DuplicateJob, JobStore, QueuectlError

from ..jobspec import InvalidJob, JobSpec, job_from_json
from ..tasks import RUN_SHELL

#: Jobs per transaction unless --batch-size says otherwise.
DEFAULT_BATCH = 5000
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


def validate_file(
    path: str, cached: list[str] | None, defaults: Mapping[str, Any] | None = None
) -> tuple[int, dict[str, int]]:
    """Check every line before anything is written: (job count, explicit id -> line number)."""
    count = 0
    ids: dict[str, int] = {}
    name = "<stdin>" if path == "-" else path
    for number, job in iter_jobs(path, cached, defaults):
        count += 1
        if job.id is not None:
            first = ids.setdefault(job.id, number)
            if first != number:
                raise InvalidJob(f"{name} line {number}: id {job.id!r} is already used on line {first}")
    return count, ids


def check_new_ids(store: JobStore, ids: Mapping[str, int], path: str) -> None:
    """DuplicateJob, naming the line, if a job of the database already has one of `ids`."""
    name = "<stdin>" if path == "-" else path
    for task_id, number in ids.items():
        if store.task_exists(task_id):
            raise DuplicateJob(f"{name} line {number}: a job with id {task_id!r} already exists")


class BulkPublisher:
    """Turns JobSpecs into Celery messages and publishes them many per transaction."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.connection = app.connection_for_write()
        self.channel: Any = self.connection.default_channel
        self._routes: dict[str | None, tuple[str, str]] = {}
        self._origin = f"queuectl@{uuid.uuid4().hex[:8]}"

    def close(self) -> None:
        """Release the broker connection."""
        self.connection.release()

    def _route(self, queue_name: str | None) -> tuple[str, str]:
        """(exchange, routing key) of a queue, declared once, as Celery routes and declares it."""
        route = self._routes.get(queue_name)
        if route is None:
            name = queue_name or self.app.conf.task_default_queue
            queue = self.app.amqp.queues[name]
            queue(self.channel).declare()
            # As Celery's send_task_message: a direct queue is reached through the anonymous exchange.
            route = ("", name) if queue.exchange.type == "direct" else (queue.exchange.name, queue.routing_key)
            self._routes[queue_name] = route
        return route

    def message(self, job: JobSpec) -> tuple[dict[str, Any], str, str]:
        """(message, exchange, routing key) of one job: what run_shell.apply_async would send."""
        task_id = job.id or str(uuid.uuid4())
        kwargs = job.task_kwargs()
        headers, properties, body, _ = self.app.amqp.as_task_v2(
            task_id, RUN_SHELL, args=(), kwargs=kwargs,
            countdown=job.delay, eta=job.run_at, origin=self._origin,
            # Celery's saferepr costs more than the rest of the message: these are flat and small.
            argsrepr="()", kwargsrepr=repr(kwargs)[:KWARGSREPR_MAX],
        )
        headers.update(job.headers())
        properties["delivery_mode"] = 2
        content_type, content_encoding, data = serialize(body, serializer="json")
        message = self.channel.prepare_message(
            data, job.priority or 0, content_type, content_encoding, headers, properties
        )
        exchange, routing_key = self._route(job.queue)
        return message, exchange, routing_key

    def publish(self, jobs: Sequence[JobSpec]) -> int:
        """Publish `jobs` in one transaction (all or none); ids given must be new."""
        items = [self.message(job) for job in jobs]
        unique = any(job.id is not None for job in jobs)
        return len(self.channel.basic_publish_many(items, unique_task_ids=unique))


def publish_file(
    app: Celery,
    path: str,
    cached: list[str] | None,
    batch_size: int,
    defaults: Mapping[str, Any] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Publish every job of a validated file in batches; returns how many were enqueued."""
    publisher = BulkPublisher(app)
    done = 0
    batch: list[JobSpec] = []
    try:
        for _, job in iter_jobs(path, cached, defaults):
            batch.append(job)
            if len(batch) >= batch_size:
                done += publisher.publish(batch)
                batch.clear()
                if on_batch:
                    on_batch(batch_size)
        if batch:
            done += publisher.publish(batch)
            if on_batch:
                on_batch(len(batch))
    except QueuectlError as exc:
        if done:
            raise type(exc)(f"{exc} ({done} jobs of earlier batches were enqueued)") from exc
        raise
    finally:
        publisher.close()
    return done
