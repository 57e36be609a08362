-- Copying a queue from one database to another (queuectl copy; store/transfer.py): every job that
-- is not completed, the config, queues, exchanges, bindings and results that have not expired,
-- read from the source and inserted at the destination in one transaction, skipping what is
-- there already. Written in SQLite's dialect; PostgreSQL's results columns differ
-- (postgresql.sql: copy_results_out, copy_result_in).

-- name: copy_jobs_out
SELECT id, task_id, task_name, queue, state, priority, payload, attempts, deliveries, max_retries,
       next_run_at, lease_owner, lease_expires_at, expires_at, created_at, updated_at, last_error
FROM jobs WHERE state <> 'completed' ORDER BY id

-- name: copy_jobs_present
-- The destination's jobs of these task ids (:task_ids, a JSON array), with their queue and
-- message: a job copied before is told from another that happens to have the same id.
SELECT task_id, queue, payload FROM jobs WHERE task_id IN (SELECT value FROM json_each(:task_ids))

-- name: copy_anonymous_job_present
-- A message without a task id (plain kombu): the same one is the same message, queue and time.
SELECT payload FROM jobs
WHERE task_id IS NULL AND queue = :queue AND created_at = :created_at AND payload = :payload LIMIT 1

-- name: copy_job_in
INSERT INTO jobs (task_id, task_name, queue, state, priority, payload, attempts, deliveries, max_retries,
                  next_run_at, lease_owner, lease_expires_at, expires_at, created_at, updated_at, last_error)
VALUES (:task_id, :task_name, :queue, :state, :priority, :payload, :attempts, :deliveries, :max_retries,
        :next_run_at, NULL, NULL, :expires_at, :created_at, :updated_at, :last_error)

-- name: copy_config_out
SELECT key, value FROM config ORDER BY key

-- name: copy_config_in
INSERT INTO config (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- name: copy_queues_out
SELECT name, arguments, auto_delete, exclusive, expires, message_ttl, max_priority, last_used_at,
       created_at, paused
FROM queues ORDER BY name

-- name: copy_queue_in
INSERT INTO queues (name, arguments, auto_delete, exclusive, expires, message_ttl, max_priority,
                    last_used_at, created_at, paused)
VALUES (:name, :arguments, :auto_delete, :exclusive, :expires, :message_ttl, :max_priority,
        :last_used_at, :created_at, :paused)
ON CONFLICT (name) DO NOTHING

-- name: copy_exchanges_out
SELECT name, type, durable, auto_delete, arguments FROM exchanges ORDER BY name

-- name: copy_exchange_in
INSERT INTO exchanges (name, type, durable, auto_delete, arguments)
VALUES (:name, :type, :durable, :auto_delete, :arguments)
ON CONFLICT (name) DO NOTHING

-- name: copy_bindings_out
SELECT exchange, queue, routing_key, arguments FROM bindings ORDER BY exchange, queue, routing_key

-- name: copy_binding_in
INSERT INTO bindings (exchange, queue, routing_key, arguments)
VALUES (:exchange, :queue, :routing_key, :arguments)
ON CONFLICT (exchange, queue, routing_key) DO NOTHING

-- name: copy_results_out
SELECT key, value, NULL AS blob, state, counter, expires_at, updated_at FROM results
WHERE expires_at IS NULL OR expires_at > :now ORDER BY key

-- name: copy_result_in
INSERT INTO results (key, value, state, counter, expires_at, updated_at)
VALUES (:key, :value, :state, :counter, :expires_at, :updated_at)
ON CONFLICT (key) DO NOTHING

-- name: live_consumer_owners
SELECT DISTINCT owner FROM consumers WHERE last_seen > :cutoff ORDER BY owner

-- name: delete_jobs_by_id
DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(:ids))
