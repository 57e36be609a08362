-- Statements of the result backend, by name (loaded with queries.sql into one dictionary).
-- Every name starts with result_. A row whose expires_at has passed counts as absent: reads skip
-- it, writes replace it, and result_purge_expired deletes it.

-- name: result_get
-- The value and, in a second column, PostgreSQL's bytes (its results keep str and bytes apart).
SELECT value, NULL FROM results
WHERE key = :key AND (expires_at IS NULL OR expires_at > :now)

-- name: result_mget
-- :keys is a JSON array of keys; the rows come back in no particular order.
SELECT key, value, NULL FROM results
WHERE key IN (SELECT value FROM json_each(:keys))
  AND (expires_at IS NULL OR expires_at > :now)

-- name: result_set
-- Group keys and any other plain value: the last write wins. The counter is left alone.
INSERT INTO results (key, value, state, counter, expires_at, updated_at)
VALUES (:key, :value, NULL, 0, :expires_at, :now)
ON CONFLICT (key) DO UPDATE
SET value = excluded.value, state = NULL, expires_at = excluded.expires_at,
    updated_at = excluded.updated_at

-- name: result_store_task
-- A task's state. A live SUCCESS is final: the upsert changes nothing (no row counted) when the
-- stored state is SUCCESS, so a redelivered copy of a task that already succeeded cannot turn
-- it back into STARTED, RETRY or FAILURE, whichever process writes first.
INSERT INTO results (key, value, state, counter, expires_at, updated_at)
VALUES (:key, :value, :state, 0, :expires_at, :now)
ON CONFLICT (key) DO UPDATE
SET value = excluded.value, state = excluded.state, expires_at = excluded.expires_at,
    updated_at = excluded.updated_at
WHERE results.state IS NULL OR results.state <> 'SUCCESS'
   OR (results.expires_at IS NOT NULL AND results.expires_at <= excluded.updated_at)

-- name: result_delete
DELETE FROM results WHERE key = :key

-- name: result_incr
-- Chord counters: one statement, so parts returning at once in several processes never lose a
-- count. An expired counter starts again from 1 with the new expiry time.
INSERT INTO results (key, value, state, counter, expires_at, updated_at)
VALUES (:key, NULL, NULL, 1, :expires_at, :now)
ON CONFLICT (key) DO UPDATE
SET counter = CASE WHEN results.expires_at <= excluded.updated_at THEN 1
                   ELSE results.counter + 1 END,
    value = CASE WHEN results.expires_at <= excluded.updated_at THEN NULL
                 ELSE results.value END,
    expires_at = CASE WHEN results.expires_at <= excluded.updated_at THEN excluded.expires_at
                      ELSE results.expires_at END,
    updated_at = excluded.updated_at
RETURNING counter

-- name: result_counter_done
-- Whether a chord counter is finished (its body was sent).
SELECT 1 FROM results
WHERE key = :key AND state = 'done' AND (expires_at IS NULL OR expires_at > :now)

-- name: result_mark_part
-- Marks one chord part counted; no row changes when it was marked before (and has not expired).
INSERT INTO results (key, value, state, counter, expires_at, updated_at)
VALUES (:part_key, NULL, NULL, 0, :expires_at, :now)
ON CONFLICT (key) DO UPDATE
SET expires_at = excluded.expires_at, updated_at = excluded.updated_at
WHERE results.expires_at <= excluded.updated_at

-- name: result_finish_counter
-- The chord's body was sent: later copies of its header tasks count nothing.
INSERT INTO results (key, value, state, counter, expires_at, updated_at)
VALUES (:key, NULL, 'done', 0, :expires_at, :now)
ON CONFLICT (key) DO UPDATE
SET state = 'done', expires_at = excluded.expires_at, updated_at = excluded.updated_at

-- name: result_delete_parts
-- The part marks of a counter: keys that extend it with char(31) and a member.
DELETE FROM results WHERE key > :key || char(31) AND key < :key || char(32)

-- name: result_set_counter
-- A chord's size (a mark keyed <counter key> || char(31) || char(30) || 'size'): replaced, not added to.
INSERT INTO results (key, value, state, counter, expires_at, updated_at)
VALUES (:key, NULL, NULL, :counter, :expires_at, :now)
ON CONFLICT (key) DO UPDATE
SET counter = excluded.counter, value = NULL, state = NULL, expires_at = excluded.expires_at,
    updated_at = excluded.updated_at

-- name: result_chord_size
-- The size Celery gave a chord (set_chord_size) plus the tasks added to it since (add_to_chord);
-- no row: the size is not known yet (Celery sets it just before it publishes the last header task).
SELECT key, counter FROM results
WHERE key IN (:size_key, :extra_key) AND (expires_at IS NULL OR expires_at > :now)

-- name: result_claim_counter
-- The one part that sends a chord's body: turns the live counter to 'done' only if it was not.
UPDATE results SET state = 'done', expires_at = :expires_at, updated_at = :now
WHERE key = :key AND (state IS NULL OR state <> 'done') AND (expires_at IS NULL OR expires_at > :now)

-- name: result_expire
-- A new expiry time for a live key (NULL: keep it until it is deleted).
UPDATE results SET expires_at = :expires_at, updated_at = :now
WHERE key = :key AND (expires_at IS NULL OR expires_at > :now)

-- name: result_purge_expired
DELETE FROM results WHERE key IN (
    SELECT key FROM results WHERE expires_at <= :now LIMIT :limit
)

-- name: result_count
-- Every row, expired or not (expired rows are waiting for the next purge).
SELECT COUNT(*) FROM results
