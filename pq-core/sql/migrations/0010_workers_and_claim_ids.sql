-- Liveness moves from each running job's row to its worker's: a table of workers, each
-- renewing its own row (its heartbeat), and running jobs that point at their worker. A job's
-- row is then written only when it is claimed and when its outcome is recorded, so a long job's
-- row never changes while it runs (a REPEATABLE READ handler completes it without a
-- serialization failure), and renewal costs one write per worker instead of one per job.
-- Rescue returns the jobs of workers whose heartbeat ran out (see `rescue` in
-- pq-core/src/sql.rs). The table is also what shows the live workers.
--
-- A claim's fence becomes `claim_id`, drawn once per claim statement from a sequence: it never
-- repeats for a job, whatever happens to its attempt count. `rescues` counts the runs a job lost
-- with its worker, which do not spend the task's retries; `timeout` is the limit a call set on
-- its job's run. New columns are NULL for the rows already there (no rewrite).
--
-- Locks: ADD COLUMN without a default takes ACCESS EXCLUSIVE on the queue table for an instant,
-- whatever its size; the runner waits at most 2 s for it (lock_timeout) and tries again.

CREATE TABLE {{qualified:workers}} (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    queues      text[]      NOT NULL,
    concurrency integer     NOT NULL,
    version     text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT statement_timestamp(),
    seen_at     timestamptz NOT NULL DEFAULT statement_timestamp(),
    expires_at  timestamptz NOT NULL
);

CREATE SEQUENCE {{qualified:claims}};

ALTER TABLE {{table}}
    ADD COLUMN claim_id  bigint,
    ADD COLUMN worker_id bigint,
    ADD COLUMN rescues   integer,
    ADD COLUMN timeout   interval;
