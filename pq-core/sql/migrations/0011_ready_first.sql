-- pq: no transaction
--
-- The dequeue order becomes: jobs with an `expected_at` first, earliest first, then the rest;
-- within each, the job that became ready first. A job became ready when it was enqueued, or when
-- its `schedule_at` fell due (a delayed job, a retry), so `GREATEST(schedule_at, enqueued_at)`.
-- Before, unscheduled jobs sorted at `schedule_at = '-infinity'`, ahead of every job that had a
-- time, so a retry due an hour ago waited behind every job enqueued since.
--
-- A claim reads this index in two ranges per queue (pq-core/sql/functions/claim.sql): the jobs
-- with an expected time in order, skipping those not yet due, then the jobs without one, from
-- `(q_name, 'infinity')` up to the first not yet due, each stopped once it has its jobs.
--
-- Built CONCURRENTLY, outside a transaction: puts, claims and completions carry on while it is
-- built. The build waits for the transactions open when it starts and reads the table twice
-- (about 1 s per million rows here, BENCHMARKS.md). An index a failed build left invalid is
-- dropped first, so the migration can run again.

DROP INDEX CONCURRENTLY IF EXISTS {{qualified:ready_idx}};

CREATE INDEX CONCURRENTLY {{name:ready_idx}} ON {{table}}
    (q_name, COALESCE(expected_at, 'infinity'), GREATEST(schedule_at, enqueued_at), id)
    WHERE state = 'queued';

DROP INDEX CONCURRENTLY IF EXISTS {{qualified:dequeue_idx}};
