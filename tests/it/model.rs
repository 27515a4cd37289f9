//! A model-based test of the claim protocol: three workers claim, complete, fail, release, renew
//! and lose their leases, while an operator retries and cancels, in random interleavings against
//! the real database. After every step the table must agree with a model that knows which run of
//! each job is the live one:
//!
//! - at most one live run per job: a claim never hands out a job that is not queued;
//! - a stale fence changes nothing: an outcome from a run that is no longer the live one is
//!   refused, and no row changes but those the step may change;
//! - nothing is lost: every job is queued, running, or has its outcome;
//! - under a limit, a claim takes exactly what the runs under a live lease leave room for.
//!
//! `PROPTEST_CASES` sets the number of cases (64 by default).

use std::collections::BTreeMap;
use std::time::Duration;

use pq::protocol::{Claim, Failure};
use pq::{JobId, Pq};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::support::{direct, Claimer, TestDb};

const WORKERS: usize = 3;
const QUEUE: &str = "model";

#[derive(Debug, Clone)]
enum Op {
    Enqueue,
    Claim {
        worker: usize,
        limit: u32,
    },
    Complete {
        worker: usize,
        pick: usize,
        keep: bool,
    },
    Fail {
        worker: usize,
        pick: usize,
        retry: bool,
    },
    Release {
        worker: usize,
        pick: usize,
    },
    Renew {
        worker: usize,
    },
    /// The worker stops renewing long enough for its leases to run out (frozen, or cut off).
    Freeze {
        worker: usize,
    },
    Rescue,
    AdminRetry {
        pick: usize,
    },
    AdminCancel {
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let worker = 0..WORKERS;
    prop_oneof![
        3 => Just(Op::Enqueue),
        3 => (worker.clone(), 1..3u32).prop_map(|(worker, limit)| Op::Claim { worker, limit }),
        2 => (worker.clone(), any::<usize>(), any::<bool>())
            .prop_map(|(worker, pick, keep)| Op::Complete { worker, pick, keep }),
        2 => (worker.clone(), any::<usize>(), any::<bool>())
            .prop_map(|(worker, pick, retry)| Op::Fail { worker, pick, retry }),
        1 => (worker.clone(), any::<usize>()).prop_map(|(worker, pick)| Op::Release { worker, pick }),
        1 => worker.clone().prop_map(|worker| Op::Renew { worker }),
        1 => worker.prop_map(|worker| Op::Freeze { worker }),
        1 => Just(Op::Rescue),
        1 => any::<usize>().prop_map(|pick| Op::AdminRetry { pick }),
        1 => any::<usize>().prop_map(|pick| Op::AdminCancel { pick }),
    ]
}

/// What the model expects of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    Queued,
    /// Held by this run (a number the model gives each successful claim).
    Running(u64),
    /// Deleted, or kept `done`.
    Done {
        kept: bool,
    },
    Failed,
    Cancelled,
}

/// A claim a worker got, live or not: workers keep stale ones, to try them.
#[derive(Debug, Clone, Copy)]
struct Held {
    job: JobId,
    run: u64,
    claim: Claim,
}

#[derive(Default)]
struct Model {
    jobs: BTreeMap<JobId, Expected>,
    /// How many runs of each job were lost with their worker.
    rescues: BTreeMap<JobId, u32>,
    hands: [Vec<Held>; WORKERS],
    /// Workers whose leases ran out and were not renewed since.
    frozen: [bool; WORKERS],
    /// The jobs each worker was asked to cancel, as its row lists them: a heartbeat drops
    /// those that have ended.
    asked: [std::collections::BTreeSet<JobId>; WORKERS],
    next_run: u64,
}

impl Model {
    fn is_live(&self, held: &Held) -> bool {
        self.jobs.get(&held.job) == Some(&Expected::Running(held.run))
    }

    fn live(&self, worker: usize) -> Vec<Held> {
        let hand = self.hands[worker].iter();
        hand.filter(|held| self.is_live(held)).copied().collect()
    }

    /// The runs that count against a limit: held by workers whose lease has not run out.
    fn running_live(&self) -> usize {
        (0..WORKERS)
            .filter(|&worker| !self.frozen[worker])
            .map(|worker| self.live(worker).len())
            .sum()
    }

    fn pick(&self, worker: usize, pick: usize) -> Option<Held> {
        let hand = &self.hands[worker];
        (!hand.is_empty()).then(|| hand[pick % hand.len()])
    }

    fn pick_job(&self, pick: usize) -> Option<JobId> {
        (!self.jobs.is_empty()).then(|| *self.jobs.keys().nth(pick % self.jobs.len()).unwrap())
    }
}

/// How many times a job may be lost with its worker before a rescue fails it for good.
const RESCUE_BUDGET: u32 = 2;

/// The workers' side of the protocol, on pq's API: three registered workers.
struct Fleet {
    pq: Pq,
    workers: Vec<Claimer>,
}

