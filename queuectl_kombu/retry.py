"""The retry policy: a pure decision, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from .states import JobState


#: The longest backoff: a year.
MAX_DELAY = 365 * 86400.0


@dataclass(frozen=True)
class RetryDecision:
    """What happens to a job whose attempt failed."""

    state: JobState
    next_run_at: float | None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: retry after backoff_base ** attempts seconds, max_retries times."""

    max_retries: int = 3
    backoff_base: float = 2.0

    def delay(self, attempts: int) -> float:
        """Seconds to wait before the next run after `attempts` failed runs (at most MAX_DELAY)."""
        try:
            return min(float(self.backoff_base) ** attempts, MAX_DELAY)
        except OverflowError:
            return MAX_DELAY

    def decide(self, attempts: int, now: float, max_retries: int | None = None) -> RetryDecision:
        """Retry while attempts <= max_retries, otherwise the job is dead."""
        limit = self.max_retries if max_retries is None else max_retries
        if attempts <= limit:
            return RetryDecision(JobState.FAILED, now + self.delay(attempts))
        return RetryDecision(JobState.DEAD, None)
