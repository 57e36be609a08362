-- The dashboard's reads that the CLI does not need: a page of jobs by filters, in either order.
--   :state, :queue, :task_name  exact filters (NULL: any)
--   :cursor   the id of the last job of the previous page (NULL: the first page)
--   :pattern  a LIKE pattern (backslash escapes) matched against the task id and the call as
--             Celery's headers show it (argsrepr, kwargsrepr: a shell job's command); :row_id the
--             row id the search text names, if it is a number; both NULL for no search
--   :jobs_only  leave out Celery's control queues

-- name: search_jobs_newest
SELECT * FROM jobs
WHERE id < coalesce(:cursor, 9223372036854775807)
  AND (:state IS NULL OR state = :state) AND (:queue IS NULL OR queue = :queue)
  AND (:task_name IS NULL OR task_name = :task_name) AND (:jobs_only = 0 OR {JOB_QUEUE})
  AND (:pattern IS NULL OR id = :row_id OR task_id LIKE :pattern ESCAPE '\'
       OR json_extract(payload, '$.headers.kwargsrepr') LIKE :pattern ESCAPE '\'
       OR json_extract(payload, '$.headers.argsrepr') LIKE :pattern ESCAPE '\')
ORDER BY id DESC
LIMIT :limit

-- name: search_jobs_oldest
SELECT * FROM jobs
WHERE id > coalesce(:cursor, 0)
  AND (:state IS NULL OR state = :state) AND (:queue IS NULL OR queue = :queue)
  AND (:task_name IS NULL OR task_name = :task_name) AND (:jobs_only = 0 OR {JOB_QUEUE})
  AND (:pattern IS NULL OR id = :row_id OR task_id LIKE :pattern ESCAPE '\'
       OR json_extract(payload, '$.headers.kwargsrepr') LIKE :pattern ESCAPE '\'
       OR json_extract(payload, '$.headers.argsrepr') LIKE :pattern ESCAPE '\')
ORDER BY id
LIMIT :limit
