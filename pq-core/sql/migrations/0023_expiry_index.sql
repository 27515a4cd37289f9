-- pq: no transaction
--
-- The finished jobs kept until a time (migration 22), in the order they expire: what a
-- worker's maintenance deletes, a bounded batch at a time. Partial: a job kept for no time
-- (every plain job) has no entry, so plain jobs write nothing here.
--
-- Built CONCURRENTLY, outside a transaction, as migration 11's index: puts, claims and
-- completions carry on meanwhile. An index a failed build left invalid is dropped first.

DROP INDEX CONCURRENTLY IF EXISTS {{qualified:expiry_idx}};

CREATE INDEX CONCURRENTLY {{name:expiry_idx}} ON {{table}} (expires_at)
    WHERE expires_at IS NOT NULL;
