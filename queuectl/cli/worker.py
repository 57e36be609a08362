"""`queuectl worker start|stop`: Celery worker pools on the CLI's database, stopped by remote control."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import click

from queuectl_kombu import is_postgres_url

from ..settings import data_dir_db_path
from ..workers import answering
from .completion import complete_queue
from .context import CliState, state
from .options import timeout_option
from .output import note
from .remote import live_workers, wait_until_gone

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def worker_argv(count: int, queues: str | None, name: str, log_level: str) -> list[str]:
    """The celery command line of one worker pool of `count` processes."""
    argv = [sys.executable, "-m", "celery", "-A", "queuectl", "worker", "-c", str(count), "-n", name,
            "-l", log_level]
    if queues:
        argv += ["-Q", queues]
    return argv


def _parse_queues(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    names = [q.strip() for q in value.split(",") if q.strip()]
    if not names:
        raise click.BadParameter("name at least one queue", ctx=ctx, param=param)
    return ",".join(names)


def default_log_file(db_path: str) -> str:
    """Where a detached worker writes its log: beside the database file; for a PostgreSQL
    database, worker.log in the per-user data directory (~/.local/share/queuectl/)."""
    if is_postgres_url(db_path):
        directory = os.path.dirname(data_dir_db_path())
        os.makedirs(directory, exist_ok=True)
        return os.path.join(directory, "worker.log")
    return os.path.splitext(db_path)[0] + ".worker.log"


def _start_detached(cli_state: CliState, argv: list[str], env: dict[str, str], name: str, log_file: str,
                    timeout: float) -> None:
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # not killed with this terminal; one group for its pool
        )
    note(f"worker {name} starting in the background: pid {proc.pid}, log {log_file}")
    app = cli_state.celery()
    deadline = time.monotonic() + timeout
    while name not in answering(app, 0.5, [name]):
        code = proc.poll()
        if code is not None:
            raise click.ClickException(f"worker {name} exited with code {code}; see {log_file}")
        if time.monotonic() >= deadline:
            raise click.ClickException(
                f"worker {name} (pid {proc.pid}) did not answer within {timeout:g}s; see {log_file}"
            )
    note(f"worker {name} ready (pid {proc.pid})")


@click.group()
def worker() -> None:
    """Start and stop Celery worker pools on the database.

    \b
    Examples:
      queuectl worker start --count 4 --detach
      queuectl worker stop
    """


@worker.command("start")
@click.option("--count", "-c", type=click.IntRange(min=1), default=1, show_default=True,
              help="Jobs run at once (processes of the pool).")
@click.option("--queues", "-Q", callback=_parse_queues, shell_complete=complete_queue,
              help="Comma-separated queues to take jobs from [default: celery].")
@click.option("--detach", is_flag=True, help="Run in the background; print the pid on stderr.")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Log of a detached worker [default: DB.worker.log].")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="INFO", show_default=True)
@timeout_option(30.0, "a detached worker to answer")
def start(count: int, queues: str | None, detach: bool, log_file: str | None, log_level: str, timeout: float) -> None:
    """Start a worker pool of COUNT processes, in the foreground or detached.

    It runs `python -m celery -A queuectl worker -c COUNT` with QUEUECTL_DB set to this
    database. In the foreground it replaces this process (stop it with Ctrl-C or SIGTERM);
    with --detach it runs in the background, and this command returns once it answers.

    \b
    Examples:
      queuectl worker start --count 4
      queuectl worker start --count 3 --queues celery,batch --detach
    """
    cli_state = state()
    cli_state.jobstore()  # create the database now, so that a bad path fails here, not in the worker
    name = f"queuectl-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    argv = worker_argv(count, queues, name, log_level.upper())
    env = dict(os.environ, QUEUECTL_DB=cli_state.db_path)
    if detach:
        _start_detached(cli_state, argv, env, name, log_file or default_log_file(cli_state.db_path), timeout)
        return
    cli_state.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


@worker.command("stop")
@timeout_option(60.0, "running jobs to finish and the workers to exit")
@click.option("--inspect-timeout", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Seconds to wait for workers to say who they are.")
def stop(timeout: float, inspect_timeout: float) -> None:
    """Stop every worker gracefully: running jobs finish first.

    Sends Celery's shutdown to all workers of the database, then waits until none answers
    a ping and (on this host) their processes have exited. No PID files.

    \b
    Examples:
      queuectl worker stop
      queuectl worker stop --timeout 300
    """
    cli_state = state()
    if not cli_state.exists():
        note("no workers running (no database yet)")
        return
    app = cli_state.celery()
    workers = live_workers(app, inspect_timeout)
    if not workers:
        note("no workers running")
        return
    note(f"stopping {len(workers)} worker(s): {', '.join(w.name for w in workers)}")
    app.control.shutdown()
    still = wait_until_gone(app, workers, timeout)
    if still:
        raise click.ClickException(f"still running after {timeout:g}s: {', '.join(still)}")
    note(f"stopped {len(workers)} worker(s)")

