"""queuectl backup: one consistent copy of a SQLite queue, taken while its workers run, which opens
as a queue of its own: the jobs that were running go back to pending (as after a crash) and the
copy has no consumers. docs/operations.md explains why a plain copy of the file is not one."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from .exceptions import BackupFailed, DatabaseUnusable
from .postgres import is_postgres_url, mask
from .states import JobState
from .store import JobStore

logger = logging.getLogger(__name__)

#: SQLite's files beside a database: a stale -wal beside a new file would be replayed into it.
SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class BackupSummary:
    """What a backup wrote: the copy's jobs per state (after its running jobs were recovered),
    and how many of them were running in the snapshot."""

    source: str
    dest: str
    counts: dict[JobState, int]
    #: processing jobs of the snapshot put back to pending (the attempt counted)
    to_pending: int
    #: processing jobs of the snapshot that had no retry left: dead, as after a crash
    to_dead: int
    #: consumer rows deleted from the copy
    consumers: int

    def line(self) -> str:
        """One line: where, jobs per state, what was put back."""
        states = ", ".join(f"{n} {state.value}" for state, n in self.counts.items())
        line = f"wrote {self.dest}: {states}; {self.to_pending} processing job(s) put back to pending"
        if self.to_dead:
            line += f", {self.to_dead} dead (no retry left)"
        return line

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "source": self.source, "dest": self.dest, "jobs": {s.value: n for s, n in self.counts.items()},
            "to_pending": self.to_pending, "to_dead": self.to_dead, "consumers": self.consumers,
        }


def backup(source: str, dest: str, *, force: bool = False) -> BackupSummary:
    """Copy the SQLite queue `source` to the new file `dest` (replaced only with `force`): one
    consistent snapshot (SQLite's online backup in one step), written to a temporary file beside
    `dest`, made restorable there (recover_every_lease, forget_consumers: the source is never
    changed) and renamed into place only once complete. BackupFailed or DatabaseUnusable, naming
    the file, when it cannot be done; a PostgreSQL URL is refused (pg_dump backs it up)."""
    if is_postgres_url(source):
        raise BackupFailed(
            f"{mask(source)} is a PostgreSQL database: back up its schema with pg_dump -n queuectl "
            "(see docs/operations.md); queuectl backup copies SQLite files")
    source = os.path.abspath(os.path.expanduser(source))
    dest = os.path.abspath(os.path.expanduser(dest))
    if not os.path.exists(source):
        raise DatabaseUnusable(f"database {source} does not exist")
    _check_destination(source, dest, force)
    store = JobStore(source)
    try:
        store.open()  # a file that is not a queuectl database fails here, before anything is written
        store.take_in_spool()  # every publish made until now is in the copy
        temporary = _temporary_beside(dest)
        try:
            store.db.backup_to(temporary)  # type: ignore[union-attr]  (SQLite: is_postgres_url above)
            summary = _make_restorable(temporary, source, dest)
            _sync(temporary)
            os.replace(temporary, dest)
            _sync(os.path.dirname(dest))
        except BaseException:
            _remove(temporary)
            raise
    finally:
        store.close()
    logger.info("backup of %s written to %s (%d processing jobs put back to pending, %d dead)",
                source, dest, summary.to_pending, summary.to_dead)
    return summary


def _check_destination(source: str, dest: str, force: bool) -> None:
    """BackupFailed, naming `dest`, unless a backup can be written there."""
    if os.path.isdir(dest):
        raise BackupFailed(f"cannot write the backup to {dest}: it is a directory")
    directory = os.path.dirname(dest)
    if not os.path.isdir(directory):
        raise BackupFailed(f"cannot write the backup to {dest}: directory {directory} does not exist")
    if os.path.exists(dest):
        if os.path.samefile(source, dest):
            raise BackupFailed(f"cannot write the backup to {dest}: it is the database itself")
        if not force:
            raise BackupFailed(f"cannot write the backup to {dest}: the file exists (--force replaces it)")
    if os.path.exists(dest + "-wal"):
        raise BackupFailed(
            f"cannot write the backup to {dest}: {dest}-wal exists (a database there is open, or was not "
            "closed cleanly, and its WAL would be replayed into the backup): stop what uses it, or remove it")


def _temporary_beside(dest: str) -> str:
    """A new empty file, private to its owner, in the directory of `dest` (so that the rename
    into place is atomic)."""
    try:
        fd, path = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", suffix=".partial",
                                    dir=os.path.dirname(dest))
    except OSError as exc:
        raise BackupFailed(f"cannot write the backup to {dest}: {exc.strerror or exc}") from exc
    os.close(fd)
    return path


def _make_restorable(path: str, source: str, dest: str) -> BackupSummary:
    """In the copy at `path` only: every running job recovered as after a crash, every consumer
    forgotten, a spool number of its own; the WAL folded into the file, which stays in WAL mode."""
    copy = JobStore(path)
    try:
        recovered = copy.recover_every_lease()
        consumers = copy.forget_consumers()
        copy.renumber_spool()  # restored at the source's path, it never takes in the source's spool
        counts = copy.counts()
        busy, _, _ = copy.db.checkpoint(truncate=True)
        if busy:
            raise BackupFailed(f"cannot write the backup to {dest}: its WAL could not be checkpointed")
    finally:
        copy.close()
    with contextlib.suppress(FileNotFoundError):
        if os.path.getsize(path + "-wal"):  # closing the last connection folds it in and deletes it
            raise BackupFailed(f"cannot write the backup to {dest}: its WAL was left behind")
    to_dead = sum(1 for _, _, state, _ in recovered if state is JobState.DEAD)
    return BackupSummary(source=source, dest=dest, counts=counts, to_pending=len(recovered) - to_dead,
                         to_dead=to_dead, consumers=consumers)


def _sync(path: str) -> None:
    """fsync a file or a directory (the rename of a complete file survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    for name in (path, *(path + suffix for suffix in SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
