-- pq: no transaction
--
-- At most one waiting job per unique key (migration 15): puts of a unique task meet the waiting
-- job here (`ON CONFLICT`, see `put_unique` in pq-core/src/sql.rs) and skip, replace or debounce
-- it as the task says. Partial: a plain job (no key) and a job no longer waiting have no entry,
-- so the hot path writes nothing here, and a running job never holds its key.
--
-- Built CONCURRENTLY, outside a transaction, as migration 11's index: puts, claims and
-- completions carry on meanwhile. An index a failed build left invalid is dropped first.

DROP INDEX CONCURRENTLY IF EXISTS {{qualified:unique_idx}};

CREATE UNIQUE INDEX CONCURRENTLY {{name:unique_idx}} ON {{table}} (unique_key)
    WHERE unique_key IS NOT NULL AND state = 'queued';
