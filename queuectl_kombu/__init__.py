"""queuectl_kombu: a kombu transport and Celery result backend in one SQLite file, or in a
PostgreSQL database (docs/postgresql.md).

Importing the package registers the ``sqlite://``, ``postgresql://`` and ``postgres://`` schemes
with kombu. The names below are its
public API (what the queuectl command line uses); docs/architecture.md maps the modules.

Steering the queue: ``JobStore.pause_queue`` / ``resume_queue`` / ``paused_queues`` /
``queue_overview`` (QueueInfo), ``cancel_jobs`` / ``cancel_matching`` (Cancellation) and
``JobStore.cancel_waiting``; ``JobStore.dlq_retry`` runs a cancelled job again.

Operations (docs/operations.md): ``backup`` (BackupSummary) copies a SQLite queue while its workers
run; ``diagnose`` (Diagnosis) is what ``queuectl doctor`` reports.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES

from .paths import check_path, url_path
from .postgres import is_postgres_url
from .postgres import mask as mask_url
from .backup import BackupSummary, backup
from .cancel import (
    OUTCOME_CANCELLED,
    OUTCOME_FINISHED,
    OUTCOME_NOT_STOPPABLE,
    OUTCOME_STILL_RUNNING,
    Cancellation,
    cancel_jobs,
    cancel_matching,
)
from .doctor import Diagnosis, diagnose
from .exceptions import (
    BackupFailed,
    DatabaseLocked,
    ConstraintViolated,
    DatabaseMoved,
    DatabaseUnreachable,
    DatabaseUnusable,
    DuplicateJob,
    InvalidConfig,
    InvalidInput,
    InvalidTransition,
    InvalidValue,
    JobNotFound,
    PayloadTooLarge,
    QueuectlError,
    QueueNotFound,
    WorkersRunning,
)
from .copying import CopyReport, copy_queue
from .db import install_schema
from .enqueue import enqueue_in
from .jobs import Job
from .publishing import MAX_RETRIES_HEADER, UNIQUE_HEADER, message_rows, parse_eta, publish, stored_message
from .routing import route
from .rules import CANCELLED, MAX_PRIORITY, MAX_RETRIES_LIMIT, REVIVED_HEADER, WAL_LIMIT_BYTES, is_control_queue
from .settings import DEFAULTS, SETTINGS, Setting, normalize_key
from .states import JobState
from .store import STATS_EVENTS, JobStore, NewJob, QueueInfo

TRANSPORT_ALIASES["sqlite"] = "queuectl_kombu.transport:Transport"
TRANSPORT_ALIASES["postgresql"] = "queuectl_kombu.transport:Transport"
TRANSPORT_ALIASES["postgres"] = "queuectl_kombu.transport:Transport"

__version__ = "0.1.0"

__all__ = [
    "BackupFailed",
    "BackupSummary",
    "CANCELLED",
    "Cancellation",
    "CopyReport",
    "DEFAULTS",
    "DatabaseLocked",
    "ConstraintViolated",
    "DatabaseMoved",
    "DatabaseUnreachable",
    "DatabaseUnusable",
    "Diagnosis",
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
    "OUTCOME_CANCELLED",
    "OUTCOME_FINISHED",
    "OUTCOME_NOT_STOPPABLE",
    "OUTCOME_STILL_RUNNING",
    "PayloadTooLarge",
    "QueueInfo",
    "QueueNotFound",
    "QueuectlError",
    "REVIVED_HEADER",
    "SETTINGS",
    "STATS_EVENTS",
    "Setting",
    "UNIQUE_HEADER",
    "WAL_LIMIT_BYTES",
    "WorkersRunning",
    "__version__",
    "backup",
    "cancel_jobs",
    "enqueue_in",
    "install_schema",
    "cancel_matching",
    "copy_queue",
    "check_path",
    "diagnose",
    "is_control_queue",
    "is_postgres_url",
    "mask_url",
    "message_rows",
    "normalize_key",
    "parse_eta",
    "publish",
    "route",
    "stored_message",
    "url_path",
]
