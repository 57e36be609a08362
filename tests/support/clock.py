"""A clock the test moves, for the stores that take one (``JobStore``, ``ResultStore``)."""

from __future__ import annotations

#: Where every test clock starts (2023-11-14): far from 0 and from the machine's own time.
START = 1_700_000_000.0


class Clock:
    """A settable clock for the store: tests move time instead of sleeping."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
