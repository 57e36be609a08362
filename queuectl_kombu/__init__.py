"""queuectl_kombu: a kombu transport and Celery result backend in one SQLite file.

Importing the package registers the ``sqlite://`` scheme with kombu.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES

from .exceptions import (
    DatabaseUnusable,
    DuplicateJob,
    InvalidConfig,
    InvalidTransition,
    JobNotFound,
    QueuectlError,
)
from .settings import MAX_RETRIES_LIMIT
from .states import JobState
from .store import JobStore, NewJob

TRANSPORT_ALIASES["sqlite"] = "queuectl_kombu.transport:Transport"

__version__ = "0.1.0"

__all__ = [
    "DatabaseUnusable",
    "DuplicateJob",
    "InvalidConfig",
    "InvalidTransition",
    "JobNotFound",
    "JobState",
    "JobStore",
    "MAX_RETRIES_LIMIT",
    "NewJob",
    "QueuectlError",
    "__version__",
]
