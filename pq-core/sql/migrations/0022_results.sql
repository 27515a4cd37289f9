-- A task may return a value (`#[pq::task] async fn f() -> anyhow::Result<T>`): its job is then
-- kept `done` with the value in `result`, as JSON text, until `expires_at`, when a worker's
-- maintenance deletes it. `json`, not `jsonb`: the text is stored as the worker wrote it (no
-- parse into a binary form), and a string holding `\u0000`, which `jsonb` refuses, is kept.
--
-- Both NULL for a plain job and for the rows already there (no rewrite): a task that returns
-- `()` writes neither, and its job is deleted when it succeeds, as before.
--
-- Locks: ADD COLUMN without a default takes ACCESS EXCLUSIVE on the queue table for an instant,
-- whatever its size; the runner waits at most 2 s for it (lock_timeout) and tries again.

ALTER TABLE {{table}} ADD COLUMN result json, ADD COLUMN expires_at timestamptz;
