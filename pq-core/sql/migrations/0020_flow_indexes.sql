-- pq: no transaction
--
-- The jobs of each flow key (migration 19), running and waiting: what a per-key limit counts
-- and what a sequence's next job is. Partial: a job without a flow key has no entry, so plain
-- jobs write nothing here.
--
-- Built CONCURRENTLY, outside a transaction, as migration 11's index: puts, claims and
-- completions carry on meanwhile. An index a failed build left invalid is dropped first.

DROP INDEX CONCURRENTLY IF EXISTS {{qualified:flow_running_idx}};

CREATE INDEX CONCURRENTLY {{name:flow_running_idx}} ON {{table}} (flow)
    WHERE flow IS NOT NULL AND state = 'running';

DROP INDEX CONCURRENTLY IF EXISTS {{qualified:flow_queued_idx}};

CREATE INDEX CONCURRENTLY {{name:flow_queued_idx}} ON {{table}} (flow, id)
    WHERE flow IS NOT NULL AND state = 'queued';
