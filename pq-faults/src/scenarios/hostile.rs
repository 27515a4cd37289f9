//! Scenario 5: hostile conditions: a transaction that never ends, notifications that never
//! come, and a worker frozen past its lease.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use sqlx::Connection;

use super::{allowance, start_producers, start_workers, Profile};
use crate::account::{Duplicates, Ledger};
use crate::child::KEY_SPACE;
use crate::env::Env;
use crate::procs::WorkerOptions;
use crate::report::Report;
use crate::tasks;

/// A session opens a repeatable-read transaction before the run and holds it to the end, so
/// vacuum can reclaim none of the rows the run deletes. Every job must still complete once.
pub async fn long_transaction(profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("long-transaction", logs).await?;
    let mut holder = sqlx::PgConnection::connect(&env.server.url()).await?;
    sqlx::raw_sql(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM {}",
        env.table
    ))
    .execute(&mut holder)
    .await?;
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut holder)
        .await?;

    let started = Instant::now();
    let mut workers = start_workers(&mut env, 4, &WorkerOptions::default())?;
    let mut producers = start_producers(
        &mut env,
        2,
        profile.long_transaction_jobs,
        Duration::ZERO,
        0,
    )?;
    let (ledger, deepest) = env
        .wait_producers(&mut producers, allowance(profile.long_transaction_jobs))
        .await?;
    env.wait_drained(allowance(profile.long_transaction_jobs))
        .await?;
    let drained = started.elapsed();
    env.stop_workers(&mut workers, &mut report).await?;

    // The holder is still in its transaction, older than the run, and pins the xmin horizon.
    let (state, age): (String, f64) = sqlx::query_as(
        "SELECT state, EXTRACT(EPOCH FROM now() - xact_start)::float8 \
         FROM pg_stat_activity WHERE pid = $1",
    )
    .bind(holder_pid)
    .fetch_one(&env.db)
    .await?;
    sqlx::raw_sql(&format!("VACUUM {}", env.table))
        .execute(&env.db)
        .await?;
    let dead = dead_rows(&env).await?;
    report.line(format!(
        "{} jobs drained in {:.1} s ({:.0} jobs/s, deepest queue {deepest}) beside a transaction {age:.0} s old ({state}); after VACUUM {dead} dead rows remain unreclaimed",
        ledger.ok.len(),
        drained.as_secs_f64(),
        ledger.ok.len() as f64 / drained.as_secs_f64()
    ));
    report.check(
        state == "idle in transaction" && age >= drained.as_secs_f64(),
        format!("the transaction was open for the whole run ({state}, {age:.0} s)"),
    );
    report.check(dead > 0, "vacuum could not reclaim the run's dead rows");
    sqlx::raw_sql("COMMIT").execute(&mut holder).await?;
    env.account(
        &ledger,
        &HashSet::new(),
        Duplicates::None,
        false,
        &mut report,
    )
    .await?;
    Ok(report)
}

async fn dead_rows(env: &Env) -> Result<i64> {
    // Statistics reach the view with a delay; the vacuum's own report is flushed at its end.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(sqlx::query_scalar(
        "SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'queue'",
    )
    .bind(tasks::SCHEMA)
    .fetch_one(&env.db)
    .await?)
}

