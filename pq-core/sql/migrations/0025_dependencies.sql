-- Dependencies: a job may wait for others, its parents, and become ready in the transaction
-- that records the outcome of the last of them (no resolver in the background, no lag).
--
-- A waiting job has state `waiting` and counts in `waits` the parents whose outcome it has
-- not had yet; a parent has `releases` set. Both are NULL for every other job and for the rows
-- already there (no rewrite). The claim reads `state = 'queued'` only, so a waiting job is
-- never handed out, and sits in none of the claim's indexes.
--
-- `<table>_after` holds the edges: one row per parent and child, with the child's policy for a
-- parent that fails or is cancelled, the argument of the child that takes the parent's result
-- (`slot`, with its place in a list for a fan-in), and, once the parent has ended, its outcome
-- and its result. The edges of one `Workflow` share its id, drawn from `<table>_workflows`;
-- `external` marks an edge from a job enqueued before the workflow, which is not one of its
-- jobs.
--
-- A parent's outcome is recorded by the triggers below, whatever statement ends it: a worker's
-- completion, failure or cancellation, a rescue that gives up, an operator's cancel. The
-- first notes the parent in a setting of the transaction as the statement ends it; the
-- second, deferred to the commit, settles every parent noted, together (`settle_ended` in
-- sql/functions/settle.sql): a batch of completions costs a few statements, not a few per
-- parent. Their WHEN clauses are false for every job that releases none, so a plain job's
-- statements queue no event and call no function. A job is deleted only once it has ended,
-- except by pq's completions, which keep a parent `done` rather than delete it, and by an
-- operator's delete or clear, which cancel a parent first: a trigger on DELETE would cost
-- every plain completion a fetch of its row.
--
-- Locks: ADD COLUMN without a default takes ACCESS EXCLUSIVE on the queue table for an instant,
-- whatever its size (CREATE TRIGGER a weaker lock, in the same transaction); the runner waits
-- at most 2 s for it (lock_timeout) and tries again. The new table and sequence lock nothing
-- of the queue's.

ALTER TABLE {{table}} ADD COLUMN waits integer, ADD COLUMN releases boolean;

CREATE SEQUENCE {{qualified:workflows}};

CREATE TABLE {{qualified:after}} (
    parent   bigint  NOT NULL,
    child    bigint  NOT NULL,
    workflow bigint,
    external boolean,
    policy   text    NOT NULL DEFAULT 'fail' CHECK (policy IN ('fail', 'run', 'cancel')),
    slot     text,
    position integer,
    outcome  text    CHECK (outcome IN ('done', 'failed', 'cancelled')),
    result   json,
    error    text,
    PRIMARY KEY (parent, child)
);

CREATE INDEX {{name:after_child_idx}} ON {{qualified:after}} (child);
CREATE INDEX {{name:after_workflow_idx}} ON {{qualified:after}} (workflow) WHERE workflow IS NOT NULL;

-- Defined here, not in sql/functions/, because the triggers need them to exist. The first
-- notes the ended parent and how it ended (`id:state,`) in the transaction's setting
-- {{ended}}; the second hands what is noted to `settle_noted_parents`, which is in
-- sql/functions/, and clears it.
CREATE FUNCTION {{qualified:note_ended}}() RETURNS trigger LANGUAGE plpgsql AS {{dollar}}
BEGIN
    PERFORM set_config({{ended}},
        coalesce(current_setting({{ended}}, true), '') || NEW.id || ':' || NEW.state || ',', true);
    RETURN NULL;
END
{{dollar}};

CREATE FUNCTION {{qualified:settle_noted}}() RETURNS trigger LANGUAGE plpgsql AS {{dollar}}
DECLARE
    noted text := current_setting({{ended}}, true);
BEGIN
    IF coalesce(noted, '') <> '' THEN
        PERFORM set_config({{ended}}, '', true);
        PERFORM {{qualified:settle_noted_parents}}(noted);
    END IF;
    RETURN NULL;
END
{{dollar}};

CREATE TRIGGER {{name:ended}} AFTER UPDATE OF state ON {{table}}
    FOR EACH ROW
    WHEN (OLD.releases AND NEW.state IN ('done', 'failed', 'cancelled')
          AND OLD.state IN ('queued', 'running', 'waiting'))
    EXECUTE FUNCTION {{qualified:note_ended}}();

CREATE CONSTRAINT TRIGGER {{name:settled}} AFTER UPDATE OF state ON {{table}}
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (OLD.releases AND NEW.state IN ('done', 'failed', 'cancelled')
          AND OLD.state IN ('queued', 'running', 'waiting'))
    EXECUTE FUNCTION {{qualified:settle_noted}}();
