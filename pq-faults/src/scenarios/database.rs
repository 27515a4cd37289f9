//! Scenario 3: the database goes away under load, by a restart or by having every backend
//! terminated; workers and producers must come back by themselves.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{allowance, start_producers, start_workers, Profile};
use crate::account::{Duplicates, Ledger};
use crate::child::KEY_SPACE;
use crate::env::Env;
use crate::procs::{Proc, WorkerOptions};
use crate::report::Report;
use crate::tasks;

/// Backends of other sessions that are LISTENing (the workers' notification connections).
const LISTENING: &str = "SELECT count(*) FROM pg_stat_activity \
     WHERE pid <> pg_backend_pid() AND query ILIKE 'LISTEN %'";

/// The server crashes mid-run (`pg_ctl stop -m immediate`: nothing flushed, recovery from the
/// WAL at the next start), stays down for `downtime`, and starts again. With durable commits,
/// every enqueue that returned its id survives; enqueue calls made while it is down must fail,
/// and fail fast; every job must still complete.
pub async fn restart(profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("db-restart", logs).await?;
    // Jobs are kept `done`, so that each retry's reason stays on its row to explain duplicates.
    let options = WorkerOptions {
        lease: Duration::from_secs(5),
        keep_completed: true,
        ..WorkerOptions::default()
    };
    let mut workers = start_workers(&mut env, 4, &options)?;
    let mut producers =
        start_producers(&mut env, 2, profile.outage_jobs, profile.outage_spread, 20)?;
    tokio::time::sleep(profile.outage_spread / 3).await;

    let running = env.count("state = 'running'").await?;
    let down = Instant::now();
    env.server.crash().await?;
    tokio::time::sleep(profile.downtime).await;
    env.server.start_again().await?;
    let downtime = down.elapsed();

    let (ledger, _) = env
        .wait_producers(
            &mut producers,
            profile.outage_spread + allowance(profile.outage_jobs),
        )
        .await?;
    for worker in &mut workers {
        report.check(
            worker.exited().is_none(),
            format!("{} exited while the database was away", worker.name),
        );
    }
    env.wait_drained(allowance(profile.outage_jobs)).await?;
    let listening = wait_for_listeners(&env, 4, Duration::from_secs(20)).await?;
    env.stop_workers(&mut workers, &mut report).await?;
    report.line(format!(
        "database crashed with {running} jobs running, down {:.1} s, started again; afterwards {listening} of 4 workers LISTEN again",
        downtime.as_secs_f64()
    ));
    report.check(
        listening == 4,
        format!("every worker LISTENs again ({listening} of 4)"),
    );
    enqueue_failures(&ledger, &mut report);
    report.check(
        !ledger.uncertain.is_empty(),
        "enqueue calls made while the database was down fail",
    );
    env.account(
        &ledger,
        &HashSet::new(),
        Duplicates::Explained,
        options.keep_completed,
        &mut report,
    )
    .await?;
    Ok(report)
}

/// Twice under load, every other backend is terminated (`pg_terminate_backend`), the workers'
/// LISTEN connections and the producers' included. Workers poll only every 30 s here, so jobs
/// put after the recovery that start at once prove that notifications work again.
pub async fn terminate(profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("db-terminate", logs).await?;
    let options = WorkerOptions {
        lease: Duration::from_secs(5),
        poll: Duration::from_secs(30),
        keep_completed: true,
        ..WorkerOptions::default()
    };
    let mut workers = start_workers(&mut env, 4, &options)?;
    let mut producers =
        start_producers(&mut env, 2, profile.outage_jobs, profile.outage_spread, 20)?;
    for _ in 0..2 {
        tokio::time::sleep(profile.outage_spread / 3).await;
        let listening: i64 = sqlx::query_scalar(LISTENING).fetch_one(&env.db).await?;
        // In the select list, so that it runs only on the rows the WHERE clause keeps (a
        // condition could be evaluated first and terminate this very session).
        let terminated: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .fetch_all(&env.db)
        .await?;
        let terminated = terminated.into_iter().filter(|t| *t).count();
        report.line(format!(
            "terminated {terminated} backends, {listening} of them LISTENing"
        ));
        report.check(
            listening == 4,
            format!("4 workers were LISTENing, found {listening}"),
        );
    }
    let (mut ledger, _) = env
        .wait_producers(
            &mut producers,
            profile.outage_spread + allowance(profile.outage_jobs),
        )
        .await?;
    env.wait_drained(allowance(profile.outage_jobs)).await?;
    enqueue_failures(&ledger, &mut report);

    let listening = wait_for_listeners(&env, 4, Duration::from_secs(20)).await?;
    report.check(
        listening == 4,
        format!("every worker LISTENs again (found {listening} of 4)"),
    );
    let slowest = probe_notifications(&env, &mut ledger, 5).await?;
    report.line(format!(
        "afterwards {listening} workers LISTEN again; 5 jobs put one by one each started within {} ms (poll interval 30 s)",
        slowest.as_millis()
    ));
    report.check(
        slowest < Duration::from_secs(3),
        format!(
            "jobs put after the recovery start at once, not at the next poll: slowest {slowest:?}"
        ),
    );
    check_alive(&mut workers, &mut report);
    env.stop_workers(&mut workers, &mut report).await?;
    env.account(
        &ledger,
        &HashSet::new(),
        Duplicates::Explained,
        options.keep_completed,
        &mut report,
    )
    .await?;
    Ok(report)
}

fn check_alive(workers: &mut [Proc], report: &mut Report) {
    for worker in workers {
        report.check(
            worker.exited().is_none(),
            format!("{} exited on its own", worker.name),
        );
    }
}

fn enqueue_failures(ledger: &Ledger, report: &mut Report) {
    report.line(format!(
        "{} enqueue calls failed meanwhile, the slowest after {} ms (slowest success {} ms)",
        ledger.uncertain.len(),
        ledger.slowest_error.as_millis(),
        ledger.slowest_ok.as_millis(),
    ));
    for error in &ledger.error_samples {
        report.line(format!("  enqueue error: {error}"));
    }
    // The pool gives up acquiring a connection after 5 s: "fail fast rather than hang".
    report.check(
        ledger.slowest_error < Duration::from_secs(7),
        format!(
            "a failing enqueue returns an error within 7 s (slowest took {:?})",
            ledger.slowest_error
        ),
    );
}

async fn wait_for_listeners(env: &Env, expected: i64, timeout: Duration) -> Result<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        let listening: i64 = sqlx::query_scalar(LISTENING).fetch_one(&env.db).await?;
        if listening >= expected || Instant::now() > deadline {
            return Ok(listening);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Puts `n` jobs one at a time into an idle queue and waits for each one's effect; returns the
/// slowest wait. The jobs join the ledger.
async fn probe_notifications(env: &Env, ledger: &mut Ledger, n: i64) -> Result<Duration> {
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let key = 9 * KEY_SPACE + i;
        let put = Instant::now();
        let id = tasks::transactional(key, 0).enqueue(&env.pq).await?;
        ledger.ok.insert(id.0, key);
        loop {
            let done: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {} WHERE key = $1",
                env.effects
            ))
            .bind(key)
            .fetch_one(&env.db)
            .await?;
            if done > 0 {
                break;
            }
            if put.elapsed() > Duration::from_secs(40) {
                bail!("probe job {id} did not run within 40 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slowest = slowest.max(put.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(slowest)
}
