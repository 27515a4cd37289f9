-- Durable steps (`ctx.step(name, ..)`): what each completed step of a running job returned, by
-- the job and the step's name, so that a later run of the job (a retry, a rescue) returns it
-- instead of running the step again. A step's row commits with the writes its body made in
-- the job's transaction, or alone at once when it made none there.
--
-- Kept while the job may run again; workers' maintenance deletes the rows of jobs that ended
-- (done, failed, cancelled, deleted). Keyed by name, not by position: steps reordered between
-- deploys find their own outputs.
--
-- A new table: it locks nothing of the queue's.

CREATE TABLE {{qualified:steps}} (
    job    bigint      NOT NULL,
    name   text        NOT NULL,
    output json        NOT NULL,
    at     timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (job, name)
);
