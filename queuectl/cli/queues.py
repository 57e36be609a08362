"""`queuectl queue list|pause|resume`: the queues, and stopping or restarting the claims of one."""

from __future__ import annotations

import click

from queuectl_kombu import InvalidValue, JobState, JobStore, QueueNotFound, is_control_queue

from .completion import complete_queue
from .context import state
from .options import STATES, format_option
from .output import emit_rows, note

#: Table and CSV columns of `queue list`.
QUEUE_COLUMNS = ("queue", "paused", "consumers", *STATES)


@click.group("queue")
def queue() -> None:
    """The queues: jobs per state, consumers, and pause or resume one.

    A paused queue is skipped by every claim of every worker, until it is resumed: its jobs
    wait (new ones can be added), its running jobs finish. The pause is kept in the database,
    so it outlives worker restarts.

    \b
    Examples:
      queuectl queue list
      queuectl queue pause batch
      queuectl queue resume batch
    """


@queue.command("list")
@format_option()
def queue_list(fmt: str) -> None:
    """List the queues (declared, or holding jobs): jobs per state, live consumers (one per
    worker that reads the queue) and whether the queue is paused.

    \b
    Examples:
      queuectl queue list
      queuectl queue list --format json | jq -r '.[] | select(.paused) | .queue'
    """
    store = state().existing_jobstore()
    infos = [] if store is None else store.queue_overview()
    rows = []
    for info in infos:
        row = {"queue": info.name, "paused": info.paused if fmt == "json" else ("yes" if info.paused else "no"),
               "consumers": info.consumers, **{s.value: info.counts[s] for s in JobState}}
        rows.append(row)
    emit_rows(rows, QUEUE_COLUMNS, fmt)


@queue.command("pause")
@click.argument("names", metavar="NAME...", nargs=-1, required=True, shell_complete=complete_queue)
def queue_pause(names: tuple[str, ...]) -> None:
    """Pause queues: workers stop taking their jobs (the running ones finish).

    \b
    Examples:
      queuectl queue pause batch
      queuectl queue pause celery batch
    """
    store = _store(names)
    for name in names:
        changed = store.pause_queue(name)
        note(f"queue {name} paused" if changed else f"queue {name} was paused already")


@queue.command("resume")
@click.argument("names", metavar="NAME...", nargs=-1, required=True, shell_complete=complete_queue)
def queue_resume(names: tuple[str, ...]) -> None:
    """Resume paused queues: workers that read them take their jobs again at once.

    \b
    Examples:
      queuectl queue resume batch
    """
    store = _store(names)
    for name in names:
        changed = store.resume_queue(name)
        note(f"queue {name} resumed" if changed else f"queue {name} was not paused")


def _store(names: tuple[str, ...]) -> JobStore:
    """The store, once every name is known to be a queue: a bad name changes nothing."""
    store = state().existing_jobstore()
    known = set() if store is None else {info.name for info in store.queue_overview()}
    for name in names:
        if is_control_queue(name):
            raise InvalidValue(f"{name!r} is a queue of Celery's remote control or events: it cannot be paused")
        if name not in known:
            raise QueueNotFound(f"no queue named {name!r} (queuectl queue list shows them)")
    if store is None:
        raise QueueNotFound(f"no queue named {names[0]!r}")
    return store
