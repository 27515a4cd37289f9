-- A put decides itself whether to notify: the insert trigger and the two CHECK constraints go.
--
-- PostgreSQL rebuilds a trigger's WHEN clause and every CHECK constraint from their stored text
-- for each statement it runs (`stringToNode`, then the planner), and the AFTER trigger queues
-- an event and a transition table besides. On a one-row insert that was a third of the
-- server's time: 60 µs of CPU a put against 44 µs without them, and 33 µs for a plain INSERT
-- (BENCHMARKS.md). pq's own put statements now do what the trigger did, in an expression of
-- their RETURNING list, which is planned once per connection (`put` in pq-core/src/sql.rs):
--
--   CASE WHEN (CASE WHEN pg_try_advisory_xact_lock_shared({{wait_lock}})
--                   THEN <the table-wide registration holds>
--                   ELSE true END)
--        THEN <this function>(queue) ELSE false END
--
-- that is, 0005's WHEN clause, then this function, which is 0006's trigger function for one
-- queue. The protocol of 0003 and 0006 is unchanged, and so is its proof.
--
-- Rows inserted by other SQL no longer notify: waiting consumers find them when they look
-- again, within their poll interval. Such SQL may call this function to wake them at once.
--
-- The CHECKs guarded what pq's code guards already: pq refuses an empty queue name before it
-- writes, and only pq's statements write `state`.

DROP TRIGGER {{name:notify}} ON {{table}};
DROP FUNCTION {{qualified:notify}}();

-- Notifies queue $1's consumers if one waits on it; returns whether it did. Takes the wait
-- lock shared until the transaction ends, then reads the queue's registration bucket.
CREATE FUNCTION {{qualified:notify}}(text) RETURNS boolean LANGUAGE plpgsql AS {{dollar}}
BEGIN
    PERFORM pg_advisory_xact_lock_shared({{wait_lock}});
    IF pg_sequence_last_value(format({{format:waiting_%s}}, hashtext($1) & 31)::regclass)
        > extract(epoch FROM clock_timestamp()) * 1000 THEN
        PERFORM pg_notify({{channel}}, CASE WHEN octet_length($1) < 8000 THEN $1 ELSE '' END);
        RETURN true;
    END IF;
    RETURN false;
END
{{dollar}};

ALTER TABLE {{table}} DROP CONSTRAINT {{name:q_name_check}}, DROP CONSTRAINT {{name:state_check}};
