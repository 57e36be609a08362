"""Celery's remote control on a queuectl broker: ``inspect scheduled`` sees the ETA jobs in the file.

On Redis and RabbitMQ a worker holds ETA and countdown tasks in memory, and ``celery inspect
scheduled`` (Flower's scheduled tab, monitoring scripts) lists them. queuectl keeps them in the
broker until they are due, so a worker on it answers with those of the queues it consumes as
well, in Celery's format, after the ones it holds itself.
"""

from __future__ import annotations

import base64
import json
import logging
from datetime import datetime, timezone
from typing import Any

logger = logging.getLogger(__name__)

#: The most broker-held jobs one worker lists (a backlog of millions is not sent as one reply).
MOST = 1000

_installed = False


def install() -> None:
    """Answer ``scheduled`` (alias ``dump_schedule``) with the broker-held jobs too (once per process)."""
    global _installed
    if _installed:
        return
    try:
        from celery.worker import control
    except ImportError:  # kombu without Celery: no remote control to extend
        return

    celery_scheduled = control.Panel.data["scheduled"]

    @control.inspect_command(alias="dump_schedule")
    def scheduled(state: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """List of currently scheduled ETA/countdown tasks (held by the worker or by queuectl)."""
        held = list(celery_scheduled(state, **kwargs))
        try:
            held.extend(broker_held(state.consumer))
        except Exception as exc:  # noqa: BLE001 - the worker's own answer still goes out
            logger.warning("inspect scheduled: could not read the broker's scheduled jobs: %s", exc)
        return held

    _installed = True


def broker_held(consumer: Any) -> list[dict[str, Any]]:
    """The not-yet-due jobs of the queues `consumer` reads, as Celery's scheduled entries."""
    transport = getattr(consumer.connection, "transport", None)
    store = getattr(transport, "store", None)
    task_consumer = getattr(consumer, "task_consumer", None)
    if store is None or task_consumer is None or not hasattr(store, "scheduled"):
        return []  # another broker
    queues = sorted({queue.name for queue in task_consumer.queues})
    return [
        _entry(consumer.hostname, job_id, queue, priority, next_run_at, deliveries, payload)
        for job_id, queue, priority, next_run_at, deliveries, payload in store.scheduled(queues, MOST)
    ]


def _entry(hostname: str, job_id: int, queue: str, priority: int, next_run_at: float, deliveries: int,
           payload: str) -> dict[str, Any]:
    message = json.loads(payload)
    headers = message.get("headers") or {}
    props = message.get("properties") or {}
    info = props.get("delivery_info") or {}
    args, kwargs = _arguments(message, headers)
    eta = headers.get("eta") or datetime.fromtimestamp(next_run_at, timezone.utc).isoformat()
    return {
        "eta": eta,
        "priority": priority,
        "request": {
            "id": headers.get("id") or props.get("correlation_id"),
            "name": headers.get("task"),
            "args": args,
            "kwargs": kwargs,
            "type": headers.get("task"),
            "hostname": hostname,
            "time_start": None,
            "acknowledged": False,
            "delivery_info": {
                "exchange": info.get("exchange"),
                "routing_key": info.get("routing_key", queue),
                "priority": props.get("priority", priority),
                "redelivered": deliveries > 0,
            },
            "worker_pid": None,
        },
    }


def _arguments(message: dict[str, Any], headers: dict[str, Any]) -> tuple[Any, Any]:
    """A JSON task's args and kwargs (protocol 2 or 1); their repr headers for any other body
    (a pickled body is never unpickled here)."""
    body = message.get("body")
    if message.get("content-type") == "application/json" and isinstance(body, str):
        try:
            raw = base64.b64decode(body) if (message.get("properties") or {}).get("body_encoding") == "base64" else body
            decoded = json.loads(raw)
            if isinstance(decoded, list) and len(decoded) >= 2:
                return decoded[0], decoded[1]
            if isinstance(decoded, dict) and "args" in decoded:
                return decoded.get("args"), decoded.get("kwargs")
        except (ValueError, TypeError):
            pass
    return headers.get("argsrepr"), headers.get("kwargsrepr")
