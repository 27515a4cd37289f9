-- The insert trigger decides in its WHEN clause whether to notify, and runs only when it does.
--
-- 0003's trigger ran a PL/pgSQL function on every insert to take the advisory lock and read the
-- registration: about 5% of the single-insert rate (see BENCHMARKS.md). A trigger's WHEN
-- clause is evaluated by the executor itself, so the function now runs only while a consumer
-- waits, and then only notifies.
--
-- The protocol of 0003 is unchanged, in one expression: the insert takes {{wait_lock}} shared
-- until it commits, then reads the registration. The CASE fixes that order (PostgreSQL does
-- not evaluate a CASE's branches before its condition). The lock is tried, not awaited: it
-- fails only while a consumer holds it exclusively, which that consumer does after it
-- registered, so the insert then notifies.

DROP TRIGGER {{name:notify}} ON {{table}};

CREATE OR REPLACE FUNCTION {{qualified:notify}}() RETURNS trigger LANGUAGE plpgsql AS {{dollar}}
BEGIN
    PERFORM pg_notify({{channel}}, CASE WHEN octet_length(q) < 8000 THEN q ELSE '' END)
    FROM (SELECT DISTINCT q_name AS q FROM new_rows) AS queues;
    RETURN NULL;
END
{{dollar}};

CREATE TRIGGER {{name:notify}} AFTER INSERT ON {{table}}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT
    WHEN (CASE WHEN pg_try_advisory_xact_lock_shared({{wait_lock}})
               THEN pg_sequence_last_value({{literal:waiting}}::regclass)
                    > extract(epoch FROM clock_timestamp()) * 1000
               ELSE true END)
    EXECUTE FUNCTION {{qualified:notify}}();
