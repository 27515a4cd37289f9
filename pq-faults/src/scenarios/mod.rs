//! The scenarios, in the order they run, and the profiles that size them.

mod bad_input;
mod control;
mod cron;
mod database;
mod hostile;
mod limits;
mod load;
mod shutdown;
mod steps;
mod workflows;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Result;

use crate::env::Env;
use crate::procs::{Proc, ProducerOptions, WorkerOptions};
use crate::report::Report;

type Run<'a> = Pin<Box<dyn Future<Output = Result<Report>> + 'a>>;

/// A scenario: its name, what it shows, and how to run it with a profile, a seed and a folder
/// for its logs.
pub type Scenario = (
    &'static str,
    &'static str,
    for<'a> fn(&'a Profile, u64, &'a Path) -> Run<'a>,
);

pub const SCENARIOS: &[Scenario] = &[
    (
        "load",
        "4 workers x 8 drain jobs while 2 producers enqueue them",
        |p, s, l| Box::pin(load::load(p, s, l)),
    ),
    (
        "crashes",
        "the same load while a random worker is SIGKILLed and restarted",
        |p, s, l| Box::pin(load::crashes(p, s, l)),
    ),
    (
        "db-restart",
        "PostgreSQL crashed (immediate stop) and started again mid-run",
        |p, s, l| Box::pin(database::restart(p, s, l)),
    ),
    (
        "db-terminate",
        "every backend, LISTEN included, killed by pg_terminate_backend",
        |p, s, l| Box::pin(database::terminate(p, s, l)),
    ),
    (
        "shutdown",
        "SIGTERM to workers under load: in-flight jobs finish, exit 0",
        |p, s, l| Box::pin(shutdown::shutdown(p, s, l)),
    ),
    (
        "long-transaction",
        "a session holds a transaction open for the whole run",
        |p, s, l| Box::pin(hostile::long_transaction(p, s, l)),
    ),
    (
        "no-notify",
        "notifications disabled: jobs complete by polling alone",
        |p, s, l| Box::pin(hostile::no_notify(p, s, l)),
    ),
    (
        "stopped-worker",
        "a worker SIGSTOPped past its lease, then resumed",
        |p, s, l| Box::pin(hostile::stopped_worker(p, s, l)),
    ),
    (
        "bad-input",
        "malformed, hostile and huge jobs beside good ones",
        |p, s, l| Box::pin(bad_input::bad_input(p, s, l)),
    ),
    (
        "poison-rows",
        "rows other SQL wrote that pq cannot read, among 10,000 good jobs",
        |p, s, l| Box::pin(bad_input::poison_rows(p, s, l)),
    ),
    (
        "operator-retry",
        "a frozen worker's jobs rescued, failed, retried by an operator; then it resumes",
        |p, s, l| Box::pin(hostile::operator_retry(p, s, l)),
    ),
    (
        "dropped-run",
        "a worker whose run() future is dropped mid-drain",
        |p, s, l| Box::pin(shutdown::dropped_run(p, s, l)),
    ),
    (
        "control",
        "a queue paused under load, running jobs cancelled with LISTEN dead, snoozes, a killed worker",
        |p, s, l| Box::pin(control::control(p, s, l)),
    ),
    (
        "cron",
        "4 workers define one every-second schedule; one SIGKILLed and restarted, one stopped",
        |p, s, l| Box::pin(cron::cron(p, s, l)),
    ),
    (
        "limits",
        "a queue limit and a per-key limit over 4 workers, one SIGKILLed: never passed",
        |p, s, l| Box::pin(limits::limits(p, s, l)),
    ),
    (
        "steps",
        "jobs of two durable steps over 2 workers, 3 SIGKILLed in turn: no step runs again",
        |p, s, l| Box::pin(steps::steps(p, s, l)),
    ),
    (
        "workflows",
        "diamond workflows over 2 workers, 3 SIGKILLed in turn: every edge honoured, every part once",
        |p, s, l| Box::pin(workflows::workflows(p, s, l)),
    ),
    (
        "shutdown-hung",
        "SIGTERM to workers while the server hangs; a second SIGTERM stops at once",
        |p, s, l| Box::pin(shutdown::shutdown_hung(p, s, l)),
    ),
];

