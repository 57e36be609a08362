"""queuectl_kombu: a kombu transport and Celery result backend in one SQLite file.

Importing the package registers the ``sqlite://`` scheme with kombu. The names below are its
public API (what the queuectl command line uses); docs/architecture.md maps the modules.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES

from .paths import check_path, url_path
from .exceptions import (
    DatabaseLocked,
    DatabaseMoved,
    DatabaseUnusable,
    DuplicateJob,
    InvalidConfig,
    InvalidInput,
    InvalidTransition,
    InvalidValue,
    JobNotFound,
    PayloadTooLarge,
    QueuectlError,
)
from .jobs import Job
from .publishing import MAX_RETRIES_HEADER, UNIQUE_HEADER, message_rows, parse_eta, publish, stored_message
from .routing import route
from .rules import MAX_PRIORITY, MAX_RETRIES_LIMIT, WAL_LIMIT_BYTES, is_control_queue
from .settings import DEFAULTS, SETTINGS, Setting, normalize_key
from .states import JobState
from .store import STATS_EVENTS, JobStore, NewJob

TRANSPORT_ALIASES["sqlite"] = "queuectl_kombu.transport:Transport"

__version__ = "0.1.0"

__all__ = [
    "DEFAULTS",
    "DatabaseLocked",
    "DatabaseMoved",
    "DatabaseUnusable",
    "DuplicateJob",
    "InvalidConfig",
    "InvalidInput",
    "InvalidTransition",
    "InvalidValue",
    "Job",
    "JobNotFound",
    "JobState",
    "JobStore",
    "MAX_PRIORITY",
    "MAX_RETRIES_HEADER",
    "MAX_RETRIES_LIMIT",
    "NewJob",
    "PayloadTooLarge",
    "QueuectlError",
    "SETTINGS",
    "STATS_EVENTS",
    "Setting",
    "UNIQUE_HEADER",
    "WAL_LIMIT_BYTES",
    "__version__",
    "check_path",
    "is_control_queue",
    "message_rows",
    "normalize_key",
    "parse_eta",
    "publish",
    "route",
    "stored_message",
    "url_path",
]
