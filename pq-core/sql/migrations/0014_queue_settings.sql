-- What an operator set for a queue, one row per queue that has a setting: for now whether it
-- is paused. A claim passes over a paused queue (pq-core/sql/functions/claim.sql); puts go on.
-- A new table: nothing else is locked.

CREATE TABLE {{qualified:queues}} (
    q_name    text        PRIMARY KEY,
    paused_at timestamptz
);
