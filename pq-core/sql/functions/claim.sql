-- The worker's claim: up to `want` ready jobs of its `queues`, leased to `worker`, in dequeue
-- order within each queue, the queues taken in the order given (the worker turns it, so that
-- none starves). One statement serves every queue of the worker.
--
-- The order, matching `ready_idx` (migration 0011) column for column: jobs with an expected
-- time first, earliest first; then the jobs without one; within each, the job ready first
-- (`GREATEST(schedule_at, enqueued_at)`), then the lower id. A queue is read in two ranges of
-- the index, each stopped once it has its jobs: the expected ones, past those not due yet; then
-- the others, from the start of their range up to the first one not due yet.
--
-- Each queue resumes after a position (`after_*`, NULL for the start) that the caller keeps
-- from its last claim there while a backlog lasts (see `ClaimQueues` in pq-core/src/lease.rs;
-- it computes a job's position from the times the claim returns, as the index does):
-- otherwise every claim steps again over the index entries of every job claimed since vacuum
-- last ran, which it never does while an older transaction stays open, and a drain slows as it
-- goes. A job that sorts before a position (released, rescued, retried, committed late, or more
-- urgent) waits until the caller starts again from the top, at most 2 s.
--
-- `worker` must be registered (`<table>_workers`, see `register` in pq-core/src/sql.rs). It
-- takes only the jobs of the tasks it registered (migration 18), passing over the others: a
-- queue that holds many jobs no worker of it knows costs each claim a read past them.
--
-- A paused queue (`<table>_queues`) gives nothing. The claim reads it in a snapshot taken after
-- its worker's lock, so that `pause`, which waits for every worker's lock, returns only once no
-- claim can take a job of the queue (`pause` in pq-core/src/admin.rs). So does a limit.
--
-- A limited queue (migration 19: a policy of its own, or a worker that registers a task with
-- one works it) is claimed by `claim_limited` (sql/functions/claim_limited.sql), never here.
-- A queue without a policy costs what it did: one more read of the table of queues, which
-- the pause's read became.
--
-- The update finds the locked rows by `ctid = ANY (array)`: one TID scan of them all, in the
-- table's order. Joined on `ctid` instead (a TID scan per row), claims took two thirds longer
-- as soon as two ran at once (BENCHMARKS.md, #65).
--
-- A claimed job gives up its unique key (migration 15): the next call with that key waits
-- while this one runs, and the job may come back to the queue (a retry, a rescue) beside it.
--
-- Every job of one claim gets the same `claim_id`, a number drawn once per claim that never
-- repeats: the fence of everything done to these runs afterwards.
--
-- A set-returning function collects its rows in a tuplestore, written to temporary files once
-- past `work_mem`: a claim of large jobs would copy them all there. So a job's data comes back
-- only while it is small (stored inline, under 8 kB), which a claim's worth of fits in the
-- function's own `work_mem`; a large job comes back without it (`data` NULL), and the caller
-- reads it by id in a statement of its own (`claimed_data` in pq-core/src/sql.rs). Text comes
-- back as its bytes (`convert_to(.., 'SQL_ASCII')` converts nothing), for the caller to check
-- as UTF-8: sent as text, a value invalid in the client's encoding would fail the whole claim.
--
-- The plan is made once per connection (`plan_cache_mode`): as a plain statement, the claim
-- was planned at every execution, which took as long as claiming 60 jobs. With `enable_seqscan`
-- and `enable_sort` off that plan is the ordered index scan, whatever the statistics say.

DROP FUNCTION IF EXISTS {{qualified:claim}}(int8, text[], int4, timestamptz[], timestamptz[], int8[]);
DROP FUNCTION IF EXISTS {{qualified:claim}}(int8, text[], int4, timestamptz[], timestamptz[], int8[], bool);

CREATE FUNCTION {{qualified:claim}}(
    worker int8, queues text[], want int4,
    after_expected timestamptz[], after_ready timestamptz[], after_id int8[],
    report_held bool DEFAULT false)
RETURNS TABLE (claim_id int8, id int8, attempts int4, rescues int4, row_version tid,
               q_name text, task bytea, data bytea, enqueued_at timestamptz,
               schedule_at timestamptz, expected_at timestamptz, timeout interval, meta bytea)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_sort = off
SET work_mem = '16MB'
AS {{dollar}}
#variable_conflict use_column
DECLARE
    claim int8 := nextval({{literal:claims}});
    known text[];
    closed text[];
    limited_queues text[];
    taken int4 := 0;
    more int4;
    phase text;
BEGIN
    -- A claim holds its worker's advisory lock shared until it commits: a worker
    -- deregistering takes it exclusively, so it waits for a claim it abandoned half-way and
    -- then finds every job that claim took; and a worker no longer registered claims nothing.
    -- (A lock on the worker's row would do the same at the cost of a WAL record, and of a
    -- MultiXact when two claims overlap: a third of the drain, BENCHMARKS.md.)
    PERFORM pg_advisory_xact_lock_shared({{claims_lock}}, (worker & 2147483647)::int4);
    SELECT w.tasks INTO known FROM {{qualified:workers}} AS w WHERE w.id = worker;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT array_agg(s.q_name), array_agg(s.q_name) FILTER (WHERE s.paused_at IS NULL)
    INTO closed, limited_queues
    FROM {{qualified:queues}} AS s
    WHERE s.q_name = ANY (queues) AND (s.paused_at IS NOT NULL OR s.limited);
    -- The limited path and the plain one take turns going first, as the worker turns its
    -- queues: the one of its first queue goes first.
    FOREACH phase IN ARRAY CASE
        WHEN limited_queues IS NULL THEN ARRAY['plain']
        WHEN queues[1] = ANY (limited_queues) THEN ARRAY['limited', 'plain']
        ELSE ARRAY['plain', 'limited'] END
    LOOP
    EXIT WHEN taken >= want;
    IF phase = 'limited' THEN
        PERFORM set_config('pq.held', '', true);
        RETURN QUERY SELECT * FROM {{qualified:claim_limited}}(
            worker, claim, known, limited_queues, want - taken);
        GET DIAGNOSTICS more = ROW_COUNT;
        taken := taken + more;
        CONTINUE;
    END IF;
    RETURN QUERY
    WITH open AS MATERIALIZED (
        SELECT * FROM unnest(queues, after_expected, after_ready, after_id) AS q(name, e, r, i)
        WHERE closed IS NULL OR q.name <> ALL (closed)),
    next AS MATERIALIZED (
        SELECT found.place
        FROM open AS q
        CROSS JOIN LATERAL (
            SELECT * FROM (SELECT j.ctid AS place FROM {{table}} AS j
             WHERE j.q_name = q.name AND j.state = 'queued'
               AND (known IS NULL OR j.task = ANY (known))
               AND COALESCE(j.expected_at, 'infinity') < 'infinity'
               AND GREATEST(j.schedule_at, j.enqueued_at) <= statement_timestamp()
               AND ROW(COALESCE(j.expected_at, 'infinity'), GREATEST(j.schedule_at, j.enqueued_at), j.id)
                   > ROW(COALESCE(q.e, '-infinity'), COALESCE(q.r, '-infinity'),
                         COALESCE(q.i, -9223372036854775808))
             ORDER BY COALESCE(j.expected_at, 'infinity'), GREATEST(j.schedule_at, j.enqueued_at), j.id
             LIMIT want - taken FOR UPDATE SKIP LOCKED) AS expected_first
            UNION ALL
            SELECT * FROM (SELECT j.ctid FROM {{table}} AS j
             WHERE j.q_name = q.name AND j.state = 'queued'
               AND (known IS NULL OR j.task = ANY (known))
               AND COALESCE(j.expected_at, 'infinity') = 'infinity'
               AND GREATEST(j.schedule_at, j.enqueued_at) <= statement_timestamp()
               AND ROW(GREATEST(j.schedule_at, j.enqueued_at), j.id)
                   > ROW(CASE WHEN q.e = 'infinity' THEN q.r ELSE '-infinity' END,
                         CASE WHEN q.e = 'infinity' THEN q.i ELSE -9223372036854775808 END)
             ORDER BY GREATEST(j.schedule_at, j.enqueued_at), j.id
             LIMIT want - taken FOR UPDATE SKIP LOCKED) AS the_rest
        ) AS found
        LIMIT want - taken)
    UPDATE {{table}} AS j SET state = 'running', attempts = GREATEST(j.attempts, 0) + 1,
        claim_id = claim, worker_id = worker, dequeued_at = statement_timestamp(),
        locked_until = NULL, unique_key = NULL
    WHERE j.ctid = ANY (ARRAY(SELECT place FROM next))
    RETURNING claim, j.id, j.attempts, COALESCE(j.rescues, 0), j.ctid, j.q_name,
        convert_to(j.task, 'SQL_ASCII'),
        CASE WHEN pg_column_size(j.data) < 8192 THEN convert_to(j.data::text, 'SQL_ASCII') END,
        j.enqueued_at, j.schedule_at, j.expected_at, j.timeout,
        convert_to(j.meta::text, 'SQL_ASCII');
    GET DIAGNOSTICS more = ROW_COUNT;
    taken := taken + more;
    END LOOP;
    -- A caller that asks is told, by a row of its own without a claim number, that a limit
    -- held back ready jobs, and how soon to look again (in `timeout`): no notification says
    -- when a limit has room again. (Workers of an older pq do not ask.)
    IF report_held AND limited_queues IS NOT NULL
       AND COALESCE(current_setting('pq.held', true), '') <> '' THEN
        RETURN QUERY SELECT NULL::int8, NULL::int8, NULL::int4, NULL::int4, NULL::tid,
            NULL::text, NULL::bytea, NULL::bytea, NULL::timestamptz, NULL::timestamptz,
            NULL::timestamptz, current_setting('pq.held')::interval, NULL::bytea;
    END IF;
END
{{dollar}};
