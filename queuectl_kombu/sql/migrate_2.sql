-- Version 1 -> 2: jobs.deliveries counts every claim of a message, requeues included, so that a
-- delivery after the first says redelivered (attempts does not count a requeue). A row that was
-- claimed before counts its attempts as deliveries.
ALTER TABLE jobs ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET deliveries = attempts WHERE attempts > 0;
