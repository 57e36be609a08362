"""The dashboard's machine-readable routes: /metrics (Prometheus, queuectl.metrics) and /healthz
(queuectl.health), the same reads as `queuectl metrics` and `queuectl health`."""

from __future__ import annotations

import json

from flask import Blueprint, request
from werkzeug.wrappers import Response

from ..health import DEFAULT_MAX_PENDING_AGE, check_health
from ..metrics import CONTENT_TYPE, render_metrics
from .board import board

bp = Blueprint("observe", __name__)

#: Longest wait for the workers' answers on these routes (seconds): a scrape must stay quick.
WORKERS_TIMEOUT = 1.0


@bp.get("/metrics")
def metrics() -> Response:
    """The file's metrics in the Prometheus text format."""
    b = board()
    return Response(render_metrics(b.store, b.celery, workers_timeout=WORKERS_TIMEOUT), mimetype=None,
                    content_type=CONTENT_TYPE)


@bp.get("/healthz")
def healthz() -> Response:
    """200 and the report as JSON when healthy, 503 when not. Query parameters as the command's
    options: ``max_pending_age`` (seconds) and ``no_workers_ok``."""
    try:
        max_pending_age = float(request.args.get("max_pending_age", DEFAULT_MAX_PENDING_AGE))
    except ValueError:
        return Response("max_pending_age must be a number of seconds\n", 400, mimetype="text/plain")
    b = board()
    report = check_health(b.store, b.celery, max_pending_age=max_pending_age,
                          workers_ok_missing="no_workers_ok" in request.args, timeout=WORKERS_TIMEOUT)
    return Response(json.dumps(report.as_dict()) + "\n", 200 if report.ok else 503, mimetype="application/json")
