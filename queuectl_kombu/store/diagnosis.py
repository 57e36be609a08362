"""Reads for `queuectl doctor` (queuectl_kombu/doctor.py): what the retention keeps, the recent
events per minute, the write lock and the WAL's checkpoint (SQLite), the relations' sizes and the
jobs table's dead tuples and vacuums (PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass

from ..sql import QUERIES as Q
from .base import StoreBase, fresh


@dataclass(frozen=True)
class TableActivity:
    """A PostgreSQL table as its statistics view saw it last: live and dead tuples, and when it
    was last vacuumed and analyzed (epoch seconds; None: never), by hand or by autovacuum."""

    live_tuples: int
    dead_tuples: int
    last_vacuum: float | None
    last_autovacuum: float | None
    last_analyze: float | None
    last_autoanalyze: float | None


@dataclass(frozen=True)
class RelationSize:
    """A PostgreSQL table of the schema: its bytes with its indexes and TOAST, and its indexes'."""

    name: str
    total_bytes: int
    index_bytes: int


class DiagnosisReads(StoreBase):
    """What the doctor reads beside the counts (JobReads) and the quick check (MetricReads)."""

    @fresh
    def completed_kept(self) -> tuple[int, int]:
        """(completed jobs the retention keeps, the bytes of their payloads)."""
        row = self.db.connection().execute(Q["completed_kept"]).fetchone()
        return int(row[0]), int(row[1])

    @fresh
    def events_per_minute(self, since_minute: int) -> dict[int, dict[str, int]]:
        """The stats table's counts from minute `since_minute` (epoch seconds // 60) on, summed
        over the queues: {minute: {event: count}}."""
        result: dict[int, dict[str, int]] = {}
        for minute, _queue, event, count in self.db.connection().execute(Q["stats_since"], {"minute": since_minute}):
            per_event = result.setdefault(int(minute), {})
            per_event[str(event)] = per_event.get(str(event), 0) + int(count)
        return result

    def wal_checkpoint(self) -> tuple[int, int, int]:
        """A passive checkpoint now (it never waits, never truncates): (1 if it was kept from
        finishing, pages in the WAL, pages copied into the file so far). PostgreSQL: (0, 0, 0)."""
        return self.db.checkpoint(truncate=False)

    def write_lock_wait(self, timeout: float) -> float | None:
        """SQLite: seconds a new writer waits now for the file's write lock (None: not had within
        `timeout`). PostgreSQL has no lock of the whole database: None."""
        if self.db.engine != "sqlite":
            return None
        return self.db.write_lock_wait(timeout)  # type: ignore[union-attr]

    def relation_sizes(self) -> list[RelationSize]:
        """PostgreSQL: every table of the schema, largest first ([] on SQLite: one file)."""
        if self.db.engine != "postgresql":
            return []
        schema = self.db.target.schema  # type: ignore[union-attr]
        rows = self.db.connection().execute(Q["relation_sizes"], {"schema": schema})
        return [RelationSize(str(r[0]), int(r[1]), int(r[2])) for r in rows]

    def table_activity(self, table: str = "jobs") -> TableActivity | None:
        """PostgreSQL: `table`'s tuples and vacuums (None on SQLite, or before the server has
        statistics of it)."""
        if self.db.engine != "postgresql":
            return None
        schema = self.db.target.schema  # type: ignore[union-attr]
        row = self.db.connection().execute(Q["table_activity"], {"schema": schema, "table": table}).fetchone()
        if row is None:
            return None

        def when(value: object) -> float | None:
            return None if value is None else float(value)  # type: ignore[arg-type]

        return TableActivity(int(row[0]), int(row[1]), when(row[2]), when(row[3]), when(row[4]), when(row[5]))