/// The table's notify function is replaced for the run by one that never notifies: jobs put
/// one by one must all complete through polling (every 250 ms), and each within a poll or so.
pub async fn no_notify(profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("no-notify", logs).await?;
    // pq's puts notify through this function (migrations/0007): it now never does.
    let notify = format!("{}_notify\"", env.table.trim_end_matches('"'));
    sqlx::raw_sql(&format!(
        "CREATE OR REPLACE FUNCTION {notify}(text) RETURNS boolean LANGUAGE sql AS 'SELECT false'"
    ))
    .execute(&env.db)
    .await?;
    let poll = Duration::from_millis(250);
    let options = WorkerOptions {
        poll,
        ..WorkerOptions::default()
    };
    let mut workers = start_workers(&mut env, 2, &options)?;
    // A trickle, 40 a second: workers are idle between jobs and must find each by polling.
    let spread = Duration::from_secs_f64(profile.trickle_jobs as f64 / 40.0);
    let mut producers = start_producers(&mut env, 1, profile.trickle_jobs, spread, 0)?;
    let (ledger, _) = env
        .wait_producers(&mut producers, spread + Duration::from_secs(60))
        .await?;
    env.wait_drained(Duration::from_secs(60)).await?;
    env.stop_workers(&mut workers, &mut report).await?;
    let (mean, slowest): (f64, f64) = sqlx::query_as(&format!(
        "SELECT EXTRACT(EPOCH FROM avg(at - enqueued_at))::float8, \
                EXTRACT(EPOCH FROM max(at - enqueued_at))::float8 FROM {}",
        env.effects
    ))
    .fetch_one(&env.db)
    .await?;
    report.line(format!(
        "notifications disabled; {} jobs put at 40/s; from put to effect: mean {:.0} ms, slowest {:.0} ms (poll interval {} ms)",
        ledger.ok.len(),
        mean * 1000.0,
        slowest * 1000.0,
        poll.as_millis()
    ));
    report.check(
        slowest < poll.as_secs_f64() + 2.0,
        format!("every job starts within a poll interval and slack (slowest {slowest:.2} s)"),
    );
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

/// Worker A claims four slow jobs (3 s each; two plain, two transactional) and is frozen with
/// SIGSTOP. Its lease (1.5 s) runs out with its heartbeat; worker B rescues the jobs and runs
/// them again as attempt 2. A is resumed with SIGCONT while B works: A's handlers finish and A tries to
/// complete attempt 1. That stale completion must be refused, A's transactional writes must
/// roll back, and B must be the one that completes every job: each job's completion time comes
/// after B's run wrote its effect, which a completion by A could not.
pub async fn stopped_worker(_profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("stopped-worker", logs).await?;
    let options = WorkerOptions {
        lease: Duration::from_millis(1500),
        keep_completed: true,
        ..WorkerOptions::default()
    };
    let a = env.fleet.worker(&options)?;
    let (a_pid, a_log) = (a.pid, a.log.clone());
    let mut ledger = Ledger::default();
    for i in 0..4 {
        let key = 8 * KEY_SPACE + i;
        let id = if i % 2 == 0 {
            tasks::transactional(key, 3000).enqueue(&env.pq).await?
        } else {
            tasks::plain(key, 3000).enqueue(&env.pq).await?
        };
        ledger.ok.insert(id.0, key);
    }
    wait_for(&env, "state = 'running' AND attempts = 1", 4).await?;
    a.signal("STOP")?;
    let b = env.fleet.worker(&options)?;
    let b_pid = b.pid;
    let stopped = Instant::now();
    wait_for(&env, "state = 'running' AND attempts = 2", 4).await?;
    let rescued_after = stopped.elapsed();
    a.signal("CONT")?;

    // A's handlers finish where they were; wait until A has tried to complete all four.
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        let refused = refusals(&std::fs::read_to_string(&a_log).unwrap_or_default());
        if refused >= 4 || Instant::now() > deadline {
            break refused;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let still_b = env.count("state = 'running' AND attempts = 2").await?;
    let a_effects: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {} WHERE pid = $1",
        env.effects
    ))
    .bind(i64::from(a_pid))
    .fetch_one(&env.db)
    .await?;
    report.line(format!(
        "A frozen; B ran the 4 jobs as attempt 2 after {} ms; A resumed, wrote its 2 plain effects ({a_effects}) and logged {refused} of 4 completions refused, while {still_b} jobs were still running B's attempt 2",
        rescued_after.as_millis()
    ));
    report.check(
        refused == 4,
        format!("A's 4 stale completions are refused ({refused})"),
    );
    report.check(
        a_effects == 2,
        format!("A's transactional writes rolled back, its plain ones happened ({a_effects} of 2)"),
    );
    env.wait_drained(Duration::from_secs(30)).await?;
    let completed_by_b: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {} q WHERE q.state = 'done' AND q.attempts = 2 \
           AND q.finished_at >= (SELECT max(e.at) FROM {} e WHERE e.job_id = q.id AND e.pid = $1)",
        env.table, env.effects
    ))
    .bind(i64::from(b_pid))
    .fetch_one(&env.db)
    .await?;
    report.line(format!(
        "{completed_by_b} of 4 jobs done as attempt 2, each completed after B's run wrote its effect"
    ));
    report.check(
        completed_by_b == 4,
        format!("B, not A, completed every job ({completed_by_b} of 4)"),
    );
    let mut workers = vec![a, b];
    env.stop_workers(&mut workers, &mut report).await?;
    let interrupted = HashSet::from([a_pid]);
    env.account(
        &ledger,
        &interrupted,
        Duplicates::OnlyInterrupted,
        options.keep_completed,
        &mut report,
    )
    .await?;
    Ok(report)
}

