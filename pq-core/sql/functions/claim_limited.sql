-- The claim's limited path (see claim.sql, which calls it): up to `want` ready jobs of the
-- `limited` queues (migration 19) for `worker` under `claim`, never more than their policies
-- allow, counted over every worker of the fleet:
--
-- * a queue's `max_running`, and a task's (for the task, or for each of its flow keys);
-- * a sequence: the jobs of one flow key run one at a time, in enqueue order (`block`: a job
--   waiting to retry holds back the later ones; `skip`: it does not);
-- * a rate (a queue's, a task's, or each of its keys'): GCRA, at most `burst` at once and
--   `rate` per `per` after.
--
-- Exact, not eventually: the claims of one limited queue, and of each task with a policy whose
-- queue it is, take its advisory lock (`flows_lock`, then a hash of its name) until they commit, every claim in the
-- same order, so that they never wait on each other in a circle. What they count is then read
-- by a later statement, in a snapshot that sees every claim that held the lock before. No
-- counter is written: what runs is counted, over the jobs running under a live lease (a dead
-- worker's jobs stop counting when its heartbeat runs out, before their rescue), through the
-- index of running jobs (`out_idx`), a read of what runs fleet-wide. Only a rate writes, its
-- GCRA state (`tat`, on its queue's or task's row, or a row of its key in `key_rates`).
--
-- Candidates are read in dequeue order from the top of each queue, as many as its room (four
-- times as many, where tasks with a policy may drop some), past the jobs of keys at their
-- limit (a read of each of those: a key with a deep backlog at the front of its queue costs
-- each claim a read past it), and capped in turn by key, by task and by queue. The rows
-- are not locked while they are chosen (window functions cannot be): the claims that could
-- take them hold the same locks, and the update checks again that each is still queued.
--
-- Planned as claim.sql's, once per connection, index scans only; without JIT, which the
-- disabled scans' costs would call for, at a hundred milliseconds a claim.

DROP FUNCTION IF EXISTS {{qualified:claim_limited}}(int8, int8, text[], text[], int4);

CREATE FUNCTION {{qualified:claim_limited}}(
    worker int8, claim int8, known text[], limited_queues text[], want int4)
RETURNS TABLE (claim_id int8, id int8, attempts int4, rescues int4, row_version tid,
               q_name text, task bytea, data bytea, enqueued_at timestamptz,
               schedule_at timestamptz, expected_at timestamptz, timeout interval, meta bytea)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
SET work_mem = '16MB'
AS {{dollar}}
#variable_conflict use_column
DECLARE
    flow_tasks text[];
BEGIN
    -- Counting in a later statement than the locks sees the claims before only in READ
    -- COMMITTED, where each statement takes a snapshot of its own.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'pq: a claim of a limited queue needs READ COMMITTED, not %',
            current_setting('transaction_isolation');
    END IF;
    SELECT array_agg(f.task) INTO flow_tasks FROM {{qualified:flows}} AS f
    WHERE f.q_name = ANY (limited_queues) AND (known IS NULL OR f.task = ANY (known));
    PERFORM pg_advisory_xact_lock({{flows_lock}}, l.k)
    FROM (SELECT DISTINCT hashtext(x) AS k
          FROM unnest(ARRAY(SELECT 'queue ' || n FROM unnest(limited_queues) AS n)
                      || ARRAY(SELECT 'task ' || n FROM unnest(flow_tasks) AS n)) AS x
          ORDER BY 1) AS l;
    RETURN QUERY
    WITH live AS MATERIALIZED (
        SELECT j.q_name, j.task, j.flow FROM {{table}} AS j
        WHERE j.state = 'running' AND (j.q_name = ANY (limited_queues) OR j.task = ANY (flow_tasks))
          AND EXISTS (SELECT FROM {{qualified:workers}} AS w
                      WHERE w.id = j.worker_id AND w.expires_at > statement_timestamp())),
    queue_room AS MATERIALIZED (
        SELECT s.q_name, s.per / s.rate AS emission,
               LEAST(want,
                     s.max_running - (SELECT count(*) FROM live WHERE live.q_name = s.q_name),
                     floor((s.burst * (extract(epoch FROM s.per) / s.rate)
                            - GREATEST(extract(epoch FROM s.tat - statement_timestamp()), 0))
                           / (extract(epoch FROM s.per) / s.rate) + 1e-9)) AS room
        FROM {{qualified:queues}} AS s WHERE s.q_name = ANY (limited_queues)),
    task_room AS MATERIALIZED (
        SELECT f.task, f.per_key, f.sequence, f.per / f.rate AS emission, f.burst,
               f.per_key AND f.rate IS NOT NULL AS key_rate,
               CASE WHEN f.sequence IS NOT NULL THEN 1 WHEN f.per_key THEN f.max_running END
                   AS key_limit,
               LEAST(CASE WHEN NOT f.per_key AND f.sequence IS NULL THEN f.max_running
                          - (SELECT count(*) FROM live WHERE live.task = f.task) END,
                     CASE WHEN NOT f.per_key THEN
                     floor((f.burst * (extract(epoch FROM f.per) / f.rate)
                            - GREATEST(extract(epoch FROM f.tat - statement_timestamp()), 0))
                           / (extract(epoch FROM f.per) / f.rate) + 1e-9) END) AS room
        FROM {{qualified:flows}} AS f WHERE f.task = ANY (flow_tasks)),
    -- The keys of per-key rates whose bucket is not full: how many each may start now, and
    -- how soon one more.
    key_rate_room AS MATERIALIZED (
        SELECT r.flow, r.tat - (f.burst - 1) * f.emission - statement_timestamp() AS ready_in,
               floor((f.burst * extract(epoch FROM f.emission)
                              - extract(epoch FROM r.tat - statement_timestamp()))
                             / extract(epoch FROM f.emission) + 1e-9) AS room
        FROM task_room AS f
        JOIN {{qualified:key_rates}} AS r
          ON r.task = f.task AND r.tat > statement_timestamp()
        WHERE f.key_rate),
    key_live AS MATERIALIZED (
        SELECT live.task, live.flow, count(*) AS n FROM live
        WHERE live.flow IS NOT NULL GROUP BY live.task, live.flow),
    full_keys AS MATERIALIZED (
        SELECT k.flow FROM key_live AS k JOIN task_room AS f ON f.task = k.task
        WHERE k.n >= f.key_limit
        UNION ALL
        SELECT r.flow FROM key_rate_room AS r WHERE r.room < 1),
    candidates AS MATERIALIZED (
        SELECT c.* FROM queue_room AS q
        CROSS JOIN LATERAL (
            SELECT j.ctid AS place, j.id, j.q_name, j.task, j.flow,
                   COALESCE(j.expected_at, 'infinity') AS e,
                   GREATEST(j.schedule_at, j.enqueued_at) AS r
            FROM {{table}} AS j
            WHERE j.q_name = q.q_name AND j.state = 'queued'
              AND GREATEST(j.schedule_at, j.enqueued_at) <= statement_timestamp()
              AND (known IS NULL OR j.task = ANY (known))
              AND (j.flow IS NULL OR j.flow NOT IN (SELECT flow FROM full_keys))
              AND NOT EXISTS (
                  SELECT FROM task_room AS f
                  WHERE f.task = j.task AND f.sequence IS NOT NULL AND j.flow IS NOT NULL
                    AND (EXISTS (SELECT FROM {{table}} AS s
                                 WHERE s.flow = j.flow AND s.state = 'running')
                         OR EXISTS (SELECT FROM {{table}} AS s
                                 WHERE s.flow = j.flow AND s.state = 'queued' AND s.id < j.id
                                   AND (f.sequence = 'block'
                                        OR GREATEST(s.schedule_at, s.enqueued_at)
                                           <= statement_timestamp()))))
            ORDER BY COALESCE(j.expected_at, 'infinity'), GREATEST(j.schedule_at, j.enqueued_at), j.id
            LIMIT CASE WHEN q.room <= 0 THEN 0
                       WHEN flow_tasks IS NULL THEN q.room
                       ELSE LEAST(q.room, want) * 4 + 16 END
        ) AS c),
    by_key AS (
        SELECT c.place, c.id, c.q_name, c.task, c.flow, c.e, c.r FROM (
            SELECT c.*, row_number() OVER (PARTITION BY c.flow ORDER BY c.e, c.r, c.id) AS n
            FROM candidates AS c) AS c
        LEFT JOIN task_room AS f ON f.task = c.task
        LEFT JOIN key_live AS k ON k.flow = c.flow AND k.task = c.task
        LEFT JOIN key_rate_room AS r ON r.flow = c.flow
        WHERE c.flow IS NULL
           OR ((f.key_limit IS NULL OR c.n <= f.key_limit - COALESCE(k.n, 0))
               AND (f.key_rate IS NOT TRUE OR c.n <= COALESCE(r.room, f.burst)))),
    by_task AS (
        SELECT c.place, c.id, c.q_name, c.task, c.flow, c.e, c.r FROM (
            SELECT c.*, row_number() OVER (PARTITION BY c.task ORDER BY c.e, c.r, c.id) AS n
            FROM by_key AS c) AS c
        LEFT JOIN task_room AS f ON f.task = c.task
        WHERE f.room IS NULL OR c.n <= f.room),
    by_queue AS (
        SELECT c.place, c.id, c.q_name, c.task, c.flow, c.e, c.r FROM (
            SELECT c.*, row_number() OVER (PARTITION BY c.q_name ORDER BY c.e, c.r, c.id) AS n
            FROM by_task AS c) AS c
        JOIN queue_room AS q ON q.q_name = c.q_name
        WHERE q.room IS NULL OR c.n <= q.room),
    picked AS (SELECT c.place, c.q_name FROM by_queue AS c ORDER BY c.e, c.r, c.id LIMIT want),
    claimed AS (
        UPDATE {{table}} AS j SET state = 'running', attempts = GREATEST(j.attempts, 0) + 1,
            claim_id = claim, worker_id = worker, dequeued_at = statement_timestamp(),
            locked_until = NULL, unique_key = NULL
        WHERE j.ctid = ANY (ARRAY(
            SELECT l.ctid FROM {{table}} AS l
            WHERE l.ctid = ANY (ARRAY(SELECT place FROM picked)) AND l.state = 'queued'
            FOR UPDATE SKIP LOCKED))
        RETURNING j.*, j.ctid AS place),
    queue_rates AS (
        UPDATE {{qualified:queues}} AS s
        SET tat = GREATEST(s.tat, statement_timestamp()) + s.per / s.rate * c.n
        FROM (SELECT c.q_name, count(*) AS n FROM claimed AS c GROUP BY c.q_name) AS c
        WHERE s.q_name = c.q_name AND s.rate IS NOT NULL),
    task_rates AS (
        UPDATE {{qualified:flows}} AS f
        SET tat = GREATEST(f.tat, statement_timestamp()) + f.per / f.rate * c.n
        FROM (SELECT c.task, count(*) AS n FROM claimed AS c GROUP BY c.task) AS c
        WHERE f.task = c.task AND f.rate IS NOT NULL AND NOT f.per_key),
    key_rates AS (
        INSERT INTO {{qualified:key_rates}} AS r (flow, task, tat)
        SELECT c.flow, c.task, statement_timestamp() + f.emission * count(*)
        FROM claimed AS c JOIN task_room AS f ON f.task = c.task AND f.key_rate
        WHERE c.flow IS NOT NULL GROUP BY c.flow, c.task, f.emission
        ON CONFLICT (flow) DO UPDATE
        SET tat = GREATEST(r.tat, statement_timestamp()) + (EXCLUDED.tat - statement_timestamp())),
    -- A key whose bucket is full again needs no row: a few of them go with each claim (never
    -- one this claim writes: a statement cannot change a row twice).
    full_buckets AS (
        DELETE FROM {{qualified:key_rates}} AS r
        WHERE r.ctid = ANY (ARRAY(
            SELECT x.ctid FROM {{qualified:key_rates}} AS x
            WHERE x.task = ANY (flow_tasks) AND x.tat <= statement_timestamp()
              AND x.flow NOT IN (SELECT c.flow FROM claimed AS c WHERE c.flow IS NOT NULL)
            LIMIT 64))),
    -- Whether a limit held back a ready job (one the caps dropped, or a queue whose room it
    -- took up that has more), and how soon to look again: said in `pq.held`, for claim.sql.
    held AS (
        SELECT set_config('pq.held', LEAST(interval '50 milliseconds',
                     (SELECT min(q.emission) FROM queue_room AS q),
                     (SELECT min(f.emission) FROM task_room AS f WHERE NOT f.key_rate),
                     (SELECT min(r.ready_in) FROM key_rate_room AS r WHERE r.room < 1))::text, true)
        WHERE (SELECT count(*) FROM candidates) > (SELECT count(*) FROM picked)
           OR EXISTS (SELECT FROM key_rate_room AS r WHERE r.room < 1)
           OR EXISTS (
               SELECT FROM queue_room AS q
               WHERE q.room < want
                 AND q.room <= (SELECT count(*) FROM picked AS p WHERE p.q_name = q.q_name)
                 AND EXISTS (
                   SELECT FROM {{table}} AS j
                   WHERE j.q_name = q.q_name AND j.state = 'queued'
                     AND GREATEST(j.schedule_at, j.enqueued_at) <= statement_timestamp()
                     AND (known IS NULL OR j.task = ANY (known)))))
    SELECT claim, j.id, j.attempts, COALESCE(j.rescues, 0), j.place, j.q_name,
        convert_to(j.task, 'SQL_ASCII'),
        CASE WHEN pg_column_size(j.data) < 8192 THEN convert_to(j.data::text, 'SQL_ASCII') END,
        j.enqueued_at, j.schedule_at, j.expected_at, j.timeout,
        convert_to(j.meta::text, 'SQL_ASCII')
    FROM claimed AS j
    -- A condition on no row, evaluated once before the others: it runs `held`.
    WHERE (SELECT count(*) FROM held) >= 0;
END
{{dollar}};
