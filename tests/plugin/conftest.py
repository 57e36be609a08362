"""Celery's own testing fixtures on queuectl, as docs/testing.md tells a project to set them up:
a fresh queuectl file per test behind celery_app and celery_worker."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def celery_config(queuectl_config: dict[str, Any]) -> dict[str, Any]:
    return queuectl_config