/// Worker A (lease 1.5 s) claims four jobs that work 3 s and is frozen with SIGSTOP 2 s into
/// them. B rescues them and runs them again, and being `once_or_fail`, their second runs fail
/// for good. An operator retries them (`retry_failed`): their attempts start over at 0, so B's
/// runs are attempt 1 again, as A's were. A is resumed while B runs them: A's runs end and
/// report, and every one of those reports must be refused (a fence by attempt would take
/// them), B must complete every job, and A's plain effects are its only extra ones.
pub async fn operator_retry(_profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("operator-retry", logs).await?;
    let options = WorkerOptions {
        lease: Duration::from_millis(1500),
        keep_completed: true,
        ..WorkerOptions::default()
    };
    let a = env.fleet.worker(&options)?;
    let (a_pid, a_log) = (a.pid, a.log.clone());
    let mut ledger = Ledger::default();
    for i in 0..4 {
        let key = 10 * KEY_SPACE + i;
        let id = tasks::once_or_fail(key, 3000).enqueue(&env.pq).await?;
        ledger.ok.insert(id.0, key);
    }
    wait_for(&env, "state = 'running' AND attempts = 1", 4).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.signal("STOP")?;
    let b = env.fleet.worker(&options)?;
    let b_pid = b.pid;
    wait_for(&env, "state = 'failed'", 4).await?;
    let retried = env
        .pq
        .admin()
        .retry_failed(&pq::JobFilter::new().queue(tasks::QUEUE))
        .await?;
    wait_for(&env, "state = 'running' AND attempts = 1", 4).await?;
    a.signal("CONT")?;

    // A's runs had a second left: wait until A has reported all four.
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        let refused = refusals(&std::fs::read_to_string(&a_log).unwrap_or_default());
        if refused >= 4 || Instant::now() > deadline {
            break refused;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let still_b = env.count("state = 'running' AND attempts = 1").await?;
    report.line(format!(
        "A frozen; B's runs failed for good, the operator retried {retried}; A resumed while {still_b} of B's runs went on, and logged {refused} of its 4 reports refused"
    ));
    report.check(retried == 4, format!("4 failed jobs retried ({retried})"));
    report.check(
        refused == 4,
        format!("A's 4 stale reports are refused ({refused})"),
    );
    env.wait_drained(Duration::from_secs(30)).await?;
    let completed_by_b: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {} q WHERE q.state = 'done' AND q.attempts = 1 \
           AND q.finished_at >= (SELECT max(e.at) FROM {} e WHERE e.job_id = q.id AND e.pid = $1)",
        env.table, env.effects
    ))
    .bind(i64::from(b_pid))
    .fetch_one(&env.db)
    .await?;
    report.check(
        completed_by_b == 4,
        format!("B, not A, completed every job ({completed_by_b} of 4)"),
    );
    let mut workers = vec![a, b];
    env.stop_workers(&mut workers, &mut report).await?;
    env.account(
        &ledger,
        &HashSet::from([a_pid]),
        Duplicates::OperatorRetried,
        options.keep_completed,
        &mut report,
    )
    .await?;
    Ok(report)
}

/// How many of its runs' reports a worker's log says were refused: a completion in the job's
/// transaction, or a batch of completions or failures, after its claim was lost.
fn refusals(log: &str) -> usize {
    log.matches("claim was lost before completion").count()
        + log
            .lines()
            .filter(|l| l.contains("after their worker was declared lost"))
            .filter_map(|l| l.rsplit("lost=").next()?.trim().parse::<usize>().ok())
            .sum::<usize>()
}

async fn wait_for(env: &Env, condition: &str, n: i64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.count(condition).await? < n {
        if Instant::now() > deadline {
            bail!("no {n} jobs with {condition} within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
