"""Tasks of the ready app: run_shell (the job the CLI enqueues) and ping.

They are shared tasks: every Celery app that imports this module has them, so the CLI's app
(made for its --db file) and the worker's app (``celery -A queuectl``) send and run the same task.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from .shell import CommandFailed, check_outcome, run_command

#: The name the CLI enqueues and the workers run.
RUN_SHELL = "queuectl.run_shell"


@shared_task(name=RUN_SHELL, throws=(CommandFailed,))  # expected: logged without a traceback
def run_shell(
    command: str,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run `command` through /bin/sh -c; a non-zero exit or a timeout fails the job (retried by the broker).

    Returns exit_code, duration, command, the last 64 KiB of stdout and stderr and their sizes.
    """
    try:
        outcome = run_command(command, cwd=cwd, env=env, timeout=timeout)
    except OSError as exc:  # the shell could not start: missing cwd, bad environment...
        where = f" in {cwd}" if cwd else ""
        raise CommandFailed(f"cannot run the command{where}: {exc.strerror or exc}") from None
    return check_outcome(outcome, timeout)


@shared_task(name="queuectl.ping")
def ping() -> str:
    """A no-op task to check that a worker runs."""
    return "pong"
