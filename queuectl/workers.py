"""Which workers answer Celery's remote control: a ping, for the command line, the metrics and
the health check alike (queuectl/cli/remote.py asks them more)."""

from __future__ import annotations

from celery import Celery


def answering(app: Celery, timeout: float, names: list[str] | None = None, limit: int | None = None) -> set[str]:
    """Names of the workers that answer a ping within `timeout` (among `names` if given; done
    as soon as `limit` have answered, if given)."""
    replies = app.control.ping(destination=names, timeout=timeout, limit=limit) or []
    return {name for reply in replies for name in reply}
