-- Indexes for the operator's statements (pq-core/src/admin.rs): listing failed jobs and
-- re-queueing them in id order, and pruning finished jobs by age.
--
-- Both are partial over finished jobs only, so that the hot path (put, claim, complete with
-- delete) writes no entry in them: a job enters them once, when it is done, fails or is
-- cancelled.

-- `jobs list --state failed` and `retry --all`: a keyset scan in id order within one state.
CREATE INDEX {{name:finished_state_idx}} ON {{table}} (state, id)
    WHERE state IN ('done', 'failed', 'cancelled');

-- `prune --older-than`: the oldest finished jobs first.
CREATE INDEX {{name:finished_at_idx}} ON {{table}} (finished_at)
    WHERE state IN ('done', 'failed', 'cancelled');
