"""Waiting on a condition with a deadline: the one poll loop of the test suite.

Tests never sleep for a fixed time to let something happen; they wait for it to happen, and fail
with a message naming what they waited for (and, through ``on_fail``, what the harness can tell
about the processes and files involved) when it does not happen in time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not hold before its deadline."""


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    *,
    what: str | Callable[[], str],
    interval: float = 0.05,
    on_fail: Callable[[], str] | None = None,
    retry_on: tuple[type[Exception], ...] = (),
) -> T:
    """Call `predicate` every `interval` s until it returns something truthy, and return that.

    After `timeout` s raise WaitTimeout, saying `what` was awaited (a string, or a callable for a
    message built at the deadline), the last value, and what `on_fail` returns. A predicate may
    fail the test at once by raising (e.g. when the process it waits on exited); exceptions of
    the types in `retry_on` (other than AssertionError) count as a falsy answer instead, the last
    one reported at the deadline (e.g. reading a file another process is writing).
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
        except AssertionError:
            raise
        except retry_on as exc:
            value, last_error = None, exc  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() >= deadline:
            text = what() if callable(what) else what
            parts = [f"timed out after {timeout:g}s waiting for {text} (last: {value!r})"]
            if last_error is not None:
                parts.append(f"last predicate error: {last_error!r}")
            if on_fail is not None:
                parts.append(on_fail())
            raise WaitTimeout("\n".join(parts))
        time.sleep(interval)
