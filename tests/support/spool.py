"""For tests that read a SQLite file with sqlite3 itself: the publishes waiting in its spool
(queuectl_kombu/spool.py) moved into the jobs table first, as every write and every read of the
store does on its own."""

from __future__ import annotations

import json
import os

from queuectl_kombu import JobStore


def move_spool_in(path: str | os.PathLike[str]) -> None:
    """Move the spooled publishes of the SQLite file at `path` into its jobs table (nothing to do
    when it has no spool, or the file does not exist)."""
    if not os.path.isdir(f"{os.fspath(path)}-spool"):
        return
    store = JobStore(os.fspath(path))
    try:
        store.take_in_spool()
    finally:
        store.close()


def spooled_task_ids(path: str | os.PathLike[str]) -> list[str]:
    """The task ids of every publish in the spool files of the file at `path` (moved in or not):
    each file is a header line, then one JSON line per publish, a list of rows whose fifth field
    is the task id."""
    directory = f"{os.fspath(path)}-spool"
    ids: list[str] = []
    if not os.path.isdir(directory):
        return ids
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".jobs"):
            continue
        with open(os.path.join(directory, name), "rb") as f:
            lines = f.read().split(b"\n")[1:-1]  # no header; no half line at the end
        ids += [row[4] for line in lines for row in json.loads(line)]
    return ids