impl Fleet {
    async fn new(pq: &Pq) -> Fleet {
        let mut workers = Vec::new();
        for _ in 0..WORKERS {
            workers.push(Claimer::new(pq, &[QUEUE]).await);
        }
        Fleet {
            pq: pq.clone(),
            workers,
        }
    }

    async fn claim(&mut self, worker: usize, limit: u32) -> Vec<Claim> {
        let jobs = self.workers[worker].claim(limit).await;
        jobs.iter().filter_map(pq::Job::claim).collect()
    }

    async fn complete(&self, claim: Claim, keep: bool) -> bool {
        crate::support::complete(&self.pq, &[claim], keep).await == [claim.id]
    }

    async fn fail(&self, claim: Claim, retry: bool) -> bool {
        let then = if retry {
            Failure::RetryIn(Duration::ZERO)
        } else {
            Failure::GiveUp
        };
        let failure = crate::support::failed(claim, "boom", then);
        self.pq.fail(&[failure]).await.unwrap() == [claim.id]
    }

    async fn release(&self, claim: Claim) -> bool {
        self.pq.release(&[claim]).await.unwrap() == [claim.id]
    }

    /// The worker's heartbeat: it writes the worker's row, none of its jobs'.
    async fn renew(&self, worker: usize) {
        self.workers[worker].heartbeat().await;
    }

    /// Makes the worker's lease run out, as if it had been frozen.
    async fn freeze(&self, worker: usize) {
        self.workers[worker].expire().await;
    }

    async fn rescue(&self) {
        self.pq.rescue(1000, RESCUE_BUDGET).await.unwrap();
    }
}

/// Every job's row as text, to see which rows a step changed.
async fn rows(pq: &Pq) -> BTreeMap<JobId, (String, String)> {
    let rows: Vec<(i64, String, String)> = sqlx::query_as(&format!(
        "SELECT id, state, row_to_json(t)::text FROM {} AS t",
        pq.table()
    ))
    .fetch_all(&mut direct().await)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, state, row)| (JobId(id), (state, row)))
        .collect()
}

