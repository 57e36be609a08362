"""Housekeeping of the jobs table: leases renewed and recovered, completed jobs pruned; and of
the stats table: minutes past STATS_KEEP folded into one row per queue and event."""

from __future__ import annotations

import logging

from ..rules import NOBODY, WATCHERS
from ..sql import QUERIES as Q
from ..states import JobState
from .config import ConfigStore

logger = logging.getLogger("queuectl_kombu.store")

#: Seconds of per-minute counts the stats table keeps (the dashboard's chart shows the last
#: hour); older minutes are folded into one row per queue and event at minute 0.
STATS_KEEP = 7 * 24 * 3600.0


#: Expired leases recovered per transaction (the rest in the next rounds, a second apart).
RECOVER_BATCH = 1000

class Housekeeping(ConfigStore):
    """What a worker's housekeeper runs now and then (queuectl_kombu/housekeeper.py)."""

    def renew_leases(self, owner: str, lease_seconds: float) -> int:
        """Extend every lease `owner` holds; returns how many."""
        with self.db.write(durable=False, wakes=NOBODY) as conn:
            n = conn.execute(
                Q["renew_leases"], {"owner": owner, "lease_expires_at": self.clock() + lease_seconds, "limit": -1}
            ).rowcount
        return n

    def recover_expired_leases(self, max_retries: int | None = None) -> list[tuple[int, str | None, JobState, int]]:
        """Jobs whose consumer died go back to pending (dead once retries are exhausted: the job's
        own max_retries, else `max_retries` if given, else the config table's)."""
        now = self.clock()
        conn = self.db.connection()
        if conn.execute(Q["has_expired_leases"], {"now": now}).fetchone() is None:
            return []
        if max_retries is None:
            max_retries = self.settings(fresh=True)["max_retries"]
        with self.db.write(durable=False) as conn:
            rows = conn.execute(
                Q["recover_expired_leases"], {"now": now, "max_retries": max_retries, "limit": RECOVER_BATCH}
            ).fetchall()
            self._tally(conn, "recovered", (r[4] for r in rows))
            self._tally(conn, "dead", (r[4] for r in rows if r[2] == JobState.DEAD.value))
        self._committed()
        recovered = [(r[0], r[1], JobState(r[2]), r[3]) for r in rows]
        for job_id, task_id, state, attempts in recovered:
            logger.warning(
                "job %d (task %s): lease expired after attempt %d, now %s", job_id, task_id, attempts, state
            )
        return recovered

    def recover_every_lease(self, max_retries: int | None = None) -> list[tuple[int, str | None, JobState, int]]:
        """Every processing job recovered as if its lease had run out now, as recover_expired_leases
        recovers it after a crash (pending with the attempt counted, dead once its retries are
        exhausted; WARNING each): for a copy of the database that none of its workers uses (a
        backup's snapshot). Only there: a live worker's job would run twice."""
        with self.db.write() as conn:
            n = conn.execute(Q["expire_leases"], {"expired_at": self.clock() - 1.0}).rowcount
        self._committed()
        recovered: list[tuple[int, str | None, JobState, int]] = []
        while len(recovered) < n:
            batch = self.recover_expired_leases(max_retries)
            if not batch:
                break
            recovered += batch
        return recovered

    def keep_statistics(self) -> bool:
        """Keep the query planner's statistics of the jobs table fresh (PostgreSQL: ANALYZE once
        enough changed; SQLite needs none); True if they were renewed."""
        return self.db.keep_statistics()

    def prune_completed(self, retention: float | None = None, batch: int = 5000) -> int:
        """Delete completed jobs older than the retention time, in short batches."""
        if retention is None:
            retention = self.settings()["retention"]
        cutoff = self.clock() - retention
        total = 0
        while True:
            with self.db.write(durable=False, wakes=WATCHERS) as conn:
                n = conn.execute(Q["prune_completed"], {"cutoff": cutoff, "limit": batch}).rowcount
            total += n
            if n < batch:
                break
        if total:
            self._committed()
            logger.info("pruned %d completed jobs", total)
        return total

    def fold_stats(self, keep: float = STATS_KEEP) -> int:
        """Fold the stats table's minutes older than `keep` seconds into one row per queue and
        event at minute 0: every total stays what it was, the table stays bounded. Returns how
        many rows were folded (a read only, when there are none)."""
        cutoff = int((self.clock() - keep) // 60)
        params = {"cutoff": cutoff}
        if self.db.connection().execute(Q["stats_has_old"], params).fetchone() is None:
            return 0
        with self.db.write(durable=False, wakes=NOBODY) as conn:
            conn.execute(Q["stats_fold"], params)
            n = conn.execute(Q["stats_drop_folded"], params).rowcount
        self._committed()
        logger.info("folded %d rows of stats older than %g s into the totals", n, keep)
        return n
