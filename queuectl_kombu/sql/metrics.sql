-- The reads of the metrics and the health check, and the stats table kept bounded.

-- name: waiting_since
-- Per queue (not Celery's control queues), since when its longest-waiting runnable job has
-- waited: the earliest next_run_at of the rows a claim could take at :now (published, due after
-- an ETA or a retry's backoff, requeued, recovered or revived then). A paused queue's jobs are
-- not runnable: they wait on purpose. Reads every waiting row: about 50 ms for 100,000 pending jobs.
SELECT queue, MIN(next_run_at) FROM jobs
WHERE state IN {READY_STATES} AND next_run_at <= :now
  AND (expires_at IS NULL OR expires_at > :now) AND {JOB_QUEUE}
  AND NOT EXISTS (SELECT 1 FROM queues q WHERE q.name = jobs.queue AND q.paused <> 0)
GROUP BY queue

-- name: stats_has_old
SELECT 1 FROM stats WHERE minute > 0 AND minute < :cutoff LIMIT 1

-- name: stats_fold
-- The minutes before :cutoff added into one row per queue and event at minute 0, so that the
-- totals stay what they were (the metrics' counters never go down) and the table stays small.
INSERT INTO stats (minute, queue, event, count)
SELECT 0, queue, event, SUM(count) FROM stats WHERE minute > 0 AND minute < :cutoff
GROUP BY queue, event
ON CONFLICT (minute, queue, event) DO UPDATE SET count = stats.count + excluded.count

-- name: stats_drop_folded
DELETE FROM stats WHERE minute > 0 AND minute < :cutoff
