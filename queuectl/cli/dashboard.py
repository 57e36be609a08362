"""`queuectl dashboard`: the web dashboard on this database, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import click

from .context import state
from .output import note


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; one other than loopback needs --auth.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: any free one, printed at start).")
@click.option("--auth", metavar="USER:PASSWORD", envvar="QUEUECTL_DASHBOARD_AUTH", show_envvar=True,
              help="Require HTTP basic auth with these credentials.")
def dashboard(host: str, port: int, auth: str | None) -> None:
    """Serve the web dashboard: jobs per state and queue, live workers, throughput, the job list,
    each job's output and result, the dead-letter queue with retry and purge.

    It reads the database like `status` and `list` do, and changes it only through the same
    calls as the CLI (every POST carries a CSRF token; what destroys asks first). It listens
    on 127.0.0.1 unless told otherwise, and refuses any other address without --auth.

    \b
    Examples:
      queuectl dashboard                     (then open http://127.0.0.1:8000/)
      queuectl dashboard --port 8080
      QUEUECTL_DASHBOARD_AUTH=ops:s3cret queuectl dashboard --host 0.0.0.0
    """
    # Flask and waitress are imported here: every other command starts without them.
    from ..dashboard import create_app
    from ..dashboard.security import is_loopback, parse_credentials
    from ..dashboard.server import serve

    try:
        credentials = parse_credentials(auth) if auth is not None else None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if credentials is None and not is_loopback(host):
        raise click.UsageError(
            f"refusing to listen on {host} without --auth USER:PASSWORD (or QUEUECTL_DASHBOARD_AUTH): "
            "anyone who reaches it could retry and delete jobs"
        )
    app = create_app(state().db_path, credentials)
    try:
        serve(app, host, port, lambda url: note(f"queuectl dashboard on {url} (Ctrl-C stops it)"))
    finally:
        app.extensions["queuectl"].close()