/// Runs `ops` from an empty table; fails at the first step the table disagrees with the model.
/// With `limit`, the queue runs at most that many jobs at once, and a claim takes exactly what
/// it allows: as many as asked, as the limit leaves room for, and as are queued.
async fn check(
    db: &TestDb,
    fleet: &mut Fleet,
    limit: Option<u32>,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let pq = &db.pq;
    sqlx::query(&format!("DELETE FROM {}", pq.table()))
        .execute(&mut direct().await)
        .await
        .unwrap();
    for worker in 0..WORKERS {
        fleet.renew(worker).await;
    }
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let before = rows(pq).await;
        // The jobs this step may change; every other row must stay as it was.
        let mut may_change: Vec<JobId> = Vec::new();
        match *op {
            Op::Enqueue => {
                let id = pq.queue(QUEUE).put(&step).await.unwrap();
                model.jobs.insert(id, Expected::Queued);
                may_change.push(id);
            }
            Op::Claim {
                worker,
                limit: asked,
            } => {
                let running = model.running_live();
                let queued = model
                    .jobs
                    .values()
                    .filter(|e| **e == Expected::Queued)
                    .count();
                let claims = fleet.claim(worker, asked).await;
                if let Some(limit) = limit {
                    let allowed = (asked as usize)
                        .min((limit as usize).saturating_sub(running))
                        .min(queued);
                    prop_assert_eq!(
                        claims.len(),
                        allowed,
                        "step {}: worker {} asked for {} with {} running under a limit of {} and {} queued",
                        step,
                        worker,
                        asked,
                        running,
                        limit,
                        queued
                    );
                }
                for claim in &claims {
                    let expected = model.jobs.get(&claim.id).copied();
                    prop_assert_eq!(
                        expected,
                        Some(Expected::Queued),
                        "step {}: worker {} claimed job {} that the model has as {:?}",
                        step,
                        worker,
                        claim.id,
                        expected
                    );
                    model.next_run += 1;
                    model
                        .jobs
                        .insert(claim.id, Expected::Running(model.next_run));
                    model.hands[worker].push(Held {
                        job: claim.id,
                        run: model.next_run,
                        claim: *claim,
                    });
                    may_change.push(claim.id);
                }
            }
            Op::Complete { worker, pick, keep } => {
                if let Some(held) = model.pick(worker, pick) {
                    let live = model.is_live(&held);
                    let done = fleet.complete(held.claim, keep).await;
                    prop_assert_eq!(done, live, "step {}: completion of {:?}", step, held);
                    if live {
                        model.jobs.insert(held.job, Expected::Done { kept: keep });
                        may_change.push(held.job);
                    }
                }
            }
            Op::Fail {
                worker,
                pick,
                retry,
            } => {
                if let Some(held) = model.pick(worker, pick) {
                    let live = model.is_live(&held);
                    let failed = fleet.fail(held.claim, retry).await;
                    prop_assert_eq!(failed, live, "step {}: failure of {:?}", step, held);
                    if live {
                        let next = if retry {
                            Expected::Queued
                        } else {
                            Expected::Failed
                        };
                        model.jobs.insert(held.job, next);
                        may_change.push(held.job);
                    }
                }
            }
            Op::Release { worker, pick } => {
                if let Some(held) = model.pick(worker, pick) {
                    let live = model.is_live(&held);
                    let released = fleet.release(held.claim).await;
                    prop_assert_eq!(released, live, "step {}: release of {:?}", step, held);
                    if live {
                        model.jobs.insert(held.job, Expected::Queued);
                        may_change.push(held.job);
                    }
                }
            }
            // Liveness is the worker's row: neither touches a job's.
            Op::Renew { worker } => {
                fleet.renew(worker).await;
                model.frozen[worker] = false;
                let jobs = &model.jobs;
                model.asked[worker].retain(|id| {
                    matches!(jobs.get(id), Some(Expected::Queued | Expected::Running(_)))
                });
            }
            Op::Freeze { worker } => {
                fleet.freeze(worker).await;
                model.frozen[worker] = true;
            }
            Op::Rescue => {
                fleet.rescue().await;
                for worker in (0..WORKERS).filter(|&w| model.frozen[w]) {
                    for held in model.live(worker) {
                        let rescues = model.rescues.entry(held.job).or_default();
                        // A job its worker was asked to cancel ends so, not queued again.
                        let next = if model.asked[worker].contains(&held.job) {
                            Expected::Cancelled
                        } else if *rescues < RESCUE_BUDGET {
                            Expected::Queued
                        } else {
                            Expected::Failed
                        };
                        *rescues += 1;
                        model.jobs.insert(held.job, next);
                        may_change.push(held.job);
                    }
                }
            }
            Op::AdminRetry { pick } => {
                if let Some(id) = model.pick_job(pick) {
                    let failed = model.jobs[&id] == Expected::Failed;
                    let retried = pq.admin().retry(id).await.unwrap();
                    prop_assert_eq!(retried, failed, "step {}: admin retry of job {}", step, id);
                    if failed {
                        model.jobs.insert(id, Expected::Queued);
                        model.rescues.remove(&id);
                        may_change.push(id);
                    }
                }
            }
            Op::AdminCancel { pick } => {
                if let Some(id) = model.pick_job(pick) {
                    let queued = model.jobs[&id] == Expected::Queued;
                    // A running job's cancel is a request to its worker, which the model's
                    // workers never act on: the job stays theirs, unless it is rescued, which
                    // ends it cancelled.
                    let running = matches!(model.jobs[&id], Expected::Running(_));
                    if running {
                        let holder =
                            (0..WORKERS).find(|&w| model.live(w).iter().any(|held| held.job == id));
                        model.asked[holder.expect("a running job has a worker")].insert(id);
                    }
                    let cancelled = pq.admin().cancel(id).await.unwrap();
                    prop_assert_eq!(
                        cancelled,
                        queued || running,
                        "step {}: cancel of job {}",
                        step,
                        id
                    );
                    if queued {
                        model.jobs.insert(id, Expected::Cancelled);
                        may_change.push(id);
                    }
                }
            }
        }

        let after = rows(pq).await;
        for (id, expected) in &model.jobs {
            let state = after.get(id).map(|(state, _)| state.as_str());
            let agrees = match expected {
                Expected::Queued => state == Some("queued"),
                Expected::Running(_) => state == Some("running"),
                Expected::Done { kept: true } => state == Some("done"),
                Expected::Done { kept: false } => state.is_none(),
                Expected::Failed => state == Some("failed"),
                Expected::Cancelled => state == Some("cancelled"),
            };
            prop_assert!(
                agrees,
                "step {} ({:?}): job {} is {:?} in the table, {:?} in the model",
                step,
                op,
                id,
                state,
                expected
            );
        }
        for (id, row) in &before {
            if !may_change.contains(id) {
                prop_assert_eq!(
                    after.get(id),
                    Some(row),
                    "step {} ({:?}) changed job {}, which it must not touch",
                    step,
                    op,
                    id
                );
            }
        }
    }
    Ok(())
}

#[test]
fn every_interleaving_keeps_one_live_run_per_job_and_refuses_stale_fences() {
    run_model(None);
}

#[test]
fn under_a_limit_every_claim_takes_exactly_what_the_live_runs_leave_room_for() {
    run_model(Some(2));
}

fn run_model(limit: Option<u32>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Handles dropped while a failure unwinds still need the runtime.
    let _entered = runtime.enter();
    let db = runtime.block_on(TestDb::new());
    if let Some(limit) = limit {
        let limits = db.pq.queue(QUEUE).limits().max_running(limit).apply();
        runtime.block_on(limits).unwrap();
    }
    let fleet = std::cell::RefCell::new(runtime.block_on(Fleet::new(&db.pq)));
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        runtime.block_on(check(&db, &mut fleet.borrow_mut(), limit, &ops))
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}
