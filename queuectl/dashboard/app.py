"""The dashboard's Flask app: its pages, its actions, its guards, the filters of its templates."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Flask, render_template
from werkzeug.exceptions import HTTPException

from ..cli.output import age, iso_time
from . import actions, observe, pages, security
from .board import Board

#: Seconds between two questions to the workers while someone looks.
WORKER_INTERVAL = 5.0


def create_app(db_path: str, credentials: tuple[str, str] | None = None, *,
               worker_interval: float = WORKER_INTERVAL) -> Flask:
    """The dashboard of the database at `db_path` (created if missing), behind HTTP basic auth
    when `credentials` (user, password) are given. ``app.extensions["queuectl"].close()``
    releases its connections and stops its worker watch."""
    app = Flask(__name__)
    security.install(app, credentials)
    b = Board(db_path, worker_interval)
    app.extensions["queuectl"] = b
    app.register_blueprint(pages.bp)
    app.register_blueprint(actions.bp)
    app.register_blueprint(observe.bp)
    app.add_template_filter(iso_time, "iso")
    app.add_template_filter(age, "age")
    app.add_template_filter(_clock, "clock")
    app.register_error_handler(400, _error_page)
    app.register_error_handler(403, _error_page)
    app.register_error_handler(404, _error_page)
    return app


def _clock(timestamp: float) -> str:
    """HH:MM:SS UTC of epoch seconds."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%H:%M:%S")


def _error_page(error: HTTPException) -> tuple[str, int]:
    """A refused or missing page, in the dashboard's frame."""
    return render_template("error.html", error=error), error.code or 500
