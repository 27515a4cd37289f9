-- A running job is cancelled by asking its worker: `cancel` lists the jobs an operator asked
-- this worker to stop, and its heartbeat reads (and tidies) the list, so the request arrives
-- within a heartbeat whatever happens to notifications. Written only when someone cancels.
--
-- Locks: ADD COLUMN without a default takes ACCESS EXCLUSIVE on the table of workers (not the
-- queue) for an instant; the runner waits at most 2 s for it (lock_timeout) and tries again.

ALTER TABLE {{qualified:workers}} ADD COLUMN cancel int8[];
