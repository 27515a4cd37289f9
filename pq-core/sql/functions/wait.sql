-- Called by a consumer that found no job on `queues` and is about to wait for a notification.
-- It registers the consumer for 10 s on each queue's bucket and on the table, so that puts on
-- these queues notify, then returns how long the consumer may sleep before it looks again: until
-- the earliest scheduled job of these queues is due, at most until 1 s before its registrations
-- lapse. The caller must look for jobs once more after this returns, before it sleeps: that look
-- sees every job whose put did not notify.
--
-- The proof, with {{wait_lock}} an advisory lock of the table: a put takes it shared until it
-- commits, then reads the registration (pq-core/sql/functions/notify.sql); this function takes
-- it exclusively, after registering. Getting it proves that every put that read the
-- registration before it was set has committed, so the caller's next look sees its job. A put
-- whose transaction is still open keeps it from being taken: then it returns NULL, and the
-- caller looks again after a delay it doubles each time (pq-core/src/lease.rs), so that a
-- long transaction that enqueued costs a few looks, not a spin. The lock is the transaction's,
-- released when this statement ends: an error cannot leave it held.
--
-- Buckets are sequences (one of 32 by a hash of the queue's name): setting one is seen at once,
-- is never rolled back, and leaves no dead rows.

CREATE OR REPLACE FUNCTION {{qualified:wait}}(queues text[]) RETURNS float8
LANGUAGE plpgsql AS {{dollar}}
DECLARE
    now_ms int8 := (extract(epoch FROM clock_timestamp()) * 1000)::int8;
    lapse_ms int8 := now_ms + 10000;
    registered int8;
    bucket regclass;
    due timestamptz;
BEGIN
    FOR bucket IN
        SELECT DISTINCT format({{format:waiting_%s}}, hashtext(q) & 31)::regclass
        FROM unnest(queues) AS q
        UNION SELECT {{literal:waiting}}::regclass
    LOOP
        registered := coalesce(pg_sequence_last_value(bucket), 0);
        IF registered < now_ms + 5000 THEN
            registered := now_ms + 10000;
            PERFORM setval(bucket, registered);
        END IF;
        lapse_ms := least(lapse_ms, registered);
    END LOOP;
    IF NOT pg_try_advisory_xact_lock({{wait_lock}}) THEN
        RETURN NULL;
    END IF;
    -- Only jobs due later count: a ready job that another transaction holds is no reason to
    -- look again at once, and a ready job committed before the lock was taken is found by the
    -- caller's next look.
    SELECT min(next.ready) INTO due
    FROM unnest(queues) AS q(name)
    CROSS JOIN LATERAL (
        (SELECT GREATEST(j.schedule_at, j.enqueued_at) AS ready FROM {{table}} AS j
         WHERE j.q_name = q.name AND j.state = 'queued'
           AND COALESCE(j.expected_at, 'infinity') = 'infinity'
           AND GREATEST(j.schedule_at, j.enqueued_at) > clock_timestamp()
         ORDER BY GREATEST(j.schedule_at, j.enqueued_at) LIMIT 1)
        UNION ALL
        (SELECT min(GREATEST(j.schedule_at, j.enqueued_at)) FROM {{table}} AS j
         WHERE j.q_name = q.name AND j.state = 'queued'
           AND COALESCE(j.expected_at, 'infinity') < 'infinity'
           AND GREATEST(j.schedule_at, j.enqueued_at) > clock_timestamp())
    ) AS next;
    -- A job scheduled at 'infinity' never falls due: a day stands for it.
    RETURN least((lapse_ms - now_ms) / 1000.0 - 1,
                 extract(epoch FROM least(due, clock_timestamp() + interval '1 day')
                                    - clock_timestamp()));
END
{{dollar}};