/// How big each scenario is.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: &'static str,
    pub scenario_timeout: Duration,
    /// Jobs of the plain load.
    pub load_jobs: u64,
    /// Jobs of the crash run, and over how long the producers spread them.
    pub crash_jobs: u64,
    pub crash_spread: Duration,
    /// Jobs of each database scenario, and over how long they are spread.
    pub outage_jobs: u64,
    pub outage_spread: Duration,
    /// How long the database stays down in `db-restart`.
    pub downtime: Duration,
    pub shutdown_jobs: u64,
    pub shutdown_rounds: u32,
    pub long_transaction_jobs: u64,
    pub trickle_jobs: u64,
    pub good_jobs: u64,
    /// Good jobs among the poison rows.
    pub poison_among: u64,
    /// How long the `cron` scenario's workers fire their schedule.
    pub cron_run: Duration,
    /// Jobs of the `limits` scenario (20 ms each, at most 6 at once).
    pub limits_jobs: u64,
    /// Jobs of the `steps` scenario (two steps of 40 ms each).
    pub steps_jobs: u64,
    /// Diamonds of the `workflows` scenario (four jobs of 20 ms each).
    pub diamonds: u64,
}

impl Profile {
    /// The CI profile: about five minutes on two cores, server starts included.
    pub fn light() -> Profile {
        // Commits are durable: on this kind of machine a scenario's processes (debug builds)
        // enqueue some 300 jobs a second while workers drain them.
        Profile {
            name: "light",
            scenario_timeout: Duration::from_secs(240),
            load_jobs: 20_000,
            crash_jobs: 8_000,
            crash_spread: Duration::from_secs(25),
            outage_jobs: 5_000,
            outage_spread: Duration::from_secs(16),
            downtime: Duration::from_secs(6),
            shutdown_jobs: 2_000,
            shutdown_rounds: 3,
            long_transaction_jobs: 5_000,
            trickle_jobs: 300,
            good_jobs: 1_000,
            poison_among: 10_000,
            cron_run: Duration::from_secs(30),
            limits_jobs: 1_500,
            steps_jobs: 1_500,
            diamonds: 500,
        }
    }

    /// More jobs, more faults, longer outages.
    pub fn heavy() -> Profile {
        Profile {
            name: "heavy",
            scenario_timeout: Duration::from_secs(900),
            load_jobs: 120_000,
            crash_jobs: 60_000,
            crash_spread: Duration::from_secs(75),
            outage_jobs: 40_000,
            outage_spread: Duration::from_secs(50),
            downtime: Duration::from_secs(15),
            shutdown_jobs: 10_000,
            shutdown_rounds: 6,
            long_transaction_jobs: 40_000,
            trickle_jobs: 1_000,
            good_jobs: 5_000,
            poison_among: 40_000,
            cron_run: Duration::from_secs(180),
            limits_jobs: 10_000,
            steps_jobs: 6_000,
            diamonds: 3_000,
        }
    }
}

/// How long enqueueing or draining `jobs` may take: a minute, plus 200 jobs a second (a third
/// of what this machine does in a debug build). Each scenario's own timeout bounds it too.
fn allowance(jobs: u64) -> Duration {
    Duration::from_secs(60 + jobs / 200)
}

/// Starts `n` workers.
fn start_workers(env: &mut Env, n: usize, options: &WorkerOptions) -> Result<Vec<Proc>> {
    (0..n).map(|_| env.fleet.worker(options)).collect()
}

/// Starts producers 1..=n sharing `jobs` between them, spread over `spread` (or as fast as
/// they can when `spread` is zero).
fn start_producers(
    env: &mut Env,
    n: u64,
    jobs: u64,
    spread: Duration,
    work_ms: u32,
) -> Result<Vec<Proc>> {
    let each = jobs.div_ceil(n);
    let rate = if spread.is_zero() {
        0.0
    } else {
        each as f64 / spread.as_secs_f64()
    };
    let options = ProducerOptions {
        jobs: each,
        rate,
        work_ms,
        deadline: Duration::from_secs(600),
    };
    (1..=n)
        .map(|p| env.fleet.producer(p as i64, &options))
        .collect()
}
