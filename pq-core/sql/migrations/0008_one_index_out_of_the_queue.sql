-- One index for the jobs out of the queue (running, done, failed, cancelled) instead of three.
--
-- Every insert opened the lease index and the two admin indexes of 0002, prepared their
-- predicates and tested them, to write nothing in any of them: about 6% of the rate of single
-- puts (BENCHMARKS.md). One index in id order within each state serves all they served:
--   rescue:          state = 'running', then the expired leases among them (at most as many
--                    rows as jobs run at once);
--   list, retry:     one state in id order, as before;
--   prune:           each finished state in id order, skipping jobs that finished recently.
-- Prune no longer reads only the old jobs: it reads the finished jobs in id order until it has
-- a batch, which, as ids grow with time, are mostly the old ones first.
--
-- Creating the index reads the table once and blocks writes meanwhile, as any migration
-- creating an index does.

DROP INDEX {{qualified:lease_idx}}, {{qualified:finished_state_idx}}, {{qualified:finished_at_idx}};

CREATE INDEX {{name:out_idx}} ON {{table}} (state, id) WHERE state <> 'queued';
