-- PostgreSQL's own text of the statements of queries.sql and results.sql whose SQLite text it
-- does not take, by the same names. Every other statement is translated as it is (sql/dialect.py:
-- placeholders, INDEXED BY, char(), JSON arrays). Parameters are bound by psycopg (client side).

-- name: insert_job
INSERT INTO jobs (task_id, task_name, queue, state, priority, payload, attempts, max_retries,
                  next_run_at, expires_at, created_at, updated_at)
VALUES (:task_id, :task_name, :queue, 'pending',
        LEAST(:priority, COALESCE((SELECT max_priority FROM queues WHERE name = :queue), {MAX_PRIORITY})),
        :payload, 0, :max_retries, :next_run_at,
        COALESCE(:expires_at, :now + (SELECT message_ttl FROM queues WHERE name = :queue)),
        :now, :now)
RETURNING id

-- name: insert_jobs
-- Ids are not consecutive under concurrent inserts here: each row returns its own.
INSERT INTO jobs (task_id, task_name, queue, state, priority, payload, attempts, max_retries,
                  next_run_at, expires_at, created_at, updated_at)
VALUES (NULLIF(?1, ''), NULLIF(?2, ''), ?3, 'pending',
        LEAST(?4, COALESCE((SELECT max_priority FROM queues WHERE name = ?3), {MAX_PRIORITY})),
        ?5, 0, NULLIF(?6, -1), ?7,
        COALESCE(NULLIF(?8, -1.0), ?9 + (SELECT message_ttl FROM queues WHERE name = ?3)),
        ?9, ?9)
RETURNING id

-- name: last_job_id
SELECT last_value FROM jobs_id_seq

-- name: claim
-- SKIP LOCKED: rows another transaction is claiming are passed over, never waited for, so any
-- number of workers on any number of hosts take disjoint rows.
UPDATE jobs
SET state = 'processing', attempts = attempts + 1, deliveries = deliveries + 1, lease_owner = :owner,
    lease_expires_at = :lease_expires_at, updated_at = :now
WHERE id IN (
    SELECT id FROM jobs
    WHERE {DUE_IN_QUEUE}
    ORDER BY priority DESC, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
RETURNING id, queue, priority, attempts, task_id, payload, deliveries

-- name: take
DELETE FROM jobs
WHERE id IN (
    SELECT id FROM jobs
    WHERE {DUE_IN_QUEUE}
    ORDER BY priority DESC, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
RETURNING id, queue, priority, attempts + 1, task_id, payload, deliveries + 1

-- name: requeue
UPDATE jobs
SET state = 'pending', attempts = GREATEST(attempts - 1, 0), next_run_at = :now,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND state = 'processing' AND lease_owner = :owner

-- name: revive
UPDATE jobs
SET state = 'pending', attempts = 0, next_run_at = :now, updated_at = :now,
    payload = CASE WHEN last_error = {CANCELLED} AND left(payload, 1) = '{'
                   THEN jsonb_set(payload::jsonb, {REVIVED_PG_PATH}, to_jsonb(:now))::text ELSE payload END
WHERE id = :id AND state = 'dead'
RETURNING queue

-- name: revive_all
UPDATE jobs
SET state = 'pending', attempts = 0, next_run_at = :now, updated_at = :now,
    payload = CASE WHEN last_error = {CANCELLED} AND left(payload, 1) = '{'
                   THEN jsonb_set(payload::jsonb, {REVIVED_PG_PATH}, to_jsonb(:now))::text ELSE payload END
WHERE state = 'dead'
RETURNING id, queue

-- name: stats_add
INSERT INTO stats (minute, queue, event, count) VALUES (?, ?, ?, ?)
ON CONFLICT (minute, queue, event) DO UPDATE SET count = stats.count + excluded.count

-- name: stats_fold
INSERT INTO stats (minute, queue, event, count)
SELECT 0, queue, event, SUM(count) FROM stats WHERE minute > 0 AND minute < :cutoff
GROUP BY queue, event
ON CONFLICT (minute, queue, event) DO UPDATE SET count = stats.count + excluded.count

-- name: search_jobs_newest
SELECT * FROM jobs
WHERE id < coalesce(:cursor, 9223372036854775807)
  AND (:state IS NULL OR state = :state) AND (:queue IS NULL OR queue = :queue)
  AND (:task_name IS NULL OR task_name = :task_name) AND (:jobs_only = 0 OR {JOB_QUEUE})
  AND (:pattern IS NULL OR id = :row_id OR task_id LIKE :pattern ESCAPE '\'
       OR (left(payload, 1) = '{' AND (payload::jsonb #>> '{headers,kwargsrepr}' LIKE :pattern ESCAPE '\'
           OR payload::jsonb #>> '{headers,argsrepr}' LIKE :pattern ESCAPE '\')))
ORDER BY id DESC
LIMIT :limit

-- name: search_jobs_oldest
SELECT * FROM jobs
WHERE id > coalesce(:cursor, 0)
  AND (:state IS NULL OR state = :state) AND (:queue IS NULL OR queue = :queue)
  AND (:task_name IS NULL OR task_name = :task_name) AND (:jobs_only = 0 OR {JOB_QUEUE})
  AND (:pattern IS NULL OR id = :row_id OR task_id LIKE :pattern ESCAPE '\'
       OR (left(payload, 1) = '{' AND (payload::jsonb #>> '{headers,kwargsrepr}' LIKE :pattern ESCAPE '\'
           OR payload::jsonb #>> '{headers,argsrepr}' LIKE :pattern ESCAPE '\')))
ORDER BY id
LIMIT :limit

-- name: result_get
SELECT value, blob FROM results
WHERE key = :key AND (expires_at IS NULL OR expires_at > :now)

-- name: result_mget
SELECT key, value, blob FROM results
WHERE key IN (SELECT value FROM json_each(:keys))
  AND (expires_at IS NULL OR expires_at > :now)

-- name: result_set
-- :value is a str (NULL when the value is bytes), :blob the bytes (see postgres._params).
INSERT INTO results (key, value, blob, state, counter, expires_at, updated_at)
VALUES (:key, :value, :blob, NULL, 0, :expires_at, :now)
ON CONFLICT (key) DO UPDATE
SET value = excluded.value, blob = excluded.blob, state = NULL, expires_at = excluded.expires_at,
    updated_at = excluded.updated_at

-- name: result_store_task
INSERT INTO results (key, value, blob, state, counter, expires_at, updated_at)
VALUES (:key, :value, :blob, :state, 0, :expires_at, :now)
ON CONFLICT (key) DO UPDATE
SET value = excluded.value, blob = excluded.blob, state = excluded.state, expires_at = excluded.expires_at,
    updated_at = excluded.updated_at
WHERE results.state IS DISTINCT FROM 'SUCCESS'
   OR (results.expires_at IS NOT NULL AND results.expires_at <= excluded.updated_at)

-- name: result_claim_counter
UPDATE results SET state = 'done', expires_at = :expires_at, updated_at = :now
WHERE key = :key AND state IS DISTINCT FROM 'done' AND (expires_at IS NULL OR expires_at > :now)
