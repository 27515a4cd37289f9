//! Scenarios 1 and 2: the load, and the load with workers SIGKILLed.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{allowance, start_producers, start_workers, Profile};
use crate::account::Duplicates;
use crate::env::Env;
use crate::procs::WorkerOptions;
use crate::report::Report;
use crate::rng::Rng;

/// 4 workers of concurrency 8 drain `load_jobs` while 2 producers enqueue them as fast as they
/// can. Nothing is disturbed, so every job's effect must happen exactly once.
pub async fn load(profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("load", logs).await?;
    let options = WorkerOptions {
        lease: Duration::from_secs(30),
        ..WorkerOptions::default()
    };
    let started = Instant::now();
    let mut workers = start_workers(&mut env, 4, &options)?;
    let mut producers = start_producers(&mut env, 2, profile.load_jobs, Duration::ZERO, 0)?;
    let (ledger, deepest) = env
        .wait_producers(&mut producers, allowance(profile.load_jobs))
        .await?;
    let produced = started.elapsed();
    env.wait_drained(allowance(profile.load_jobs)).await?;
    let drained = started.elapsed();
    env.stop_workers(&mut workers, &mut report).await?;
    // The workers' backends have exited, and so reported their counts.
    let deadlocks: i64 = sqlx::query_scalar(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&env.db)
    .await?;
    report.check(
        deadlocks == 0,
        format!("{deadlocks} deadlocks between the workers' statements"),
    );
    report.line(format!(
        "enqueued {} jobs in {:.1} s ({:.0}/s, slowest call {} ms); drained in {:.1} s ({:.0} jobs/s); deepest queue {deepest}; {deadlocks} deadlocks",
        ledger.ok.len(),
        produced.as_secs_f64(),
        ledger.ok.len() as f64 / produced.as_secs_f64(),
        ledger.slowest_ok.as_millis(),
        drained.as_secs_f64(),
        ledger.ok.len() as f64 / drained.as_secs_f64(),
    ));
    report.check(
        ledger.uncertain.is_empty(),
        format!(
            "{} enqueue calls failed without any fault",
            ledger.uncertain.len()
        ),
    );
    let account = env
        .account(
            &ledger,
            &HashSet::new(),
            Duplicates::None,
            options.keep_completed,
            &mut report,
        )
        .await?;
    report.check(
        account.enqueued as u64 >= profile.load_jobs,
        format!(
            "only {} of {} jobs enqueued",
            account.enqueued, profile.load_jobs
        ),
    );
    Ok(report)
}

/// The load, spread over `crash_spread`, while every 1 to 3 s a random worker is SIGKILLed and
/// a new one started. Transactional effects must be exactly once; a plain job may run twice
/// only if the first run's worker was killed.
pub async fn crashes(profile: &Profile, seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("crashes", logs).await?;
    let options = WorkerOptions {
        lease: Duration::from_secs(3),
        ..WorkerOptions::default()
    };
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut workers = start_workers(&mut env, 4, &options)?;
    let mut producers = start_producers(&mut env, 2, profile.crash_jobs, profile.crash_spread, 20)?;
    let mut killed = HashSet::new();
    let deadline = started + profile.crash_spread + Duration::from_secs(60);
    while producers.iter_mut().any(|p| p.exited().is_none()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000))).await;
        let victim = rng.below(workers.len() as u64) as usize;
        let mut worker = workers.swap_remove(victim);
        worker.kill().await?;
        killed.insert(worker.pid);
        workers.push(env.fleet.worker(&options)?);
    }
    let (ledger, _) = env
        .wait_producers(&mut producers, allowance(profile.crash_jobs))
        .await?;
    let running_at_end = env.count("state = 'running'").await?;
    env.wait_drained(allowance(profile.crash_jobs)).await?;
    let drained = started.elapsed();
    env.stop_workers(&mut workers, &mut report).await?;
    report.line(format!(
        "{} workers SIGKILLed and replaced while {} jobs were enqueued; {running_at_end} jobs running when the producers finished; drained in {:.1} s",
        killed.len(),
        ledger.ok.len(),
        drained.as_secs_f64()
    ));
    report.check(killed.len() >= 3, "at least 3 kills");
    env.account(
        &ledger,
        &killed,
        Duplicates::OnlyInterrupted,
        options.keep_completed,
        &mut report,
    )
    .await?;
    Ok(report)
}
