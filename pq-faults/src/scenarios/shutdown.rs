//! Scenario 4: SIGTERM to workers under load.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::{allowance, start_producers, start_workers, Profile};
use crate::account::Duplicates;
use crate::env::Env;
use crate::procs::WorkerOptions;
use crate::report::Report;

/// Rounds of: 4 workers start on a queue that producers keep filling with jobs of up to 300 ms,
/// and after 2.5 s all get SIGTERM. Each must exit 0; every job that was running at the signal
/// must have finished (its effect written and the job completed), and none may be left
/// running. A last set of workers drains the rest. Nothing is interrupted, so nothing may run
/// twice.
pub async fn shutdown(profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("shutdown", logs).await?;
    let options = WorkerOptions {
        lease: Duration::from_secs(30),
        grace: Duration::from_secs(30),
        ..WorkerOptions::default()
    };
    let spread = Duration::from_secs(3) * profile.shutdown_rounds;
    let mut producers = start_producers(&mut env, 1, profile.shutdown_jobs, spread, 300)?;
    let mut in_flight_total = 0;
    for round in 1..=profile.shutdown_rounds {
        let mut workers = start_workers(&mut env, 4, &options)?;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let running: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT id FROM {} WHERE state = 'running'",
            env.table
        ))
        .fetch_all(&env.db)
        .await?;
        let slowest = env.stop_workers(&mut workers, &mut report).await?;
        let left_running = env.count("state = 'running'").await?;
        let unfinished: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM unnest($1::int8[]) AS r(id) \
             WHERE EXISTS (SELECT FROM {} q WHERE q.id = r.id) \
                OR NOT EXISTS (SELECT FROM {} e WHERE e.job_id = r.id)",
            env.table, env.effects
        ))
        .bind(&running)
        .fetch_one(&env.db)
        .await?;
        in_flight_total += running.len();
        report.line(format!(
            "round {round}: SIGTERM with {} jobs running; all 4 workers exited within {} ms; {} of those jobs unfinished, {left_running} left running",
            running.len(),
            slowest.as_millis(),
            unfinished,
        ));
        report.check(
            left_running == 0,
            format!("round {round}: {left_running} jobs left running"),
        );
        report.check(
            unfinished == 0,
            format!("round {round}: {unfinished} in-flight jobs did not finish"),
        );
    }
    report.check(in_flight_total > 0, "jobs were running at the signals");
    let mut workers = start_workers(&mut env, 4, &options)?;
    let (ledger, _) = env
        .wait_producers(&mut producers, allowance(profile.shutdown_jobs))
        .await?;
    env.wait_drained(allowance(profile.shutdown_jobs)).await?;
    env.stop_workers(&mut workers, &mut report).await?;
    env.account(
        &ledger,
        &HashSet::new(),
        Duplicates::None,
        options.keep_completed,
        &mut report,
    )
    .await?;
    Ok(report)
}
