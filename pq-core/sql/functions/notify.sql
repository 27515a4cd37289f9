-- Wakes the consumers waiting on queue $1, if one is registered (pq-core/sql/functions/wait.sql);
-- returns whether it notified. pq's puts call it from their RETURNING list only while some
-- consumer is registered on the table (`put` in pq-core/src/sql.rs); SQL that inserts jobs
-- itself may call it to wake consumers at once, else they find its jobs at their next look.
--
-- It takes the wait lock shared until the transaction ends, then reads the queue's bucket. The
-- lock is tried, never awaited: it fails only while a consumer holds it for an instant, or while
-- some session holds its key for itself, and then the put notifies rather than waits.

CREATE OR REPLACE FUNCTION {{qualified:notify}}(text) RETURNS boolean
LANGUAGE plpgsql AS {{dollar}}
BEGIN
    IF pg_try_advisory_xact_lock_shared({{wait_lock}})
       AND coalesce(pg_sequence_last_value(
               format({{format:waiting_%s}}, hashtext($1) & 31)::regclass), 0)
           <= extract(epoch FROM clock_timestamp()) * 1000 THEN
        RETURN false;
    END IF;
    PERFORM pg_notify({{channel}}, CASE WHEN octet_length($1) < 8000 THEN $1 ELSE '' END);
    RETURN true;
END
{{dollar}};
