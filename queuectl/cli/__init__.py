"""The queuectl command line: the main group (--db, -v) and one-line errors; commands live in submodules."""

from __future__ import annotations

import logging
import sqlite3
import sys
import traceback
from typing import Any

import click

from queuectl_kombu import InvalidInput, QueuectlError
from ..settings import default_db_path
from . import cancel, config, dashboard, dlq, enqueue, jobs, monitoring, operations, queues, transfer, worker
from .completion import complete_path
from .context import CliState

EXAMPLES = """\b
Examples:
  queuectl enqueue '{"id":"job1","command":"echo hi","max_retries":3}'
  queuectl enqueue --command "make test" --id build-7 --priority 5 --delay 30
  queuectl enqueue --file jobs.jsonl
  queuectl run "echo hi"
  queuectl worker start --count 4 --detach
  queuectl worker stop
  queuectl status
  queuectl list --state failed --format json
  queuectl show job1
  queuectl dlq list
  queuectl dlq retry job1          (or: queuectl dlq retry --all)
  queuectl dlq purge
  queuectl cancel job1             (or: queuectl cancel --queue batch --state pending)
  queuectl queue pause batch       (queuectl queue resume batch, queuectl queue list)
  queuectl config show
  queuectl config get max-retries
  queuectl config set backoff-base 3
  queuectl metrics
  queuectl health --max-pending-age 300
  queuectl dashboard --port 8000
  queuectl --db app.db init        (the queue beside an application's tables)
  queuectl copy queue.db postgresql://app@db:5432/app
  queuectl backup /backups/q.db    (a consistent copy while workers run)
  queuectl doctor                  (or: queuectl doctor --format json)
"""


class QueuectlGroup(click.Group):
    """The main group: every error ends as one line `Error: ...` on stderr (1 failed, 2 bad usage)."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; turn library errors into click errors at this one boundary."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except InvalidInput as exc:  # the user's input was wrong: exit 2, like click's usage errors
            _trace_if_verbose(ctx)
            raise click.UsageError(str(exc)) from exc
        except QueuectlError as exc:
            _trace_if_verbose(ctx)
            raise click.ClickException(str(exc)) from exc
        except (sqlite3.Error, OSError) as exc:
            _trace_if_verbose(ctx)
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # a bug or an unexpected Celery error: still one line
            _trace_if_verbose(ctx)
            raise click.ClickException(f"{type(exc).__name__}: {exc} (run with -v for the traceback)") from exc

    def main(  # type: ignore[override]
        self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
        standalone_mode: bool = True, **extra: Any,
    ) -> Any:
        """Run the CLI; print errors as one line and exit with their code.

        Shell completion (_QUEUECTL_COMPLETE set) is answered inside super().main(), which
        exits before any command runs; the handlers below never see it.
        """
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            code = exc.exit_code
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"Error: {exc.format_message()}{hint}", err=True)
            code = exc.exit_code
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            code = exc.exit_code
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


def _trace_if_verbose(ctx: click.Context) -> None:
    obj = ctx.find_object(CliState)
    if obj is not None and obj.verbose:
        traceback.print_exc(file=sys.stderr)


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)


@click.group(cls=QueuectlGroup, epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db", "db_path", metavar="PATH|URL", shell_complete=complete_path,
    help="The queuectl database: a SQLite file, or postgresql://user:password@host:5432/dbname "
    "[env: QUEUECTL_DB; default: ~/.local/share/queuectl/queuectl.db]. Workers started here use the same.",
)
@click.option("-v", "--verbose", count=True, help="Show progress logs; tracebacks with errors (-vv: debug).")
@click.version_option(package_name="queuectl")
@click.pass_context
def cli(ctx: click.Context, db_path: str | None, verbose: int) -> None:
    """queuectl: shell jobs and Celery tasks in one SQLite file, run by Celery workers.

    Jobs are pending, processing, completed, failed (waiting for a retry with exponential
    backoff) or dead (the dead-letter queue, after max-retries). Data goes to stdout,
    messages to stderr; errors exit with 1 (failed operation) or 2 (bad usage).
    """
    _configure_logging(verbose)
    state = CliState(db_path or default_db_path(), verbose)
    ctx.obj = state
    ctx.call_on_close(state.close)


for _command in (enqueue.enqueue, enqueue.run, worker.worker, jobs.status, jobs.list_jobs, jobs.show, dlq.dlq,
                 cancel.cancel, queues.queue, config.config, monitoring.metrics, monitoring.health,
                 dashboard.dashboard, transfer.init, transfer.copy, operations.backup, operations.doctor):
    cli.add_command(_command)


def main(args: list[str] | None = None) -> Any:
    """The console script `queuectl`."""
    return cli.main(args=args, prog_name="queuectl")
