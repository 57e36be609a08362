"""`queuectl init` and `queuectl copy`: the queue's tables made in a file of the application's
own (transactional enqueue, docs/transactions.md), and a queue copied or moved between
databases, SQLite and PostgreSQL alike (docs/operations.md)."""

from __future__ import annotations

import click

from queuectl_kombu import copy_queue, install_schema, mask_url

from ..settings import normalize_db
from .context import state
from .options import format_option
from .output import json_text


@click.command()
def init() -> None:
    """Create the queue's tables in the --db database, even a SQLite file that already holds an
    application's own tables (any other command refuses such a file): the application can then
    enqueue Celery tasks inside its own transactions (queuectl_kombu.enqueue_in). Running it
    again checks the tables and changes nothing.

    \b
    Examples:
      queuectl --db instance/app.db init
      queuectl --db postgresql://app@db.internal:5432/app init
    """
    where = install_schema(state().db_path)
    click.echo(f"the queue's tables are in {where}")


@click.command()
@click.argument("source", metavar="SOURCE")
@click.argument("dest", metavar="DEST")
@click.option("--move", is_flag=True, help="Delete the copied jobs from SOURCE once DEST has committed them.")
@click.option("--force", is_flag=True, help="Copy even while workers consume from SOURCE.")
@format_option(("table", "json"))
def copy(source: str, dest: str, move: bool, force: bool, fmt: str) -> None:
    """Copy every job of SOURCE that is not completed into DEST, with the config, the queues,
    exchanges, bindings and the results that have not expired: SQLite to PostgreSQL and back.

    SOURCE and DEST are SQLite files or postgresql:// URLs (a missing DEST file is created).
    Jobs keep their state, attempts, max retries, next run time, priority, last error, payload
    and task id; a job that was processing goes back to pending, its attempt counted. DEST gets
    everything in one transaction, or nothing. A job whose task id DEST holds in the same queue
    is skipped and reported: a copy can be run again. Refused while workers consume from
    SOURCE, unless --force.

    \b
    Examples:
      queuectl copy ~/.local/share/queuectl/queuectl.db postgresql://app@db:5432/app
      queuectl copy --move postgresql://app@db:5432/app backup.db
    """
    report = copy_queue(normalize_db(source), normalize_db(dest), move=move, force=force)
    if fmt == "json":
        click.echo(json_text(report.as_dict()))
        return
    w = report.written
    per_state = ", ".join(f"{n} {s}" for s, n in sorted(w.jobs.items())) or "none"
    click.echo(f"copied {sum(w.jobs.values())} jobs from {mask_url(report.source)} to {mask_url(report.dest)}: "
               f"{per_state}")
    if w.requeued:
        click.echo(f"  {w.requeued} were processing: pending again at the destination, the attempt counted")
    if w.skipped:
        shown = ", ".join(f"{t} ({q})" for t, q in w.skipped[:10]) + (" ..." if len(w.skipped) > 10 else "")
        click.echo(f"skipped {len(w.skipped)} jobs the destination holds already: {shown}")
    if w.different:
        shown = ", ".join(f"{t} ({q})" for t, q in w.different[:10]) + (" ..." if len(w.different) > 10 else "")
        click.echo(f"  {len(w.different)} of them: the destination gives the task id to another message "
                   f"(a move leaves these in the source): {shown}")
    click.echo(f"config: {w.config} settings; new queues: {w.queues}, exchanges: {w.exchanges}, "
               f"bindings: {w.bindings}, results: {w.results}")
    if report.workers:
        click.echo(f"warning: {len(report.workers)} worker connection(s) were consuming from the source (--force)",
                   err=True)
    if move:
        click.echo(f"moved: {report.moved} jobs deleted from {mask_url(report.source)}")
