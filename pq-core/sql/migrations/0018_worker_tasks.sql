-- A worker claims only the jobs of the tasks it has registered (`tasks`, NULL for a worker
-- that runs any task, as every worker did before): old and new binaries share a queue during
-- a rolling deploy, and a job whose task no running worker knows waits, visible as such,
-- instead of failing at the first worker that cannot run it.
--
-- Locks: ADD COLUMN without a default takes ACCESS EXCLUSIVE on the table of workers (not the
-- queue) for an instant; the runner waits at most 2 s for it (lock_timeout) and tries again.

ALTER TABLE {{qualified:workers}} ADD COLUMN tasks text[];
