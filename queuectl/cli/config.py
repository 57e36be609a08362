"""`queuectl config show|get|set`: runtime settings that running workers apply within a second."""

from __future__ import annotations

from typing import Any

import click

from queuectl_kombu import DEFAULTS, SETTINGS, normalize_key

from .completion import complete_config_key
from .context import state
from .options import format_option
from .output import emit_rows, note, number

COLUMNS = ("key", "value", "default", "description")


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def current_settings() -> dict[str, Any]:
    """The settings in force: the defaults when the database does not exist yet."""
    store = state().existing_jobstore()
    return dict(DEFAULTS) if store is None else store.settings(fresh=True)


@click.group()
def config() -> None:
    """Runtime settings kept in the database (workers apply a change within a second).

    \b
    Keys: max-retries, backoff-base, visibility-timeout, retention.
    Examples:
      queuectl config show
      queuectl config set max-retries 5
    """


@config.command("show")
@format_option()
def config_show(fmt: str) -> None:
    """Show every setting with its value, default and meaning.

    \b
    Examples:
      queuectl config show
      queuectl config show --format json
    """
    values = current_settings()
    rows = [
        {"key": _kebab(name), "value": values[name], "default": s.default, "description": s.help}
        for name, s in SETTINGS.items()
    ]
    emit_rows(rows, COLUMNS, fmt)


@config.command("get")
@click.argument("key", shell_complete=complete_config_key)
def config_get(key: str) -> None:
    """Print one setting's value.

    \b
    Examples:
      queuectl config get backoff-base
    """
    name = normalize_key(key)
    click.echo(number(current_settings()[name]))


@config.command("set", context_settings={"ignore_unknown_options": True})  # VALUE may be -1
@click.argument("key", shell_complete=complete_config_key)
@click.argument("value")
def config_set(key: str, value: str) -> None:
    """Set one setting (validated; running workers apply it within a second).

    \b
    max-retries         retries after the first run before a job is dead (whole, >= 0)
    backoff-base        a failed job waits backoff-base ** attempts seconds (>= 1)
    visibility-timeout  seconds a running job's lease lasts unless renewed (> 0)
    retention           seconds completed jobs are kept, 0: deleted at once (>= 0)

    \b
    Examples:
      queuectl config set max-retries 5
      queuectl config set backoff-base 1.5
    """
    name = normalize_key(key)
    typed = SETTINGS[name].parse(value, label=_kebab(name))  # validated before the database is touched
    state().jobstore().set_config(name, typed)
    note(f"{_kebab(name)} = {number(typed)}")
