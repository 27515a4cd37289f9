-- Flow control: limits on how many jobs run at once and how fast they start, fleet-wide,
-- enforced by the claim (sql/functions/claim_limited.sql).
--
-- A queue's own policy is on its row of `<table>_queues` (`Admin::limit`). `limited` marks the
-- queues whose claims take the limited path: those with a policy of their own, and those that a
-- task with a policy declares as its queue. The plain path passes them over altogether, so a
-- queue without a policy costs what it did.
--
-- A task's policy (`#[pq::task(limit = .., limit_key = [..], sequence = [..], rate = ..)]`)
-- is a row of `<table>_flows`, declared by every worker that registers the task, as schedules
-- are. Its jobs carry their flow key in `flow` (JSON `[task, key...]`): the jobs of one key share
-- a per-key limit, or run one at a time in order for a sequence. NULL for every other job.
--
-- `tat`, where a rate limit has one, is the state of its GCRA: the time at which the bucket is
-- empty again. Written only by the claims of rate-limited queues and tasks.
--
-- Locks: ADD COLUMN without a default takes ACCESS EXCLUSIVE on the queue table for an instant,
-- whatever its size (and, with a constant default, on the small table of queues); the runner
-- waits at most 2 s for it (lock_timeout) and tries again.

ALTER TABLE {{table}} ADD COLUMN flow text;

ALTER TABLE {{qualified:queues}}
    ADD COLUMN limited     boolean  NOT NULL DEFAULT false,
    ADD COLUMN max_running integer  CHECK (max_running > 0),
    ADD COLUMN rate        integer  CHECK (rate > 0),
    ADD COLUMN per         interval CHECK (per > interval '0' AND per <= interval '1 day'),
    ADD COLUMN burst       integer  CHECK (burst > 0),
    ADD COLUMN tat         timestamptz,
    ADD CHECK ((rate IS NULL) = (per IS NULL) AND (rate IS NULL) = (burst IS NULL));

CREATE TABLE {{qualified:flows}} (
    task        text        PRIMARY KEY,
    q_name      text        NOT NULL,
    max_running integer     CHECK (max_running > 0),
    per_key     boolean     NOT NULL DEFAULT false,
    sequence    text        CHECK (sequence IN ('block', 'skip')),
    rate        integer     CHECK (rate > 0),
    per         interval    CHECK (per > interval '0' AND per <= interval '1 day'),
    burst       integer     CHECK (burst > 0),
    tat         timestamptz,
    seen_at     timestamptz NOT NULL DEFAULT statement_timestamp(),
    CHECK ((rate IS NULL) = (per IS NULL) AND (rate IS NULL) = (burst IS NULL))
);
