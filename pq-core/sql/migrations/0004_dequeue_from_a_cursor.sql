-- The dequeue index on one comparable key, so that a claim can resume the order where the
-- previous claim stopped (see `claim` in pq-core/src/sql.rs) instead of reading it from the start,
-- past the entries of every job claimed since vacuum last ran.
--
-- `expected_at NULLS LAST` becomes `COALESCE(expected_at, 'infinity')`: the same order, but a
-- row comparison `(schedule_at, expected, id) > (...)` can bound the index scan, which it cannot
-- over a NULL.

DROP INDEX {{qualified:dequeue_idx}};

CREATE INDEX {{name:dequeue_idx}} ON {{table}} (q_name, schedule_at, COALESCE(expected_at, 'infinity'), id)
    WHERE state = 'queued';
