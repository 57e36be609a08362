"""Options shared by several commands, defined once and applied as decorators."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from queuectl_kombu import JobState

from .completion import complete_queue
from .output import FORMATS

F = TypeVar("F", bound=Callable[..., Any])

STATES = tuple(state.value for state in JobState)


def format_option(choices: Sequence[str] = FORMATS) -> Callable[[F], F]:
    """--format table|json|csv: one option, never a flag per format."""
    return click.option(
        "--format", "fmt", type=click.Choice(list(choices)), default="table", show_default=True,
        help="Output format: JSON and CSV for scripts.",
    )


def limit_option(default: int = 100) -> Callable[[F], F]:
    """--limit N (0: no limit)."""
    return click.option(
        "--limit", type=click.IntRange(min=0), default=default, show_default=True,
        help="Most jobs shown, oldest first (0: all).",
    )


def queue_filter_option(f: F) -> F:
    """--queue Q to show one queue only."""
    return click.option("--queue", shell_complete=complete_queue, help="Only jobs of this queue.")(f)


def timeout_option(default: float, what: str) -> Callable[[F], F]:
    """--timeout SECONDS for something that waits."""
    return click.option(
        "--timeout", type=click.FloatRange(min=0, min_open=True), default=default, show_default=True,
        help=f"Seconds to wait for {what}.",
    )


def _env_pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str] | None:
    env: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", ctx=ctx, param=param)
        env[name] = value
    return env or None


def job_options(f: F) -> F:
    """The options of one shell job (the JSON form's keys as kebab-case options)."""
    options = [
        click.option("--id", "job_id", help="Job id (default: a new UUID); must be unique."),
        click.option("--max-retries", type=int, help="Retries before the job is dead (default: config)."),
        click.option("--priority", type=int, help="0-9, higher runs first (default 0)."),
        click.option("--queue", shell_complete=complete_queue, help="Queue to put the job in (default: celery)."),
        click.option("--delay", type=float, help="Run no sooner than this many seconds from now."),
        click.option("--run-at", help="Run no sooner than this ISO 8601 time (naive means UTC)."),
        click.option("--timeout", type=float, help="Kill the command's process group after this many seconds."),
        click.option("--cwd", help="Directory to run the command in (default: the worker's)."),
        click.option(
            "--env", multiple=True, callback=_env_pairs, metavar="NAME=VALUE",
            help="Environment variable added to the worker's (repeatable).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def job_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The JSON-form keys of the job options that were given."""
    names = {
        "job_id": "id", "max_retries": "max_retries", "priority": "priority", "queue": "queue",
        "delay": "delay", "run_at": "run_at", "timeout": "timeout", "cwd": "cwd", "env": "env",
    }
    return {key: options[name] for name, key in names.items() if options.get(name) is not None}
