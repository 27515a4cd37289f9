-- A handler may snooze its job: run it again after a delay, the attempt uncounted. `snoozes`
-- counts them, so that a job cannot snooze forever (see `snooze` in pq-core/src/sql.rs). NULL
-- for the rows already there (no rewrite).
--
-- Locks: ADD COLUMN without a default takes ACCESS EXCLUSIVE on the queue table for an instant,
-- whatever its size; the runner waits at most 2 s for it (lock_timeout) and tries again.

ALTER TABLE {{table}} ADD COLUMN snoozes integer;
