-- Version 2 -> 3: a queue can be paused (queues.paused), the stats table counts what happened
-- to jobs per minute and queue, and jobs_queue_state counts jobs per queue and state (see schema.sql).
ALTER TABLE queues ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS stats (
    minute  INTEGER NOT NULL,
    queue   TEXT    NOT NULL,
    event   TEXT    NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (minute, queue, event)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_queue_state ON jobs (queue, state);
