-- Every statement queuectl runs, by name. Parameters are always bound (:name), never formatted in.
-- The ready-row filter is spelled exactly as in the jobs_ready index so that SQLite uses it.

-- name: insert_job
-- The queue's x-max-priority caps the priority and its x-message-ttl sets expires_at unless the
-- message carries its own expiration.
INSERT INTO jobs (task_id, task_name, queue, state, priority, payload, attempts, max_retries,
                  next_run_at, expires_at, created_at, updated_at)
VALUES (:task_id, :task_name, :queue, 'pending',
        MIN(:priority, COALESCE((SELECT max_priority FROM queues WHERE name = :queue), {MAX_PRIORITY})),
        :payload, 0, :max_retries, :next_run_at,
        COALESCE(:expires_at, :now + (SELECT message_ttl FROM queues WHERE name = :queue)),
        :now, :now)
RETURNING id

-- name: insert_jobs
-- insert_job for executemany, by position: 1 task_id ('' for none), 2 task_name ('' for none),
-- 3 queue, 4 priority, 5 payload, 6 max_retries (-1 for none), 7 next_run_at, 8 expires_at
-- (-1 for none), 9 now.
INSERT INTO jobs (task_id, task_name, queue, state, priority, payload, attempts, max_retries,
                  next_run_at, expires_at, created_at, updated_at)
VALUES (NULLIF(?1, ''), NULLIF(?2, ''), ?3, 'pending',
        MIN(?4, COALESCE((SELECT max_priority FROM queues WHERE name = ?3), {MAX_PRIORITY})),
        ?5, 0, NULLIF(?6, -1), ?7,
        COALESCE(NULLIF(?8, -1.0), ?9 + (SELECT message_ttl FROM queues WHERE name = ?3)),
        ?9, ?9)

-- name: last_job_id
-- The id of the last row this connection inserted (in a write transaction: the last job of its
-- batch). Not sqlite_sequence, which an application's file ATTACHed to before the queue would
-- shadow with its own (enqueue_in).
SELECT last_insert_rowid()

-- name: has_ready
-- INDEXED BY jobs_ready here and in the claims: without statistics SQLite preferred
-- jobs_queue_state (two equalities), which is not in claim order.
SELECT 1 FROM jobs INDEXED BY jobs_ready
WHERE {DUE_IN_QUEUE}
LIMIT 1

-- name: claim
UPDATE jobs
SET state = 'processing', attempts = attempts + 1, deliveries = deliveries + 1, lease_owner = :owner,
    lease_expires_at = :lease_expires_at, updated_at = :now
WHERE id IN (
    SELECT id FROM jobs INDEXED BY jobs_ready
    WHERE {DUE_IN_QUEUE}
    ORDER BY priority DESC, id
    LIMIT :limit
)
RETURNING id, queue, priority, attempts, task_id, payload, deliveries

-- name: ready_order
-- The claim order of one queue's first :limit ready rows: a consumer of several queues merges
-- them, so that it takes messages across its queues in the order they were published.
SELECT priority, id FROM jobs INDEXED BY jobs_ready
WHERE {DUE_IN_QUEUE}
ORDER BY priority DESC, id
LIMIT :limit

-- name: scheduled_jobs
-- Waiting rows of the JSON array :queues that are not due yet (ETA, countdown, retry backoff).
SELECT id, queue, priority, next_run_at, deliveries, payload FROM jobs
WHERE queue IN (SELECT value FROM json_each(:queues))
  AND state IN {READY_STATES} AND next_run_at > :now
ORDER BY next_run_at, id
LIMIT :limit

-- name: take
-- For consumers that do not acknowledge (no_ack): the message leaves the queue as it is delivered.
DELETE FROM jobs
WHERE id IN (
    SELECT id FROM jobs INDEXED BY jobs_ready
    WHERE {DUE_IN_QUEUE}
    ORDER BY priority DESC, id
    LIMIT :limit
)
RETURNING id, queue, priority, attempts + 1, task_id, payload, deliveries + 1

