"""The errors queuectl raises; each message defaults to its docstring.

Two kinds, which a command line maps to its exit codes once, at its edge: InvalidInput (the
caller's input is wrong: a usage error) and every other QueuectlError (an operation failed).
"""

from __future__ import annotations

import sqlite3


class QueuectlError(Exception):
    """A queuectl operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class InvalidInput(QueuectlError):
    """The input is not valid."""


class InvalidConfig(InvalidInput):
    """A setting has an unknown name or a value out of range."""


class InvalidValue(InvalidInput, ValueError):
    """A value is out of its range or malformed (a job's max_retries, a message header)."""


class DatabaseUnusable(QueuectlError):
    """The database file cannot be used."""


class DatabaseLocked(QueuectlError, sqlite3.OperationalError):
    """Another connection held the database's write lock past the busy timeout.

    Also a sqlite3.OperationalError, which kombu takes for a connection error (Celery reconnects)
    and the ack buffer for a write to try again."""


class DatabaseUnreachable(DatabaseUnusable, sqlite3.OperationalError):
    """The database server could not be reached, refused the login, or dropped the connection.

    Also a sqlite3.OperationalError, like DatabaseLocked: kombu takes it for a connection error
    (Celery reconnects, and retries a publish per broker_connection_retry)."""


class ConstraintViolated(QueuectlError, sqlite3.IntegrityError):
    """A write broke a constraint of the schema (PostgreSQL's IntegrityError; SQLite raises its own
    sqlite3.IntegrityError, which this also is, so callers catch one type for both engines)."""


class DatabaseMoved(DatabaseUnusable):
    """The database file was deleted or replaced while this process had it open."""


class BackupFailed(QueuectlError):
    """The backup could not be written (its destination is unusable, or the engine has its own tools)."""


class JobNotFound(QueuectlError):
    """No job has that id."""


class QueueNotFound(QueuectlError):
    """No queue has that name (none was declared and no job is in it)."""


class InvalidTransition(QueuectlError):
    """The job is not in the state this change expects."""


class DuplicateJob(QueuectlError):
    """A job with that id already exists."""

    def __init__(self, message: str | None = None, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class PayloadTooLarge(QueuectlError):
    """The message is larger than queuectl accepts."""


class WorkersRunning(QueuectlError):
    """Workers are consuming from the database an operation needs at rest."""
