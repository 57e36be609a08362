"""The state one CLI invocation shares between its commands: the database, its store, its Celery app."""

from __future__ import annotations

import os
from typing import Any

import click
from celery import Celery

from queuectl_kombu import JobStore, check_path, is_postgres_url, mask_url

from ..settings import data_dir_db_path, normalize_db


class CliState:
    """The database this invocation works on; opens the store and the Celery app on first use."""

    def __init__(self, db_path: str, verbose: int = 0) -> None:
        #: a file path (absolute) or a postgresql:// URL
        self.db_path = normalize_db(db_path)
        #: the database as messages show it (a URL's password masked)
        self.db_name = mask_url(self.db_path) if is_postgres_url(self.db_path) else self.db_path
        self.verbose = verbose
        self._store: JobStore | None = None
        self._app: Celery | None = None

    def exists(self) -> bool:
        """Whether the database file exists (raises DatabaseUnusable if its place is unusable);
        PostgreSQL: whether the server answers with the schema (DatabaseUnusable if it does not
        answer: an unreachable server is not an empty queue)."""
        if is_postgres_url(self.db_path):
            self.jobstore()  # creates the schema on first use, as a first write makes a file
            return True
        if os.path.exists(self.db_path):
            return True
        if self.is_default() and not os.path.isdir(os.path.dirname(self.db_path)):
            return False  # the per-user directory is made by the first command that writes
        check_path(self.db_path)
        return False

    def is_default(self) -> bool:
        """Whether this is the per-user data file (whose directory queuectl may create)."""
        return self.db_path == data_dir_db_path()

    def jobstore(self) -> JobStore:
        """The job store, the database created if needed (commands that write). It shares its
        connection with the Celery app's broker (one per thread and file: a queue declared while
        a bulk insert is open joins that transaction)."""
        if self._store is None:
            if self.is_default():
                os.makedirs(os.path.dirname(self.db_path), exist_ok=True)
            store = JobStore.shared(self.db_path)
            store.open()
            self._store = store
        return self._store

    def existing_jobstore(self) -> JobStore | None:
        """The job store if the database exists, else None: reading never creates the file."""
        if self._store is None and not self.exists():
            return None
        return self.jobstore()

    def celery(self) -> Celery:
        """A Celery app on this database (broker and result backend), with run_shell registered."""
        if self._app is None:
            from .. import tasks  # noqa: F401  (registers the shared tasks before finalize)
            from ..app import make_app

            self.jobstore()  # a bad path fails here, with the store's message
            self._app = make_app(self.db_path)
        return self._app

    def close(self) -> None:
        """Release the Celery app's connections and the store's connection."""
        if self._app is not None:
            self._app.close()
            self._app = None
        if self._store is not None:
            self._store.close()
            self._store = None


def state(ctx: click.Context | None = None) -> CliState:
    """The CliState of the running command."""
    ctx = ctx or click.get_current_context()
    obj: Any = ctx.find_object(CliState)
    if obj is None:  # pragma: no cover - every command runs under the main group
        raise click.UsageError("queuectl commands run under the main group")
    return obj
