"""The errors queuectl raises; each message defaults to its docstring."""

from __future__ import annotations


class QueuectlError(Exception):
    """A queuectl operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class DatabaseUnusable(QueuectlError):
    """The database file cannot be used."""


class InvalidConfig(QueuectlError):
    """A setting has an unknown name or a value out of range."""


class JobNotFound(QueuectlError):
    """No job has that id."""


class InvalidTransition(QueuectlError):
    """The job is not in the state this change expects."""


class DuplicateJob(QueuectlError):
    """A job with that id already exists."""

    def __init__(self, message: str | None = None, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class PayloadTooLarge(QueuectlError):
    """The message is larger than queuectl accepts."""
