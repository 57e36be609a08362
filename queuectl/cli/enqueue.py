"""`queuectl enqueue` and `queuectl run`: add shell jobs, one through Celery or many in batches."""

from __future__ import annotations

import contextlib
import gc
import itertools
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import click

from queuectl_kombu import UNIQUE_HEADER, DuplicateJob

from ..jobspec import JobSpec, job_from_json, job_from_mapping
from ..tasks import RUN_SHELL
from . import bulk
from .context import state
from .options import job_fields, job_options
from .output import note


def submit(spec: JobSpec) -> str:
    """Enqueue one job through Celery's run_shell.apply_async; returns its id."""
    cli_state = state()
    store = cli_state.jobstore()
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
def _progress(total: int | None) -> Iterator[Callable[[int], None] | None]:
    if total is None or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=total, label="enqueuing", file=sys.stderr, show_pos=True) as bar:
        yield bar.update


def enqueue_file(path: str, batch_size: int | None, defaults: dict[str, Any]) -> int:
    """Publish a JSON-lines file: in one transaction, or validated first and then in batches.

    Python's cyclic garbage collector is paused meanwhile: a file makes hundreds of thousands
    of objects that hold no cycles, and each collection would walk all of them again."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _enqueue_file(path, batch_size, defaults)
    finally:
        if gc_was_enabled:
            gc.enable()


def _enqueue_file(path: str, batch_size: int | None, defaults: dict[str, Any]) -> int:
    cached = bulk.read_lines(path)
    cli_state = state()
    total: int | None = None
    parsed: list[JobSpec] | None = None
    # In batches, into a database that does not exist yet (a bad file must not create one), or
    # with a progress bar (its length), the whole file is checked before anything is written;
    # else it is checked as it is written.
    if batch_size is not None or not cli_state.exists() or sys.stderr.isatty():
        total, ids, parsed = bulk.validate_file(path, cached, defaults)
        if total == 0:
            return 0
        bulk.check_new_ids(cli_state.jobstore(), ids, path)
    if parsed is None:
        ids = {}
        specs: Iterator[JobSpec] = (spec for _, spec in bulk.checked_jobs(path, cached, defaults, ids))
    else:
        specs = iter(parsed)  # checked above: not parsed twice
    first = next(specs, None)  # an empty file creates no database
    if first is None:
        return 0
    try:
        with _progress(total) as on_batch:
            return bulk.publish_file(cli_state.celery(), cli_state.jobstore(), itertools.chain([first], specs),
                                     batch_size, on_batch)
    except DuplicateJob as exc:  # an id of the file that a job of the database already has
        if exc.task_id not in ids:
            raise
        name = "<stdin>" if path == "-" else path
        raise DuplicateJob(f"{name} line {ids[exc.task_id]}: a job with id {exc.task_id!r} already exists",
                           exc.task_id) from None


@click.command()
@click.argument("job_json", metavar="[JOB]", required=False)
@click.option("--command", help="The shell command of the job (instead of JSON).")
@click.option(
    "--file", "file_path", metavar="PATH",
    help="Many jobs: one JSON job per line ('-': stdin); the options apply to every line.",
)
@click.option(
    "--batch-size", type=click.IntRange(1, 1_000_000), default=None,
    help="With --file: commit every N jobs (the file is checked first) instead of the whole file "
    "in one transaction, so that other writers wait less.",
)
@job_options
def enqueue(job_json: str | None, command: str | None, file_path: str | None, batch_size: int | None,
            **options: Any) -> None:
    """Add a shell job and print its id (only the id, on stdout).

    A job is JSON with the keys id, command, max_retries, priority, queue, delay (seconds),
    run_at (ISO 8601), timeout (seconds), cwd and env (an object); or --command with options;
    or --file with one JSON job per line, all written in one transaction (the count is
    printed on stderr): a bad line or a used id writes nothing. A job whose command exits non-zero or times out is retried with
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
