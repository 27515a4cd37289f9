-- Records that job $1 ended ($2: `done`, `failed` or `cancelled`, with its result $3 and its
-- error $4) on each of its edges not settled yet (migration 25), and settles its children that
-- still wait, as their policy says:
--
--   done, or policy `run`: one parent fewer to wait for; at none, the child is ready, with the
--     parents' results in the arguments their edges name (a list, in order, for a fan-in);
--   policy `fail`: the child fails, saying which parent ended how, and so in turn do its own
--     children whose policy is `fail`, through the trigger;
--   policy `cancel`: every job of the child's workflow that has not started is cancelled.
--
-- Called by the triggers of migration 25, in the transaction that ends the parent, and by the
-- enqueue of a job whose parent had ended already (`Pq::enqueue_graph`). An edge settles once,
-- so a parent retried after it failed settles nothing again.
--
-- Children are locked in id order first: two parents of one child ending at once take turns
-- on its row, and the second sees the first's count and result. Released queues are notified
-- as puts notify them.

CREATE OR REPLACE FUNCTION {{qualified:settle}}(parent_id bigint, parent_state text,
    parent_result json, parent_error text) RETURNS void
LANGUAGE plpgsql AS {{dollar}}
DECLARE
    queues text[];
BEGIN
    UPDATE {{qualified:after}} AS a SET outcome = parent_state,
        result = CASE WHEN a.slot IS NOT NULL AND parent_state = 'done' THEN parent_result END,
        error = CASE WHEN parent_state <> 'done' THEN coalesce(parent_error, parent_state) END
    WHERE a.parent = parent_id AND a.outcome IS NULL;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    -- Its waiting children, locked in id order before anything reads them: the statements
    -- below then see what every parent that held one before committed (a statement that
    -- waited for a row lock would read the rest from its snapshot of before the wait).
    PERFORM FROM {{table}} AS t
    WHERE t.id IN (SELECT a.child FROM {{qualified:after}} AS a WHERE a.parent = parent_id)
      AND t.state = 'waiting'
    ORDER BY t.id FOR UPDATE;

    IF parent_state <> 'done' THEN
        UPDATE {{table}} AS j SET state = 'cancelled', waits = NULL, unique_key = NULL,
            finished_at = statement_timestamp(),
            last_error = format('cancelled: job %s of its workflow %s', parent_id,
                CASE parent_state WHEN 'failed' THEN 'failed' ELSE 'was cancelled' END)
        FROM (SELECT t.id FROM {{table}} AS t
              WHERE t.id IN (SELECT a.child FROM {{qualified:after}} AS a
                             WHERE a.parent = parent_id AND a.policy = 'cancel'
                             UNION
                             SELECT unnest(ARRAY[w.parent, w.child]) FROM {{qualified:after}} AS w
                             WHERE w.workflow IN (SELECT a.workflow FROM {{qualified:after}} AS a
                                                  WHERE a.parent = parent_id AND a.policy = 'cancel'))
                AND t.state IN ('waiting', 'queued')
              ORDER BY t.id FOR UPDATE) AS doomed
        WHERE j.id = doomed.id;

        UPDATE {{table}} AS j SET state = 'failed', waits = NULL,
            finished_at = statement_timestamp(),
            last_error = format('parent job %s %s: %s', parent_id, parent_state,
                coalesce(parent_error, 'no error recorded'))
        FROM (SELECT t.id FROM {{table}} AS t JOIN {{qualified:after}} AS a ON a.child = t.id
              WHERE a.parent = parent_id AND a.policy = 'fail' AND t.state = 'waiting'
              ORDER BY t.id FOR UPDATE OF t) AS failing
        WHERE j.id = failing.id;
    END IF;

    WITH counted AS (
        UPDATE {{table}} AS j SET
            waits = CASE WHEN j.waits > 1 THEN j.waits - 1 END,
            state = CASE WHEN j.waits > 1 THEN 'waiting' ELSE 'queued' END,
            schedule_at = CASE WHEN j.waits > 1 THEN j.schedule_at
                ELSE GREATEST(j.schedule_at, statement_timestamp()) END,
            data = CASE WHEN j.waits > 1 OR json_typeof(j.data) IS DISTINCT FROM 'object'
                         OR NOT EXISTS (SELECT FROM {{qualified:after}} AS a
                                        WHERE a.child = j.id AND a.slot IS NOT NULL)
                THEN j.data
                ELSE (SELECT json_object_agg(f.key, f.value) FROM (
                        SELECT d.key, d.value FROM json_each(j.data) AS d
                        WHERE d.key NOT IN (SELECT a.slot FROM {{qualified:after}} AS a
                                            WHERE a.child = j.id AND a.slot IS NOT NULL)
                        UNION ALL
                        SELECT a.slot, CASE WHEN bool_and(a.position IS NULL)
                            THEN (array_agg(a.result))[1]
                            ELSE json_agg(a.result ORDER BY a.position) END
                        FROM {{qualified:after}} AS a
                        WHERE a.child = j.id AND a.slot IS NOT NULL
                        GROUP BY a.slot) AS f)
                END
        FROM (SELECT t.id FROM {{table}} AS t JOIN {{qualified:after}} AS a ON a.child = t.id
              WHERE a.parent = parent_id AND t.state = 'waiting'
              ORDER BY t.id FOR UPDATE OF t) AS waiting
        WHERE j.id = waiting.id
        RETURNING j.q_name, j.state)
    SELECT array_agg(DISTINCT q_name) INTO queues FROM counted WHERE state = 'queued';

    PERFORM {{qualified:notify}}(q) FROM unnest(queues) AS q;
END
{{dollar}};
