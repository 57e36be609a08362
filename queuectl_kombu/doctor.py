"""queuectl doctor: a queuectl database's health and limits in a few lines (docs/operations.md
explains each): integrity, size, the WAL and its checkpoint, the write lock, jobs per state, what
the retention keeps, the recent write rate against what one SQLite file sustains; on PostgreSQL
the relations' sizes and the jobs table's dead tuples and vacuums instead of the file's figures."""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from .rules import WAL_LIMIT_BYTES
from .states import JobState
from .store import JobStore, RelationSize, TableActivity

#: Tasks per second one SQLite file sustains on the benchmark machine (2 CPUs): the `drain`
#: figure of docs/benchmarks.md (5,000 no-op tasks, prefork -c 4). A test keeps the two equal.
FILE_TASKS_PER_SECOND = 4487
#: Writes a task costs: its publish, its claim, its ack (or reject).
WRITES_PER_TASK = 3
#: A recent rate above this fraction of FILE_TASKS_PER_SECOND is a warning.
RATE_WARN_FRACTION = 0.7
#: The write rate is averaged over the current minute and the ones before it, this many in all.
RATE_MINUTES = 5
#: The events of the stats table that are writes: a publish is one; a job completed, failed or
#: dead was also claimed, so two (the claim, then the ack or reject).
RATE_EVENTS = {"published": 1, "completed": 2, "failed": 2, "dead": 2}
#: The longest the doctor waits for the write lock (SQLite), and the wait it warns about.
LOCK_WAIT_TIMEOUT = 2.0
LOCK_WAIT_WARN = 0.5
#: PostgreSQL: dead tuples past PostgreSQL's default autovacuum trigger (50 + 20 % of the live
#: tuples) in a table autovacuum never vacuumed are a warning.
BLOAT_THRESHOLD = 50
BLOAT_FRACTION = 0.2


@dataclass(frozen=True)
class WriteRate:
    """The stats table's events of the last `window` seconds, as writes and tasks per second; the
    figure of what one file sustains (SQLite) and the rate's share of it."""

    window: float
    events: dict[str, int]
    writes_per_second: float
    tasks_per_second: float
    capacity: int | None
    share: float | None


@dataclass(frozen=True)
class Diagnosis:
    """What the doctor found. `problems` (integrity) make it unhealthy (exit 1); `warnings` are
    limits close or passed. Figures an engine does not have are None (or empty)."""

    engine: str
    database: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: SQLite: the file's bytes; PostgreSQL: the schema's tables with their indexes and TOAST
    size_bytes: int = 0
    wal_bytes: int | None = None
    #: SQLite's passive checkpoint: (busy, pages in the WAL, pages copied into the file)
    checkpoint: tuple[int, int, int] | None = None
    #: seconds a writer waited for the write lock; None: not had within lock_timeout (SQLite)
    lock_wait: float | None = None
    lock_timeout: float | None = None
    jobs: dict[str, int] | None = None
    retention: float | None = None
    completed_kept: int | None = None
    completed_bytes: int | None = None
    rate: WriteRate | None = None
    relations: list[RelationSize] = field(default_factory=list)
    activity: TableActivity | None = None

    @property
    def ok(self) -> bool:
        """Healthy, or only warnings: no integrity problem."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (`queuectl doctor --format json`)."""
        data = asdict(self)
        data["ok"] = self.ok
        if self.checkpoint is not None:
            busy, log, done = self.checkpoint
            data["checkpoint"] = {"busy": bool(busy), "wal_pages": log, "checkpointed_pages": done}
        return data

    def lines(self) -> list[str]:
        """A few aligned lines, then one `warning: ...` line per warning."""
        rows: list[tuple[str, str]] = [("database", f"{self.database} ({_ENGINES[self.engine]})")]
        if self.problems:
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            rows.append(("integrity", f"FAILED: {self.problems[0]}{more}"))
        elif self.engine == "sqlite":
            rows.append(("integrity", "ok (PRAGMA quick_check)"))
        else:
            rows.append(("integrity", "the server answers (PostgreSQL checks its own pages)"))
        if self.engine == "sqlite":
            rows.append(("size", f"file {_bytes(self.size_bytes)}, WAL {_bytes(self.wal_bytes or 0)} "
                                 f"(truncated past {_bytes(WAL_LIMIT_BYTES)})"))
        else:
            parts = [f"{r.name} {_bytes(r.total_bytes)}" for r in self.relations[:3]]  # the largest
            if len(self.relations) > 3:
                parts.append(f"{len(self.relations) - 3} more")
            rows.append(("size", f"{_bytes(self.size_bytes)} with indexes and TOAST ({', '.join(parts)})"))
        if self.checkpoint is not None:
            busy, log, done = self.checkpoint
            rows.append(("checkpoint", f"{done} of {log} WAL pages in the file (passive"
                                       f"{', kept from finishing by a reader' if busy else ''})"))
        if self.lock_timeout is not None:
            rows.append(("write lock", f"not had within {self.lock_timeout:g} s" if self.lock_wait is None
                         else f"a writer waits {self.lock_wait * 1000:.1f} ms"))
        if self.activity is not None:
            a = self.activity
            rows.append(("jobs table", f"{a.dead_tuples} dead tuples, {a.live_tuples} live; last vacuum "
                                       f"{_when(a.last_vacuum)}, autovacuum {_when(a.last_autovacuum)}, analyze "
                                       f"{_when(a.last_analyze)}, autoanalyze {_when(a.last_autoanalyze)}"))
        if self.jobs is not None:
            rows.append(("jobs", ", ".join(f"{state} {n}" for state, n in self.jobs.items())))
        if self.completed_kept is not None and self.retention is not None:
            rows.append(("retention", f"{self.completed_kept} completed jobs kept, {_bytes(self.completed_bytes or 0)} "
                                      f"of payloads (retention {self.retention:g} s)"))
        if self.rate is not None:
            r = self.rate
            line = (f"{r.tasks_per_second:.0f} tasks/s over the last {r.window:.0f} s "
                    f"({r.writes_per_second:.0f} writes/s)")
            if r.capacity is not None and r.share is not None:
                line += f": {r.share:.0%} of the ~{r.capacity:,} tasks/s one file sustains"
            rows.append(("write rate", line))
        width = max(len(label) for label, _ in rows)
        return [f"{label.ljust(width)}  {value}" for label, value in rows] + [f"warning: {w}" for w in self.warnings]


