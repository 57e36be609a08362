"""`queuectl metrics` and `queuectl health`: the Prometheus metrics of the file, and whether the
file and its workers are healthy (for cron, node_exporter's textfile collector, a monitor)."""

from __future__ import annotations

import click

from queuectl_kombu import DatabaseUnusable, JobStore

from ..app import make_app
from ..health import DEFAULT_MAX_PENDING_AGE, check_health
from ..metrics import render_metrics
from .context import state
from .options import timeout_option


@click.command()
@click.option("--workers/--no-workers", "ask_workers", default=True, show_default=True,
              help="Count the workers that answer a ping (waits up to --timeout).")
@timeout_option(1.0, "workers to answer")
def metrics(ask_workers: bool, timeout: float) -> None:
    """Print the Prometheus metrics of the database (the text format of /metrics).

    \b
    Examples:
      queuectl metrics
      queuectl metrics > /var/lib/node_exporter/queuectl.prom.tmp && \\
        mv /var/lib/node_exporter/queuectl.prom.tmp /var/lib/node_exporter/queuectl.prom
    """
    cli_state = state()
    store = cli_state.existing_jobstore()
    if store is None:
        raise DatabaseUnusable(f"database {cli_state.db_name} does not exist")
    app = cli_state.celery() if ask_workers else None
    click.echo(render_metrics(store, app, workers_timeout=timeout).decode("utf-8"), nl=False)


@click.command()
@click.option("--max-pending-age", type=click.FloatRange(min=0), default=DEFAULT_MAX_PENDING_AGE, show_default=True,
              metavar="SECONDS", help="Unhealthy when a runnable job has waited longer than this.")
@click.option("--no-workers-ok", "workers_ok_missing", is_flag=True,
              help="Healthy without a worker answering (no ping is sent).")
@timeout_option(1.0, "a worker to answer")
def health(max_pending_age: float, workers_ok_missing: bool, timeout: float) -> None:
    """Check the database and its workers: exit 0 when healthy, 1 with one line why when not.

    Healthy: the file opens and passes SQLite's quick check, a worker answers a ping, the
    oldest runnable job has waited at most --max-pending-age, the WAL is within its limit.

    \b
    Examples:
      queuectl health
      queuectl health --max-pending-age 300 --no-workers-ok
    """
    path = state().db_path
    store = JobStore.shared(path)  # opened by the check only if the file exists: never created here
    app = make_app(path)
    try:
        report = check_health(store, app, max_pending_age=max_pending_age, workers_ok_missing=workers_ok_missing,
                              timeout=timeout)
    finally:
        app.close()
        store.close()
    if not report.ok:
        raise click.ClickException(f"unhealthy: {report.line()}")
    click.echo(report.line())
