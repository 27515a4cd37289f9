-- Settles the children of parents that ended (migration 25), as their policies say:
--
--   parent done, or policy `run`: one parent fewer to wait for; at none, the child is ready,
--     with the parents' results in the arguments their edges name (a list, in order, for a
--     fan-in), and its queue notified as a put notifies it;
--   policy `fail`: the child fails, saying which parent ended how, and so in turn do its own
--     children whose policy is `fail`;
--   policy `cancel`: every job of the child's workflow that has not started is cancelled.
--
-- An edge settles once, so a parent retried after it failed settles nothing again. Children
-- are locked in id order before they are read: two transactions that end parents of one child
-- take turns on its row, and the second counts from the first's count.

-- Released children $1 take their parents' recorded results as the arguments their edges
-- name (a list, in order, for a fan-in; a failed parent's is null). Their rows are locked since
-- their count, so this sees every parent's result. A child whose data is not a JSON object is
-- left as it is, to fail as it decodes.
CREATE OR REPLACE FUNCTION {{qualified:set_inputs}}(children bigint[]) RETURNS void
LANGUAGE sql AS {{dollar}}
    UPDATE {{table}} AS j SET data = (
        SELECT json_object_agg(f.key, f.value) FROM (
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
    FROM unnest(children) AS r(id)
    WHERE j.id = r.id AND json_typeof(j.data) = 'object'
      AND EXISTS (SELECT FROM {{qualified:after}} AS a WHERE a.child = j.id AND a.slot IS NOT NULL)
{{dollar}};

-- Parents $1 that succeeded, with their results $2 (NULL for none), all at once: what the
-- deferred trigger of migration 25 runs at a commit that ended parents, through
-- `settle_ended`. One statement counts, and one more sets the arguments of the children it
-- released.
CREATE OR REPLACE FUNCTION {{qualified:settle_done}}(parent_ids bigint[], parent_results json[])
RETURNS void
LANGUAGE plpgsql AS {{dollar}}
DECLARE
    released bigint[];
    taking bigint[];
    queues text[];
BEGIN
    WITH settled AS (
        UPDATE {{qualified:after}} AS a SET outcome = 'done',
            result = CASE WHEN a.slot IS NOT NULL THEN p.result END
        FROM unnest(parent_ids, parent_results) AS p(id, result)
        WHERE a.parent = p.id AND a.outcome IS NULL
        RETURNING a.child),
    counts AS (SELECT child, count(*)::int AS n FROM settled GROUP BY child),
    waiting AS (
        SELECT t.id FROM {{table}} AS t
        WHERE t.id IN (SELECT child FROM counts) AND t.state = 'waiting'
        ORDER BY t.id FOR UPDATE),
    counted AS (
        UPDATE {{table}} AS j SET
            waits = CASE WHEN j.waits > c.n THEN j.waits - c.n END,
            state = CASE WHEN j.waits > c.n THEN 'waiting' ELSE 'queued' END,
            schedule_at = CASE WHEN j.waits > c.n THEN j.schedule_at
                ELSE GREATEST(j.schedule_at, statement_timestamp()) END
        FROM waiting AS w JOIN counts AS c ON c.child = w.id
        WHERE j.id = w.id
        RETURNING j.id, j.q_name, j.state,
            EXISTS (SELECT FROM {{qualified:after}} AS a
                    WHERE a.child = j.id AND a.slot IS NOT NULL) AS takes)
    SELECT array_agg(id), array_agg(id) FILTER (WHERE takes), array_agg(DISTINCT q_name)
    INTO released, taking, queues
    FROM counted WHERE state = 'queued';
    IF released IS NULL THEN
        RETURN;
    END IF;

    IF taking IS NOT NULL THEN
        PERFORM {{qualified:set_inputs}}(taking);
    END IF;
    PERFORM {{qualified:notify}}(q) FROM unnest(queues) AS q;
END
{{dollar}};

-- Parent $1, which ended $2 (`done`, `failed` or `cancelled`), with its result $3 and its
-- error $4: what a failed or cancelled parent needs, one at a time (they are rare), and what
-- the enqueue of a job whose parent had ended already runs (`Pq::enqueue_graph`).
CREATE OR REPLACE FUNCTION {{qualified:settle}}(parent_id bigint, parent_state text,
    parent_result json, parent_error text) RETURNS void
LANGUAGE plpgsql AS {{dollar}}
DECLARE
    children bigint[];
    cancelling bigint[];
    doomed_workflows bigint[];
    released bigint[];
    queues text[];
BEGIN
    IF parent_state = 'done' THEN
        PERFORM {{qualified:settle_done}}(ARRAY[parent_id], ARRAY[parent_result]);
        RETURN;
    END IF;

    -- Only the edges this call settles: a child counted for this parent before (an edge added
    -- after it ended settles alone) is not counted again.
    WITH settled AS (
        UPDATE {{qualified:after}} AS a SET outcome = parent_state,
            error = coalesce(parent_error, parent_state)
        WHERE a.parent = parent_id AND a.outcome IS NULL
        RETURNING a.child, a.policy)
    SELECT array_agg(child), array_agg(child) FILTER (WHERE policy = 'cancel')
    INTO children, cancelling
    FROM settled;
    IF children IS NULL THEN
        RETURN;
    END IF;
    SELECT array_agg(DISTINCT w.workflow) INTO doomed_workflows
    FROM {{qualified:after}} AS w
    WHERE w.child = ANY (cancelling) AND w.workflow IS NOT NULL;

    -- Its waiting children, locked in id order before anything reads them.
    PERFORM FROM {{table}} AS t
    WHERE t.id = ANY (children) AND t.state = 'waiting'
    ORDER BY t.id FOR UPDATE;

    -- A workflow's jobs are its edges' children and the parents it wrote, not the jobs
    -- enqueued before it that it waits for.
    UPDATE {{table}} AS j SET state = 'cancelled', waits = NULL, unique_key = NULL,
        finished_at = statement_timestamp(),
        last_error = format('cancelled: job %s of its workflow %s', parent_id,
            CASE parent_state WHEN 'failed' THEN 'failed' ELSE 'was cancelled' END)
    FROM (SELECT t.id FROM {{table}} AS t
          WHERE t.id IN (SELECT w.child FROM {{qualified:after}} AS w
                         WHERE w.workflow = ANY (doomed_workflows)
                         UNION ALL
                         SELECT w.parent FROM {{qualified:after}} AS w
                         WHERE w.workflow = ANY (doomed_workflows) AND w.external IS NULL
                         UNION ALL
                         SELECT unnest(cancelling))
            AND t.state IN ('waiting', 'queued')
          ORDER BY t.id FOR UPDATE) AS doomed
    WHERE j.id = doomed.id;

    UPDATE {{table}} AS j SET state = 'failed', waits = NULL,
        finished_at = statement_timestamp(),
        last_error = format('parent job %s %s: %s', parent_id, parent_state,
            coalesce(parent_error, 'no error recorded'))
    FROM (SELECT t.id FROM {{table}} AS t JOIN {{qualified:after}} AS a ON a.child = t.id
          WHERE a.parent = parent_id AND a.child = ANY (children) AND a.policy = 'fail'
            AND t.state = 'waiting'
          ORDER BY t.id FOR UPDATE OF t) AS failing
    WHERE j.id = failing.id;

    -- The rest (policy `run`) count it as ended, with no result.
    WITH counted AS (
        UPDATE {{table}} AS j SET
            waits = CASE WHEN j.waits > 1 THEN j.waits - 1 END,
            state = CASE WHEN j.waits > 1 THEN 'waiting' ELSE 'queued' END,
            schedule_at = CASE WHEN j.waits > 1 THEN j.schedule_at
                ELSE GREATEST(j.schedule_at, statement_timestamp()) END
        FROM (SELECT t.id FROM {{table}} AS t WHERE t.id = ANY (children) AND t.state = 'waiting'
              ORDER BY t.id FOR UPDATE) AS waiting
        WHERE j.id = waiting.id
        RETURNING j.id, j.q_name, j.state)
    SELECT array_agg(id), array_agg(DISTINCT q_name) INTO released, queues
    FROM counted WHERE state = 'queued';
    IF released IS NULL THEN
        RETURN;
    END IF;
    PERFORM {{qualified:set_inputs}}(released);
    PERFORM {{qualified:notify}}(q) FROM unnest(queues) AS q;
END
{{dollar}};

-- Parents $1 that ended, settled by how their rows say they ended: those that succeeded
-- together, the others one by one. One no longer in the table is taken to have ended as $2
-- says (`done` when nothing is known: it succeeded and kept no result, or its result
-- expired); one that is in it again (retried before the commit) settles when it ends again.
CREATE OR REPLACE FUNCTION {{qualified:settle_ended}}(ended bigint[], noted text[])
RETURNS void
LANGUAGE plpgsql AS {{dollar}}
DECLARE
    parent record;
    done_ids bigint[];
    done_results json[];
BEGIN
    SELECT array_agg(e.id ORDER BY e.id), array_agg(j.result ORDER BY e.id)
    INTO done_ids, done_results
    FROM unnest(ended, noted) AS e(id, noted)
    LEFT JOIN {{table}} AS j ON j.id = e.id
    WHERE coalesce(j.state, e.noted, 'done') = 'done';
    IF done_ids IS NOT NULL THEN
        PERFORM {{qualified:settle_done}}(done_ids, done_results);
    END IF;
    FOR parent IN
        SELECT e.id, coalesce(j.state, e.noted) AS state,
            CASE WHEN j.id IS NULL THEN 'it was deleted' ELSE j.last_error END AS last_error
        FROM unnest(ended, noted) AS e(id, noted)
        LEFT JOIN {{table}} AS j ON j.id = e.id
        WHERE coalesce(j.state, e.noted) IN ('failed', 'cancelled')
        ORDER BY e.id
    LOOP
        PERFORM {{qualified:settle}}(parent.id, parent.state, NULL, parent.last_error);
    END LOOP;
END
{{dollar}};

-- What the deferred trigger of migration 25 found noted (`id:state,` a parent, in the order
-- they ended; a parent noted twice by its last note).
CREATE OR REPLACE FUNCTION {{qualified:settle_noted_parents}}(noted text) RETURNS void
LANGUAGE sql AS {{dollar}}
    SELECT {{qualified:settle_ended}}(array_agg(id ORDER BY id), array_agg(state ORDER BY id))
    FROM (SELECT DISTINCT ON (id) split_part(n, ':', 1)::bigint AS id, split_part(n, ':', 2) AS state
          FROM unnest(string_to_array(rtrim(noted, ','), ',')) WITH ORDINALITY AS x(n, place)
          ORDER BY id, place DESC) AS parents
{{dollar}};
