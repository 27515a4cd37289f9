-- Notify only while a consumer waits.
--
-- A NOTIFY takes a lock that every notifying transaction in the cluster holds through its commit,
-- so commits that notify are written one after another, never flushed together: with 8 producers
-- a notification per insert costs two thirds of the inserts a second (see BENCHMARKS.md). A
-- consumer that is busy does not need one, since it looks for jobs again when it is done. So
-- consumers register before they wait, and inserts notify only while a registration holds.
--
-- The protocol, with {{wait_lock}} an advisory lock of this table:
--   insert:   takes the lock shared, until it commits; notifies if a registration holds.
--   consumer: registers, then takes the lock exclusively for an instant. Getting it proves that
--             every insert that checked before the registration has committed, so one more look
--             sees its job; not getting it (an insert is committing), it looks again shortly.
-- No job is left unnoticed, and inserts never wait on each other.
--
-- Extra placeholders: {{wait_lock}}, the lock's bigint key; {{literal:SUFFIX}}, the qualified
-- name of an object named after the table, as a string literal; {{dollar}}, a dollar quote that
-- occurs in no name, for function bodies that name the table.

-- Until when (milliseconds since the epoch) some consumer waits. A sequence, so that setting it
-- is seen at once, is never rolled back with a consumer's transaction, and leaves no dead rows.
CREATE SEQUENCE {{qualified:waiting}} MINVALUE 0 START 0;

CREATE OR REPLACE FUNCTION {{qualified:notify}}() RETURNS trigger LANGUAGE plpgsql AS {{dollar}}
BEGIN
    PERFORM pg_advisory_xact_lock_shared({{wait_lock}});
    IF (SELECT last_value FROM {{qualified:waiting}})
        > extract(epoch FROM clock_timestamp()) * 1000 THEN
        PERFORM pg_notify({{channel}}, CASE WHEN octet_length(q) < 8000 THEN q ELSE '' END)
        FROM (SELECT DISTINCT q_name AS q FROM new_rows) AS queues;
    END IF;
    RETURN NULL;
END
{{dollar}};

-- Called by a consumer that found no job of queue $1 and is about to wait for a notification:
-- registers it for 10 s, then returns how long it may wait before it looks again: until the
-- earliest scheduled job is due, at most until 1 s before the registration lapses, or 20 ms if
-- an insert was committing. The caller must look for jobs once more after this returns, before
-- it waits: that look sees every job whose insert did not notify.
CREATE FUNCTION {{qualified:wait}}(text) RETURNS float8 LANGUAGE plpgsql AS {{dollar}}
DECLARE
    now_ms int8 := (extract(epoch FROM clock_timestamp()) * 1000)::int8;
    until_ms int8 := (SELECT last_value FROM {{qualified:waiting}});
    due timestamptz;
BEGIN
    IF until_ms < now_ms + 5000 THEN
        until_ms := now_ms + 10000;
        PERFORM setval({{literal:waiting}}, until_ms);
    END IF;
    FOR attempt IN 1..3 LOOP
        IF pg_try_advisory_lock({{wait_lock}}) THEN
            PERFORM pg_advisory_unlock({{wait_lock}});
            -- Only jobs due later count: a ready job that another transaction holds is no
            -- reason to look again at once, and a ready job committed before the lock was
            -- taken is found by the caller's next look, which it takes after this returns.
            SELECT min(schedule_at) INTO due FROM {{table}}
            WHERE q_name = $1 AND state = 'queued' AND schedule_at > clock_timestamp();
            RETURN least((until_ms - now_ms) / 1000.0 - 1,
                         extract(epoch FROM due - clock_timestamp()));
        END IF;
        PERFORM pg_sleep(0.001);
    END LOOP;
    RETURN 0.02;
END
{{dollar}};
