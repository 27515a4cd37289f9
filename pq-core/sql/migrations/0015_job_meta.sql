-- What pq carries with a job beside its arguments, as a JSON object: for now the trace
-- context of the span that enqueued it (`traceparent`, with the `otel` feature), so that its
-- runs join that trace. NULL for a plain job, and for the rows already there (no rewrite); the
-- claim returns it (sql/functions/claim.sql).
--
-- Locks: ADD COLUMN without a default takes ACCESS EXCLUSIVE on the queue table for an instant,
-- whatever its size; the runner waits at most 2 s for it (lock_timeout) and tries again.

ALTER TABLE {{table}} ADD COLUMN meta jsonb;