-- name: next_due
-- Nothing of a paused queue comes due: a worker sets no timer for it (its resume is a commit,
-- which wakes every worker).
SELECT MIN(next_run_at) FROM jobs
WHERE queue = :queue AND state IN {READY_STATES}
  AND NOT EXISTS (SELECT 1 FROM queues WHERE name = :queue AND paused <> 0)

-- name: complete
-- Every job of the JSON array :ids that :owner still holds; returns the ids it completed.
UPDATE jobs
SET state = 'completed', lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'processing' AND lease_owner = :owner
RETURNING id, queue

-- name: delete_processing
DELETE FROM jobs
WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'processing' AND lease_owner = :owner
RETURNING id, queue

-- name: requeue
UPDATE jobs
SET state = 'pending', attempts = MAX(attempts - 1, 0), next_run_at = :now,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND state = 'processing' AND lease_owner = :owner

-- name: get_processing
SELECT attempts, max_retries, last_error, task_id, queue FROM jobs
WHERE id = :id AND state = 'processing' AND lease_owner = :owner

-- name: retry_later
UPDATE jobs
SET state = 'failed', next_run_at = :next_run_at, last_error = :error,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND state = 'processing' AND lease_owner = :owner

-- name: bury
UPDATE jobs
SET state = 'dead', last_error = :error, lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND state = 'processing' AND lease_owner = :owner

