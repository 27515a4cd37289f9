-- Notify a queue only while a consumer waits on it.
--
-- 0003 registered waiting consumers per table, so one idle worker on any queue made every put
-- on every queue of the table notify, and a NOTIFY serialises commits: with 8 producers, 37% of
-- a plain INSERT's rate, against 76% while no one waits (BENCHMARKS.md). A consumer now also
-- registers in one of 32 buckets, by a hash of its queue's name, and the trigger notifies a
-- queue only while its bucket holds a registration. Queues that share a bucket wake each
-- other's consumers needlessly, as every queue did before; that costs a look, never a job.
--
-- Each bucket is a sequence, for the reasons 0003's `waiting` is one: setting it is seen at
-- once, never rolled back, and leaves no dead rows. The trigger's WHEN clause (0005) still
-- reads the table-wide registration, so that while no one waits anywhere the function does not
-- run. The function takes the lock shared (blocking, where the WHEN clause only tried), then
-- reads the bucket of each queue the statement put jobs on. The proof of 0003 holds per queue:
-- a consumer sets its bucket and the table-wide registration before it takes the lock
-- exclusively, so an insert that takes the lock after that sees both, and one that took it
-- before has committed once the consumer gets the lock.
--
-- Extra placeholder: {{format:SUFFIX}}, the qualified name of an object named after the table
-- as a format() string literal, with `%s` in SUFFIX left to fill in.

DO {{dollar}}
BEGIN
    FOR bucket IN 0..31 LOOP
        EXECUTE 'CREATE SEQUENCE ' || format({{format:waiting_%s}}, bucket)
            || ' MINVALUE 0 START 0';
    END LOOP;
END
{{dollar}};

CREATE OR REPLACE FUNCTION {{qualified:notify}}() RETURNS trigger LANGUAGE plpgsql AS {{dollar}}
BEGIN
    PERFORM pg_advisory_xact_lock_shared({{wait_lock}});
    PERFORM pg_notify({{channel}}, CASE WHEN octet_length(q) < 8000 THEN q ELSE '' END)
    FROM (SELECT DISTINCT q_name AS q FROM new_rows) AS queues
    WHERE pg_sequence_last_value(format({{format:waiting_%s}}, hashtext(q) & 31)::regclass)
        > extract(epoch FROM clock_timestamp()) * 1000;
    RETURN NULL;
END
{{dollar}};

-- 0003's function, registering the queue's bucket too. Returns how long the caller may wait
-- before it must call again: until the earlier of the two registrations lapses, less 1 s.
CREATE OR REPLACE FUNCTION {{qualified:wait}}(text) RETURNS float8 LANGUAGE plpgsql AS {{dollar}}
DECLARE
    now_ms int8 := (extract(epoch FROM clock_timestamp()) * 1000)::int8;
    until_ms int8 := (SELECT last_value FROM {{qualified:waiting}});
    bucket regclass := format({{format:waiting_%s}}, hashtext($1) & 31)::regclass;
    bucket_until_ms int8 := coalesce(pg_sequence_last_value(bucket), 0);
    due timestamptz;
BEGIN
    IF bucket_until_ms < now_ms + 5000 THEN
        bucket_until_ms := now_ms + 10000;
        PERFORM setval(bucket, bucket_until_ms);
    END IF;
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
            RETURN least((least(until_ms, bucket_until_ms) - now_ms) / 1000.0 - 1,
                         extract(epoch FROM due - clock_timestamp()));
        END IF;
        PERFORM pg_sleep(0.001);
    END LOOP;
    RETURN 0.02;
END
{{dollar}};
