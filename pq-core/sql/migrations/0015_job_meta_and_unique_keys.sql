-- Two columns, NULL for a plain job and for the rows already there (no rewrite):
--
-- `meta`, what pq carries with a job beside its arguments, as a JSON object: for now the trace
-- context of the span that enqueued it (`traceparent`, with the `otel` feature), so that its
-- runs join that trace. The claim returns it (sql/functions/claim.sql).
--
-- `unique_key`, the key of a unique task's waiting job (`#[pq::task(unique = [..])]`): at most
-- one job waits per key (the index of migration 16). A claim clears it, so that the key is free
-- for the next call while the job runs, and a job that returns to the queue (a retry, a
-- rescue) never meets a waiting one with its key.
--
-- Locks: ADD COLUMN without a default takes ACCESS EXCLUSIVE on the queue table for an instant,
-- whatever its size; the runner waits at most 2 s for it (lock_timeout) and tries again.

ALTER TABLE {{table}} ADD COLUMN meta jsonb, ADD COLUMN unique_key text;