-- name: cancel_processing
-- A revoked task that its worker acknowledged (queuectl cancel, Celery's revoke): dead, not completed.
UPDATE jobs
SET state = 'dead', last_error = :error, lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND state = 'processing' AND lease_owner = :owner
RETURNING queue

-- name: cancel_completed
-- A task acknowledged at its start (task_acks_late off), then terminated by a revoke: the early
-- ack completed its newest row, which ends dead instead.
UPDATE jobs
SET state = 'dead', last_error = :error, updated_at = :now
WHERE id = (SELECT id FROM jobs WHERE task_id = :task_id ORDER BY id DESC LIMIT 1) AND state = 'completed'
RETURNING id, queue

-- name: cancel_waiting
-- Waiting jobs of the JSON array :ids (pending, or failed and waiting for a retry) to the
-- dead-letter queue, so that dlq retry undoes it.
UPDATE jobs
SET state = 'dead', last_error = :error, updated_at = :now
WHERE id IN (SELECT value FROM json_each(:ids)) AND state IN {READY_STATES}
RETURNING id, task_id, queue

-- name: cancel_waiting_where
-- Every waiting job in one of the states of the JSON array :states (ready states only), of
-- :queue or of every job queue, to the dead-letter queue.
UPDATE jobs
SET state = 'dead', last_error = :error, updated_at = :now
WHERE state IN (SELECT value FROM json_each(:states)) AND state IN {READY_STATES}
  AND (:queue IS NULL OR queue = :queue) AND {JOB_QUEUE}
RETURNING id, task_id, queue

-- name: record_error
UPDATE jobs SET last_error = :error
WHERE task_id = :task_id AND state = 'processing'

-- name: renew_leases
-- The rows are picked by a subquery (:limit -1: all of them) so that PostgreSQL passes over the
-- rows an ack of the same owner is completing right now (SKIP LOCKED) instead of waiting for them
-- in another order (a deadlock).
UPDATE jobs SET lease_expires_at = :lease_expires_at
WHERE id IN (
    SELECT id FROM jobs WHERE state = 'processing' AND lease_owner = :owner
    LIMIT :limit
)

-- name: has_expired_leases
SELECT 1 FROM jobs WHERE state = 'processing' AND lease_expires_at < :now LIMIT 1

-- name: recover_expired_leases
UPDATE jobs
SET state = CASE WHEN attempts >= 1 + COALESCE(max_retries, :max_retries) THEN 'dead' ELSE 'pending' END,
    next_run_at = :now,
    last_error = 'lease of ' || COALESCE(lease_owner, '?') || ' expired',
    lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id IN (
    -- at most :limit a round; PostgreSQL passes over rows an ack holds (SKIP LOCKED): a late ack
    -- of a live owner wins, and a session that died inside its ack never stalls the recovery
    SELECT id FROM jobs WHERE state = 'processing' AND lease_expires_at < :now
    LIMIT :limit
)
RETURNING id, task_id, state, attempts, queue

-- name: expire_leases
-- Every lease taken as run out at :expired_at (a backup's snapshot: its workers are not there), so
-- that recover_expired_leases recovers each processing job as it would after a crash.
UPDATE jobs SET lease_expires_at = :expired_at WHERE state = 'processing'

-- name: prune_completed
-- INDEXED BY: without statistics SQLite took jobs_state and read every completed row (900,000
-- in a file of 1M jobs) every 30 s; jobs_completed reads only the rows to delete.
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs INDEXED BY jobs_completed
    WHERE state = 'completed' AND updated_at < :cutoff LIMIT :limit
)

-- name: queue_size
SELECT COUNT(*) FROM jobs WHERE queue = :queue AND state IN {READY_STATES}
  AND (expires_at IS NULL OR expires_at > :now)

-- name: declare_queue
-- A redeclare keeps the first definition but counts as a use (it resets x-expires).
INSERT INTO queues (name, arguments, auto_delete, exclusive, expires, message_ttl, max_priority,
                    last_used_at, created_at)
VALUES (:name, :arguments, :auto_delete, :exclusive, :expires, :message_ttl, :max_priority, :now, :now)
ON CONFLICT (name) DO UPDATE SET last_used_at = excluded.last_used_at

-- name: has_queue
SELECT 1 FROM queues WHERE name = :name

-- name: get_queue
SELECT name, arguments, auto_delete, exclusive, expires, message_ttl, max_priority, last_used_at
FROM queues WHERE name = :name

-- name: list_queues
SELECT q.name, q.auto_delete, q.exclusive, q.expires, q.message_ttl, q.max_priority, q.paused,
       (SELECT COUNT(*) FROM jobs j WHERE j.queue = q.name AND j.state IN {READY_STATES}) AS size
FROM queues q ORDER BY q.name

-- name: set_paused
-- Returns the queue when its flag changed (pausing a paused queue changes nothing).
UPDATE queues SET paused = :paused WHERE name = :name AND paused <> :paused
RETURNING name

-- name: insert_paused_queue
-- A queue that holds jobs but was never declared gets a row to carry its flag.
INSERT INTO queues (name, arguments, last_used_at, created_at, paused)
VALUES (:name, '{}', :now, :now, 1)
ON CONFLICT (name) DO NOTHING

-- name: queue_has_jobs
SELECT 1 FROM jobs WHERE queue = :queue LIMIT 1

-- name: paused_queues
SELECT name FROM queues WHERE paused <> 0 ORDER BY name

-- name: queue_rows
-- Every declared queue: whether it is paused, and how many live consumers read it.
SELECT q.name, q.paused,
       (SELECT COUNT(*) FROM consumers c WHERE c.queue = q.name AND c.last_seen >= :cutoff) AS consumers
FROM queues q ORDER BY q.name

-- name: touch_queues
-- Only when a third of the expiry time has passed: an idle worker writes (and wakes others) rarely.
UPDATE queues SET last_used_at = :now
WHERE expires IS NOT NULL AND last_used_at < :now - expires / 3
  AND name IN (SELECT value FROM json_each(:names))

-- name: expired_queues
-- Unused past x-expires; a queue somebody consumes is in use whatever its last_used_at says.
SELECT name FROM queues q
WHERE expires IS NOT NULL AND last_used_at + expires <= :now
  AND NOT EXISTS (SELECT 1 FROM consumers c WHERE c.queue = q.name AND c.last_seen >= :cutoff)

-- name: delete_queue
DELETE FROM queues WHERE name = :name

-- name: delete_queue_jobs
DELETE FROM jobs WHERE queue = :name AND state IN {READY_STATES}

-- name: delete_queue_bindings
DELETE FROM bindings WHERE queue = :name

-- name: add_consumer
INSERT INTO consumers (queue, owner, last_seen) VALUES (:queue, :owner, :now)
ON CONFLICT (queue, owner) DO UPDATE SET last_seen = excluded.last_seen

-- name: remove_consumer
DELETE FROM consumers WHERE queue = :queue AND owner = :owner

-- name: live_consumers
SELECT COUNT(*) FROM consumers WHERE queue = :queue AND last_seen >= :cutoff

-- name: remove_owner
DELETE FROM consumers WHERE owner = :owner

-- name: heartbeat_consumers
UPDATE consumers SET last_seen = :now WHERE owner = :owner

-- name: orphaned_queues
-- Auto-delete and exclusive queues that had consumers, none of them alive any more.
SELECT q.name FROM queues q
WHERE (q.auto_delete = 1 OR q.exclusive = 1)
  AND EXISTS (SELECT 1 FROM consumers c WHERE c.queue = q.name)
  AND NOT EXISTS (SELECT 1 FROM consumers c WHERE c.queue = q.name AND c.last_seen >= :cutoff)

-- name: delete_stale_consumers
DELETE FROM consumers WHERE last_seen < :cutoff

-- name: delete_consumers
-- Every consumer forgotten (a backup's snapshot: none of them is alive there).
DELETE FROM consumers

-- name: delete_queue_consumers
DELETE FROM consumers WHERE queue = :name

-- name: has_expired_messages
-- Asked every second by every worker: INDEXED BY, because SQLite otherwise took jobs_state and
-- read every waiting row (a backlog of 100,000 pending jobs made it 18 % of a worker's CPU).
SELECT 1 FROM jobs INDEXED BY jobs_expiring
WHERE expires_at IS NOT NULL AND expires_at <= :now AND state IN {READY_STATES} LIMIT 1

-- name: delete_expired_messages
DELETE FROM jobs INDEXED BY jobs_expiring
WHERE expires_at IS NOT NULL AND expires_at <= :now AND state IN {READY_STATES}

-- name: declare_exchange
INSERT INTO exchanges (name, type, durable, auto_delete, arguments)
VALUES (:name, :type, :durable, :auto_delete, :arguments)
ON CONFLICT (name) DO NOTHING

-- name: exchange_type
SELECT type FROM exchanges WHERE name = :name

-- name: delete_exchange
DELETE FROM exchanges WHERE name = :name

-- name: delete_exchange_bindings
DELETE FROM bindings WHERE exchange = :name

-- name: bind
INSERT INTO bindings (exchange, queue, routing_key, arguments)
VALUES (:exchange, :queue, :routing_key, :arguments)
ON CONFLICT (exchange, queue, routing_key) DO NOTHING

-- name: unbind
DELETE FROM bindings WHERE exchange = :exchange AND queue = :queue AND routing_key = :routing_key

-- name: bindings_of_exchange
SELECT routing_key, queue FROM bindings WHERE exchange = :exchange

-- name: routes_of_exchange
-- One read per publish: the exchange's type (NULL when undeclared) beside each of its bindings.
SELECT (SELECT type FROM exchanges WHERE name = :exchange) AS type, routing_key, queue
FROM bindings WHERE exchange = :exchange

-- name: all_bindings
SELECT queue, exchange, routing_key FROM bindings ORDER BY exchange, queue, routing_key

-- name: get_config
SELECT key, value FROM config

-- name: set_config
INSERT INTO config (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- name: count_by_state
SELECT state, COUNT(*) FROM jobs GROUP BY state

-- name: list_jobs
-- :jobs_only leaves out the queues of Celery's remote control (*.pidbox) and events (celeryev.*).
SELECT * FROM jobs
WHERE (:queue IS NULL OR queue = :queue)
  AND (:jobs_only = 0 OR {JOB_QUEUE})
ORDER BY id
LIMIT :limit

-- name: list_jobs_in_state
SELECT * FROM jobs
WHERE state = :state AND (:queue IS NULL OR queue = :queue)
  AND (:jobs_only = 0 OR {JOB_QUEUE})
ORDER BY id
LIMIT :limit

-- name: get_job
SELECT * FROM jobs WHERE id = :id

-- name: jobs_by_task_id
SELECT * FROM jobs WHERE task_id = :task_id ORDER BY id

-- name: count_by_queue_state
SELECT queue, state, COUNT(*) AS n FROM jobs GROUP BY queue, state ORDER BY queue, state

-- name: oldest_waiting
SELECT MIN(created_at) FROM jobs
WHERE state = 'pending' AND {JOB_QUEUE}

-- name: latest_by_task_id
SELECT * FROM jobs WHERE task_id = :task_id ORDER BY id DESC LIMIT 1

-- name: task_id_exists
SELECT 1 FROM jobs WHERE task_id = :task_id LIMIT 1

-- name: any_task_id_exists
-- One task id of the JSON array :ids that a job already has.
SELECT task_id FROM jobs WHERE task_id IN (SELECT value FROM json_each(:ids)) LIMIT 1

-- name: revive
-- dlq retry: a dead job goes back to pending with its attempts reset. A cancelled job's message
-- gets the revived header (its time), so that workers forget the task's revoke (revokes.py).
UPDATE jobs
SET state = 'pending', attempts = 0, next_run_at = :now, updated_at = :now,
    payload = CASE WHEN last_error = {CANCELLED} AND json_valid(payload)
                   THEN json_set(payload, {REVIVED_PATH}, :now) ELSE payload END
WHERE id = :id AND state = 'dead'
RETURNING queue

-- name: revive_all
UPDATE jobs
SET state = 'pending', attempts = 0, next_run_at = :now, updated_at = :now,
    payload = CASE WHEN last_error = {CANCELLED} AND json_valid(payload)
                   THEN json_set(payload, {REVIVED_PATH}, :now) ELSE payload END
WHERE state = 'dead'
RETURNING id, queue

-- name: delete_dead
DELETE FROM jobs WHERE state = 'dead' RETURNING id

-- name: stats_add
-- Add to a count: (minute, queue, event, how many), positional.
INSERT INTO stats (minute, queue, event, count) VALUES (?, ?, ?, ?)
ON CONFLICT (minute, queue, event) DO UPDATE SET count = stats.count + excluded.count

-- name: stats_since
-- Counts per minute, queue and event from :minute on, oldest first (summed: PostgreSQL keeps a
-- row per shard of writers, see postgres.schema_script).
SELECT minute, queue, event, SUM(count) FROM stats WHERE minute >= :minute
GROUP BY minute, queue, event ORDER BY minute, queue, event

-- name: stats_totals
-- Every count ever kept, per queue and event (what the metrics' counters report).
SELECT queue, event, SUM(count) FROM stats GROUP BY queue, event

-- name: spool_table
-- How far each file of a SQLite file's spool (spool.py) was moved into jobs, in bytes. Made by the
-- first write that moves anything in, not by the schema: it is SQLite's alone (PostgreSQL's
-- publishes are inserts of their own), and a file of an older queuectl needs no migration for it.
CREATE TABLE IF NOT EXISTS spool (name TEXT PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID

-- name: spool_positions
SELECT name, position FROM spool WHERE name <> ''

-- name: spool_token
-- The row named '' holds a random number that names this database in its spool files' headers: a
-- file left by a database since deleted is not moved into a new one at the same path (whose inode
-- number may well be the old one's).
SELECT position FROM spool WHERE name = ''

-- name: spool_token_make
INSERT INTO spool (name, position) VALUES ('', ?) ON CONFLICT (name) DO NOTHING

-- name: spool_advance
-- (name, position), positional
INSERT INTO spool (name, position) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET position = excluded.position

-- name: spool_forget
-- (name,), positional: a file that is gone (read to its end, nobody writing it, deleted)
DELETE FROM spool WHERE name = ?

-- name: spool_clear
-- A copy of the file (backup): the original's offsets and number dropped (spool_token_make then
-- gives the copy its own), so that no file of the original's spool is ever moved into it.
DELETE FROM spool
