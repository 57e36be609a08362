"""`queuectl backup` and `queuectl doctor`: a consistent copy of a SQLite queue while its workers
run, and the database's health and limits in a few lines (docs/operations.md)."""

from __future__ import annotations

import click

from queuectl_kombu import DatabaseUnusable, backup as backup_database, diagnose

from .context import state
from .output import json_text


@click.command()
@click.argument("dest", metavar="DEST")
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
def backup(dest: str, force: bool) -> None:
    """Copy the SQLite queue to DEST: one consistent snapshot, taken while workers run.

    The copy is written beside DEST and renamed into place once complete. In the copy (never in
    the database itself) the jobs that were running go back to pending, their attempt counted, as
    after a crash, and no consumer is left: `queuectl --db DEST ...` and workers on DEST pick up
    where the snapshot was. A PostgreSQL database is backed up with pg_dump instead.

    \b
    Examples:
      queuectl backup /var/backups/queuectl-$(date +%F).db
      queuectl --db /srv/q.db backup /srv/q.backup.db --force
    """
    summary = backup_database(state().db_path, dest, force=force)
    click.echo(summary.line())


@click.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Output format: JSON for scripts.")
def doctor(fmt: str) -> None:
    """Show the database's health and limits: integrity, size, WAL, write lock, jobs, retention,
    write rate (PostgreSQL: relation sizes and the jobs table's dead tuples).

    Exit 0 when healthy or with warnings only (lines starting `warning:`), 1 when the integrity
    check finds problems. A database that does not exist is an error, and is not created.

    \b
    Examples:
      queuectl doctor
      queuectl --db postgresql://queuectl@db/queuectl doctor --format json
    """
    cli_state = state()
    store = cli_state.existing_jobstore()
    if store is None:
        raise DatabaseUnusable(f"database {cli_state.db_name} does not exist")
    diagnosis = diagnose(store)
    if fmt == "json":
        click.echo(json_text(diagnosis.as_dict()))
    else:
        click.echo("\n".join(diagnosis.lines()))
    if not diagnosis.ok:
        raise click.ClickException(f"database {diagnosis.database} failed its integrity check "
                                   f"({len(diagnosis.problems)} problem(s))")
