-- Recurring jobs: one row a schedule (a `#[pq::task(cron = ..)]` task, or a worker's
-- `periodic` call), declared by every worker that defines it, and fired by whichever of them
-- gets its row first. Firing locks the row, writes its jobs and moves `next_at` on, in one
-- transaction: each fire time gets its jobs once, whatever the number of workers and their
-- clocks (`next_at` is compared with the database's). `seen_at` is when a worker last declared
-- it: a schedule no running worker declares any more shows as orphaned, and stays until an
-- operator deletes it. A new table: nothing else is locked.

CREATE TABLE {{qualified:schedules}} (
    name       text        PRIMARY KEY,
    expression text        NOT NULL,
    timezone   text        NOT NULL,
    on_missed  text        NOT NULL,
    task       text        NOT NULL,
    q_name     text        NOT NULL,
    data       json        NOT NULL,
    next_at    timestamptz NOT NULL,
    last_at    timestamptz,
    last_job   bigint,
    paused_at  timestamptz,
    seen_at    timestamptz NOT NULL DEFAULT statement_timestamp(),
    -- Times an operator may write by hand, kept to what pq can read ('infinity' cannot be).
    CHECK (isfinite(next_at) AND isfinite(last_at) AND isfinite(paused_at) AND isfinite(seen_at))
);
