-- The worker's claim, as a function whose plan is made once per connection.
--
-- As a statement of its own, the claim was planned at every execution: PostgreSQL keeps a
-- prepared statement's generic plan only when it looks no dearer than the plans made for the
-- values at hand, and a generic `LIMIT $2` is costed as a tenth of the queue, so it never did.
-- Planning took 0.4 ms, about what claiming 60 jobs takes: at a concurrency of 16 or 64 (claims
-- of 8 to 64 jobs) most of a claim's time (BENCHMARKS.md, #47). The function's statement keeps
-- its generic plan (`plan_cache_mode`), and that plan is the one a claim of any size wants: the
-- dequeue index read in order from the cursor, stopped after `$2` rows. `enable_seqscan` and
-- `enable_sort` off make sure of it whatever the statistics say (the index can always serve).
--
-- The statement is the one pq ran before this function (pq-core/src/sql.rs). A backlog is
-- claimed from a cursor. Each claim leaves on its connection, in a setting named after the
-- table and the queue, the position of the last job it took, and the next claim there starts
-- after it. Otherwise every claim steps again over the index entries of all the jobs claimed
-- before it, which vacuum removes only after a while and never while a transaction older than
-- them stays open: each claim then reads more than the last, and a drain slows down as it goes.
-- The cursor is kept only while ready jobs remain after it (a backlog), and for 2 s at most: a
-- job that sorts before it (released, rescued, retried, committed late, or more urgent) waits
-- at most that long while a backlog drains, and not at all otherwise.
--
-- The locked rows reach the aggregate in index order (nothing between the two can reorder
-- them), so the last of each array is the last position. The look for more jobs after it is an
-- ordered subquery (an EXISTS would drop the order) so that it too reads the index from there
-- on, not the table from its start past every claimed row. The update finds its rows by their
-- `ctid`, which cannot change under the row locks just taken: no index lookup per job.
--
-- Arguments: the queue, how many jobs at most, the lease in microseconds. The columns are the
-- ones pq decodes a job from, in its order.
--
-- Extra placeholder: {{claim_cursor}}, the prefix of the cursor's setting, as a string literal.

CREATE FUNCTION {{qualified:claim}}(text, int8, int8)
RETURNS TABLE (id int8, q_name text, task text, data text, attempts int4,
               enqueued_at timestamptz, schedule_at timestamptz, expected_at timestamptz,
               ctid tid)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_sort = off
AS {{dollar}}
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH cursor AS MATERIALIZED (
        SELECT split_part(v, '|', 1)::int8 AS since,
               split_part(v, '|', 2)::timestamptz AS after_schedule,
               split_part(v, '|', 3)::timestamptz AS after_expected,
               split_part(v, '|', 4)::int8 AS after_id
        FROM (SELECT current_setting({{claim_cursor}} || left(md5($1), 16), true) AS v) AS setting
        WHERE v <> ''
          AND split_part(v, '|', 1)::int8
              > (extract(epoch FROM statement_timestamp()) * 1000)::int8 - 2000),
    taken AS MATERIALIZED (
        SELECT array_agg(ctid) AS rows, count(*) AS n,
               (array_agg(schedule_at))[count(*)::int4] AS last_schedule,
               (array_agg(expected))[count(*)::int4] AS last_expected,
               (array_agg(id))[count(*)::int4] AS last_id
        FROM (
            SELECT ctid, id, schedule_at, COALESCE(expected_at, 'infinity') AS expected
            FROM {{table}}
            WHERE q_name = $1 AND state = 'queued' AND schedule_at <= statement_timestamp()
              AND ROW(schedule_at, COALESCE(expected_at, 'infinity'), id) > ROW(
                  COALESCE((SELECT after_schedule FROM cursor), '-infinity'),
                  COALESCE((SELECT after_expected FROM cursor), '-infinity'),
                  COALESCE((SELECT after_id FROM cursor), '-9223372036854775808'::int8))
            ORDER BY schedule_at, COALESCE(expected_at, 'infinity'), id
            LIMIT $2 FOR UPDATE SKIP LOCKED) AS next),
    moved AS MATERIALIZED (
        SELECT set_config({{claim_cursor}} || left(md5($1), 16),
            CASE WHEN n = $2 AND (
                SELECT id FROM {{table}}
                WHERE q_name = $1 AND state = 'queued' AND schedule_at <= statement_timestamp()
                  AND ROW(schedule_at, COALESCE(expected_at, 'infinity'), id)
                      > ROW(taken.last_schedule, taken.last_expected, taken.last_id)
                ORDER BY schedule_at, COALESCE(expected_at, 'infinity'), id LIMIT 1
            ) IS NOT NULL
                THEN COALESCE((SELECT since FROM cursor),
                              (extract(epoch FROM statement_timestamp()) * 1000)::int8)
                    || '|' || last_schedule || '|' || last_expected || '|' || last_id
                ELSE '' END, false)
        FROM taken)
    UPDATE {{table}} AS j SET state = 'running', attempts = j.attempts + 1,
        dequeued_at = statement_timestamp(),
        locked_until = statement_timestamp() + $3 * interval '1 microsecond'
    WHERE j.ctid = ANY ((SELECT rows FROM taken, moved)::tid[])
    RETURNING j.id, j.q_name, j.task, j.data::text, j.attempts, j.enqueued_at,
        NULLIF(j.schedule_at, '-infinity'), j.expected_at, j.ctid;
END
{{dollar}};
