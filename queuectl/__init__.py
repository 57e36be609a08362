"""queuectl: a ready Celery app on the SQLite broker, and a job-queue CLI."""

from __future__ import annotations

from .app import app

__all__ = ["app"]
