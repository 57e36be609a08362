-- The reads of `queuectl doctor` (queuectl_kombu/doctor.py) beside those of metrics.sql: what the
-- retention keeps, and on PostgreSQL the sizes of the schema's relations and the jobs table's
-- dead tuples and vacuums (the server's statistics views; nothing here runs on SQLite).

-- name: completed_kept
-- The completed jobs the retention keeps: how many, and their payloads' bytes (PostgreSQL's text
-- in postgresql.sql: octet_length).
SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(payload AS BLOB))), 0) FROM jobs WHERE state = 'completed'

-- name: relation_sizes
-- PostgreSQL: each table of the schema, its bytes with its indexes and TOAST, and of its indexes.
SELECT c.relname, pg_total_relation_size(c.oid), pg_indexes_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :schema AND c.relkind = 'r'
ORDER BY pg_total_relation_size(c.oid) DESC, c.relname

-- name: table_activity
-- PostgreSQL: a table's live and dead tuples and when it was last vacuumed and analyzed, by hand
-- or by autovacuum (epoch seconds; NULL: never), as the statistics views saw them last.
SELECT n_live_tup, n_dead_tup,
       EXTRACT(EPOCH FROM last_vacuum), EXTRACT(EPOCH FROM last_autovacuum),
       EXTRACT(EPOCH FROM last_analyze), EXTRACT(EPOCH FROM last_autoanalyze)
FROM pg_stat_user_tables WHERE schemaname = :schema AND relname = :table
