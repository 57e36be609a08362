-- PostgreSQL's own text of the statements of queries.sql, results.sql and doctor.sql that mean
-- something else there, by the same names: the results' values (a str in value, bytes in blob),
-- the stats counted into a row per shard of sessions (backend pid % 16, see schema_script), and
-- a text's bytes (octet_length; SQLite casts to a BLOB). Every
-- other statement is translated as it is (postgres.translate: placeholders, INDEXED BY, char(),
-- scalar MIN and MAX, LIKE, JSON arrays, and FOR UPDATE SKIP LOCKED on the rows a claim or a
-- prune picks). Parameters are bound by psycopg (client side).

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

-- name: stats_add
INSERT INTO stats (minute, queue, event, count, shard) VALUES (?, ?, ?, ?, pg_backend_pid() % 16)
ON CONFLICT (minute, queue, event, shard) DO UPDATE SET count = stats.count + excluded.count

-- name: stats_fold
INSERT INTO stats (minute, queue, event, count, shard)
SELECT 0, queue, event, SUM(count), 0 FROM stats WHERE minute > 0 AND minute < :cutoff
GROUP BY queue, event
ON CONFLICT (minute, queue, event, shard) DO UPDATE SET count = stats.count + excluded.count

-- name: copy_results_out
SELECT key, value, blob, state, counter, expires_at, updated_at FROM results
WHERE expires_at IS NULL OR expires_at > :now ORDER BY key

-- name: copy_result_in
-- :value is a str (NULL when the value is bytes), :blob the bytes
INSERT INTO results (key, value, blob, state, counter, expires_at, updated_at)
VALUES (:key, :value, :blob, :state, :counter, :expires_at, :updated_at)
ON CONFLICT (key) DO NOTHING

-- name: completed_kept
SELECT COUNT(*), COALESCE(SUM(octet_length(payload)), 0) FROM jobs WHERE state = 'completed'
