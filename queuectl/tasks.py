"""Tasks of the ready app."""

from __future__ import annotations

from .app import app


@app.task(name="queuectl.ping")
def ping() -> str:
    """A no-op task to check that a worker runs."""
    return "pong"
