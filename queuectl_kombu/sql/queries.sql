-- Every statement queuectl runs, by name. Parameters are always bound (:name), never formatted in.
-- The ready-row filter is spelled exactly as in the jobs_ready index so that SQLite uses it.

-- name: insert_job
INSERT INTO jobs (task_id, task_name, queue, state, priority, payload, attempts, max_retries,
                  next_run_at, expires_at, created_at, updated_at)
VALUES (:task_id, :task_name, :queue, 'pending', :priority, :payload, 0, :max_retries,
        :next_run_at, :expires_at, :now, :now)

-- name: has_ready
SELECT 1 FROM jobs
WHERE queue = :queue AND state IN ('pending', 'failed') AND next_run_at <= :now
LIMIT 1

-- name: claim
UPDATE jobs
SET state = 'processing', attempts = attempts + 1, lease_owner = :owner,
    lease_expires_at = :lease_expires_at, updated_at = :now
WHERE id IN (
    SELECT id FROM jobs
    WHERE queue = :queue AND state IN ('pending', 'failed') AND next_run_at <= :now
    ORDER BY priority DESC, id
    LIMIT :limit
)
RETURNING id, queue, priority, attempts, task_id, payload

-- name: next_due
SELECT MIN(next_run_at) FROM jobs
WHERE queue = :queue AND state IN ('pending', 'failed')

-- name: complete
UPDATE jobs
SET state = 'completed', lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND state = 'processing' AND lease_owner = :owner

-- name: delete_processing
DELETE FROM jobs WHERE id = :id AND state = 'processing' AND lease_owner = :owner

-- name: requeue
UPDATE jobs
SET state = 'pending', attempts = MAX(attempts - 1, 0), next_run_at = :now,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND state = 'processing' AND lease_owner = :owner

-- name: get_processing
SELECT attempts, max_retries, last_error, task_id FROM jobs
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

-- name: record_error
UPDATE jobs SET last_error = :error
WHERE task_id = :task_id AND state = 'processing'

-- name: renew_leases
UPDATE jobs SET lease_expires_at = :lease_expires_at
WHERE state = 'processing' AND lease_owner = :owner

-- name: has_expired_leases
SELECT 1 FROM jobs WHERE state = 'processing' AND lease_expires_at < :now LIMIT 1

-- name: recover_expired_leases
UPDATE jobs
SET state = CASE WHEN attempts >= 1 + COALESCE(max_retries, :max_retries) THEN 'dead' ELSE 'pending' END,
    next_run_at = :now,
    last_error = 'lease of ' || COALESCE(lease_owner, '?') || ' expired',
    lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE state = 'processing' AND lease_expires_at < :now
RETURNING id, task_id, state, attempts

-- name: prune_completed
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs WHERE state = 'completed' AND updated_at < :cutoff LIMIT :limit
)

-- name: purge_queue
DELETE FROM jobs WHERE queue = :queue AND state IN ('pending', 'failed')

-- name: queue_size
SELECT COUNT(*) FROM jobs WHERE queue = :queue AND state IN ('pending', 'failed')

-- name: declare_queue
INSERT INTO queues (name, arguments, auto_delete, exclusive, created_at)
VALUES (:name, :arguments, :auto_delete, :exclusive, :now)
ON CONFLICT (name) DO NOTHING

-- name: has_queue
SELECT 1 FROM queues WHERE name = :name

-- name: delete_queue
DELETE FROM queues WHERE name = :name

-- name: delete_queue_bindings
DELETE FROM bindings WHERE queue = :name

-- name: get_config
SELECT key, value FROM config

-- name: set_config
INSERT INTO config (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- name: count_by_state
SELECT state, COUNT(*) FROM jobs GROUP BY state

-- name: list_jobs
SELECT * FROM jobs
WHERE (:state IS NULL OR state = :state) AND (:queue IS NULL OR queue = :queue)
ORDER BY id
LIMIT :limit

-- name: get_job
SELECT * FROM jobs WHERE id = :id

-- name: jobs_by_task_id
SELECT * FROM jobs WHERE task_id = :task_id ORDER BY id
