"""`queuectl enqueue` and `queuectl run`: add shell jobs, one through Celery or many in batches."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import click

from queuectl_kombu import DuplicateJob
from queuectl_kombu.transport import UNIQUE_HEADER

from ..jobspec import JobSpec, job_from_json, job_from_mapping
from ..tasks import RUN_SHELL
from . import bulk
from .context import state
from .options import job_fields, job_options
from .output import note


def submit(spec: JobSpec) -> str:
    """Enqueue one job through Celery's run_shell.apply_async; returns its id."""
    cli_state = state()
    store = cli_state.store()
    if spec.id is not None and store.task_exists(spec.id):
        # Checked before publishing so that nothing is written; UNIQUE_HEADER closes the race.
        raise DuplicateJob(f"a job with id {spec.id!r} already exists")
    task_id = spec.id or str(uuid.uuid4())
    run_shell = cli_state.celery().tasks[RUN_SHELL]
    run_shell.apply_async(
        kwargs=spec.task_kwargs(),
        task_id=task_id,
        priority=spec.priority,
        countdown=spec.delay,
        eta=spec.run_at,
        queue=spec.queue,
        headers={**spec.headers(), UNIQUE_HEADER: 1},
    )
    return task_id


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None] | None]:
    if not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=total, label="enqueuing", file=sys.stderr, show_pos=True) as bar:
        yield bar.update


def enqueue_file(path: str, batch_size: int, defaults: dict[str, Any]) -> int:
    """Validate the whole file, then publish it in transactions of `batch_size` jobs."""
    cached = bulk.read_lines(path)
    total, ids = bulk.validate_file(path, cached, defaults)
    if total == 0:
        return 0
    cli_state = state()
    bulk.check_new_ids(cli_state.store(), ids, path)
    app = cli_state.celery()
    with _progress(total) as on_batch:
        return bulk.publish_file(app, path, cached, batch_size, defaults, on_batch)


@click.command()
@click.argument("job_json", metavar="[JOB]", required=False)
@click.option("--command", help="The shell command of the job (instead of JSON).")
@click.option(
    "--file", "file_path", metavar="PATH",
    help="Many jobs: one JSON job per line ('-': stdin); the options apply to every line.",
)
@click.option(
    "--batch-size", type=click.IntRange(1, 100_000), default=bulk.DEFAULT_BATCH, show_default=True,
    help="Jobs per transaction with --file.",
)
@job_options
def enqueue(job_json: str | None, command: str | None, file_path: str | None, batch_size: int,
            **options: Any) -> None:
    """Add a shell job and print its id (only the id, on stdout).

    A job is JSON with the keys id, command, max_retries, priority, queue, delay (seconds),
    run_at (ISO 8601), timeout (seconds), cwd and env (an object); or --command with options;
    or --file with one JSON job per line, written in batched transactions (the count is
    printed on stderr). A job whose command exits non-zero or times out is retried with
    exponential backoff, then moved to the dead-letter queue.

    \b
    Examples:
      queuectl enqueue '{"id":"job1","command":"echo hi","max_retries":3}'
      ID=$(queuectl enqueue --command "make test" --priority 5 --timeout 600)
      queuectl enqueue --command "backup.sh" --run-at 2030-01-31T02:00:00Z --env TARGET=s3
      queuectl enqueue --file jobs.jsonl --queue batch
    """
    given = [name for name, value in (("JOB", job_json), ("--command", command), ("--file", file_path)) if value]
    if len(given) != 1:
        raise click.UsageError(
            "give one job as JSON, or --command, or --file" if not given
            else f"give only one of JOB, --command and --file, not {' and '.join(given)}"
        )
    fields = job_fields(options)
    if job_json is not None:
        if fields:
            raise click.UsageError("give the job as JSON or with options, not both")
        click.echo(submit(job_from_json(job_json)))
    elif command is not None:
        click.echo(submit(job_from_mapping({**fields, "command": command})))
    else:
        assert file_path is not None
        if "id" in fields:
            raise click.UsageError("--id cannot apply to every job of --file: put ids in the file")
        count = enqueue_file(file_path, batch_size, fields)
        note(f"enqueued {count} jobs")


@click.command()
@click.argument("command")
@job_options
def run(command: str, **options: Any) -> None:
    """Add a shell job (the short form of enqueue --command) and print its id.

    \b
    Examples:
      queuectl run "echo hi"
      queuectl run --max-retries 5 --timeout 30 "curl -fsS https://example.com/health"
    """
    click.echo(submit(job_from_mapping({**job_fields(options), "command": command})))
