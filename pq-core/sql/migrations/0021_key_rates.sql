-- Per-key rates: a task with `limit_key = [..]` and a rate lets each of its keys start `rate`
-- jobs per period (with its burst), as `limit` lets each run that many at once.
--
-- A key's GCRA state (`tat`, as on a task's row of `<table>_flows`) is a row of its own, written
-- by the claims that start its jobs, under the task's advisory lock (sql/functions/
-- claim_limited.sql). A row whose `tat` is past says only that the key's bucket is full, as no
-- row does: the claims delete such rows, a few at a time, so the table holds about the keys
-- that started a job within the last period. `(task, tat)` finds a task's keys that are still
-- waiting for room, and those that can go.
--
-- A new table: it locks nothing of the queue's.

CREATE TABLE {{qualified:key_rates}} (
    flow text        PRIMARY KEY,
    task text        NOT NULL,
    tat  timestamptz NOT NULL
);

CREATE INDEX {{name:key_rates_task_idx}} ON {{qualified:key_rates}} (task, tat);