_ENGINES = {"sqlite": f"SQLite {sqlite3.sqlite_version}", "postgresql": "PostgreSQL"}


def diagnose(store: JobStore, *, lock_timeout: float = LOCK_WAIT_TIMEOUT) -> Diagnosis:
    """Examine the database of `store` (which must exist: this opens it). Reads only, but for one
    passive checkpoint of a SQLite WAL and one empty write transaction that times the write lock.
    A SQLite file that fails its integrity check is examined no further."""
    db = store.db
    sqlite = db.engine == "sqlite"
    try:
        problems = store.quick_check()
    except sqlite3.DatabaseError as exc:  # too damaged for the check itself
        problems = [str(exc)]
    if problems:
        return Diagnosis(db.engine, store.path, problems=problems, size_bytes=db.file_size(),
                         wal_bytes=db.wal_size() if sqlite else None)
    warnings: list[str] = []
    checkpoint = lock_wait = wal = None
    if sqlite:
        checkpoint = store.wal_checkpoint()  # first: the file's size then holds what it copied
        wal = db.wal_size()
        lock_wait = store.write_lock_wait(lock_timeout)
        warnings += _sqlite_warnings(wal, checkpoint, lock_wait, lock_timeout)
    size = db.file_size()
    relations = store.relation_sizes()
    activity = store.table_activity("jobs")
    if activity is not None:
        warnings += _bloat_warnings(activity)
    kept, kept_bytes = store.completed_kept()
    rate = _write_rate(store, capacity=FILE_TASKS_PER_SECOND if sqlite else None)
    if rate.share is not None and rate.share > RATE_WARN_FRACTION:
        warnings.append(
            f"the last {rate.window:.0f} s wrote {rate.tasks_per_second:.0f} tasks/s, {rate.share:.0%} of the "
            f"~{rate.capacity:,} tasks/s one SQLite file sustains (more than {RATE_WARN_FRACTION:.0%}): "
            "spread the queues over several files, or move to PostgreSQL")
    return Diagnosis(
        db.engine, store.path, warnings=warnings, size_bytes=size, wal_bytes=wal, checkpoint=checkpoint,
        lock_wait=lock_wait, lock_timeout=lock_timeout if sqlite else None,
        jobs={state.value: n for state, n in store.counts().items()},
        retention=float(store.settings(fresh=True)["retention"]), completed_kept=kept, completed_bytes=kept_bytes,
        rate=rate, relations=relations, activity=activity,
    )


def _sqlite_warnings(wal: int, checkpoint: tuple[int, int, int], lock_wait: float | None,
                     lock_timeout: float) -> list[str]:
    warnings = []
    if wal > WAL_LIMIT_BYTES:
        _, log, done = checkpoint
        warnings.append(
            f"the WAL holds {_bytes(wal)}, more than its {_bytes(WAL_LIMIT_BYTES)} limit: a long reader keeps "
            f"checkpoints from finishing (the last copied {done} of {log} pages)")
    if lock_wait is None:
        warnings.append(f"a writer did not get the write lock within {lock_timeout:g} s: a long transaction "
                        "holds it (a bulk enqueue of a large file?)")
    elif lock_wait > LOCK_WAIT_WARN:
        warnings.append(f"a writer waited {lock_wait:.2f} s for the write lock (more than {LOCK_WAIT_WARN:g} s): "
                        "long transactions hold it")
    return warnings


def _bloat_warnings(activity: TableActivity) -> list[str]:
    trigger = BLOAT_THRESHOLD + BLOAT_FRACTION * activity.live_tuples
    if activity.dead_tuples <= trigger or activity.last_autovacuum is not None:
        return []
    return [f"the jobs table has {activity.dead_tuples} dead tuples for {activity.live_tuples} live (more than "
            f"{BLOAT_THRESHOLD} + {BLOAT_FRACTION:.0%}) and autovacuum never vacuumed it: turn autovacuum on, "
            "or VACUUM it"]


def _write_rate(store: JobStore, capacity: int | None) -> WriteRate:
    now = store.clock()
    first = int(now // 60) - RATE_MINUTES + 1
    window = max(now - first * 60, 1.0)
    events = {event: 0 for event in RATE_EVENTS}
    for per_event in store.events_per_minute(first).values():
        for event in events:
            events[event] += per_event.get(event, 0)
    writes = sum(RATE_EVENTS[event] * n for event, n in events.items()) / window
    tasks = writes / WRITES_PER_TASK
    return WriteRate(window=window, events=events, writes_per_second=writes, tasks_per_second=tasks,
                     capacity=capacity, share=None if capacity is None else tasks / capacity)


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
