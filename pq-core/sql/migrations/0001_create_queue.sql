-- The queue table: one row a job, every queue in one table.
--
-- Placeholders, filled in by pq's migrator with quoted identifiers:
--   {{table}}        the table, schema-qualified when a schema is configured
--   {{name:SUFFIX}}  an object named after the table: "<table>_SUFFIX" (unqualified, for indexes and triggers)
--   {{qualified:SUFFIX}} the same, schema-qualified (for functions)
--   {{channel}}      the LISTEN/NOTIFY channel of this table, as a string literal
--
-- State machine: queued -> running -> done | failed (| queued again for a retry or a rescue).
-- A plain `get` moves queued -> done directly. `schedule_at` is '-infinity' for a job that is ready
-- at once, so that "ready" is one range condition on the dequeue index.

CREATE TABLE {{table}} (
    id           bigserial   PRIMARY KEY,
    q_name       text        NOT NULL CHECK (q_name <> ''),
    task         text,
    data         json        NOT NULL,
    state        text        NOT NULL DEFAULT 'queued'
                             CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    attempts     integer     NOT NULL DEFAULT 0,
    enqueued_at  timestamptz NOT NULL DEFAULT statement_timestamp(),
    schedule_at  timestamptz NOT NULL DEFAULT '-infinity',
    expected_at  timestamptz,
    dequeued_at  timestamptz,
    locked_until timestamptz,
    finished_at  timestamptz,
    last_error   text,
    errors       jsonb
);

-- Exactly the dequeue order, only over jobs that can be handed out.
CREATE INDEX {{name:dequeue_idx}} ON {{table}} (q_name, schedule_at, expected_at NULLS LAST, id)
    WHERE state = 'queued';

-- Leases to rescue when a worker dies.
CREATE INDEX {{name:lease_idx}} ON {{table}} (locked_until) WHERE state = 'running';

-- One notification per statement and queue, however many rows it inserts.
CREATE FUNCTION {{qualified:notify}}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify({{channel}}, CASE WHEN octet_length(q) < 8000 THEN q ELSE '' END)
    FROM (SELECT DISTINCT q_name AS q FROM new_rows) AS queues;
    RETURN NULL;
END
$$;

CREATE TRIGGER {{name:notify}} AFTER INSERT ON {{table}}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {{qualified:notify}}();
