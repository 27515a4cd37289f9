//! Scenario 4: SIGTERM to workers under load.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{allowance, start_producers, start_workers, Profile};
use crate::account::Duplicates;
use crate::env::Env;
use crate::procs::WorkerOptions;
use crate::report::Report;

/// Rounds of: 4 workers start on a queue that producers keep filling with jobs of up to 300 ms,
/// and after 2.5 s all get SIGTERM. Each must exit 0, before its grace period ends; every job
/// that was running at the signal must have finished (its effect written and the job
/// completed) or, claimed by a worker's prefetch and not started, be back in the queue
/// untouched (its attempt given back, no effect: within the grace period no handler is cut
/// short), and none may be left running. A last set of workers drains the rest. Nothing is
/// interrupted, so nothing may run twice.
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
        let (running, attempts): (Vec<i64>, Vec<i32>) = sqlx::query_as::<_, (i64, i32)>(&format!(
            "SELECT id, attempts FROM {} WHERE state = 'running'",
            env.table
        ))
        .fetch_all(&env.db)
        .await?
        .into_iter()
        .unzip();
        let slowest = env.stop_workers(&mut workers, &mut report).await?;
        let left_running = env.count("state = 'running'").await?;
        let (unfinished, given_back): (i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*) FILTER (WHERE NOT given_back AND (q.id IS NOT NULL OR NOT done)), \
               count(*) FILTER (WHERE given_back) \
             FROM unnest($1::int8[], $2::int4[]) AS r(id, attempts) \
             LEFT JOIN {table} q ON q.id = r.id \
             CROSS JOIN LATERAL (SELECT EXISTS (SELECT FROM {effects} e WHERE e.job_id = r.id) \
               AS done) AS d \
             CROSS JOIN LATERAL (SELECT COALESCE(q.state = 'queued' \
               AND q.attempts = r.attempts - 1 AND NOT d.done, false) AS given_back) AS g",
            table = env.table,
            effects = env.effects
        ))
        .bind(&running)
        .bind(&attempts)
        .fetch_one(&env.db)
        .await?;
        in_flight_total += running.len();
        report.line(format!(
            "round {round}: SIGTERM with {} jobs running; all 4 workers exited within {} ms; {given_back} of those prefetched and given back, {unfinished} unfinished, {left_running} left running",
            running.len(),
            slowest.as_millis(),
        ));
        report.check(
            slowest < options.grace,
            format!("round {round}: a worker took the whole grace period"),
        );
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

/// A worker whose `run` future is dropped mid-drain, as a timeout or a `select!` around it
/// would, in a process that lives on for 10 s: every task the worker started must end with the
/// future (no effect of its after the drop, no heartbeat keeping its jobs), and its unfinished
/// jobs must be back in the queue at once, not a lease (30 s) later. Other workers then drain
/// the queue; a job the dropped worker ran to its end but could not record may run twice.
pub async fn dropped_run(profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("dropped-run", logs).await?;
    let dropped_options = WorkerOptions {
        lease: Duration::from_secs(30),
        drop_after: Some(Duration::from_secs(3)),
        ..WorkerOptions::default()
    };
    let mut producers = start_producers(&mut env, 1, profile.shutdown_jobs, Duration::ZERO, 300)?;
    let mut dropped = env.fleet.worker(&dropped_options)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    // The database's clock, as the effects' times are.
    let dropped_at: f64 = loop {
        let log = std::fs::read_to_string(&dropped.log).unwrap_or_default();
        if log.contains("dropped its worker") {
            break sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
                .fetch_one(&env.db)
                .await?;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the worker did not drop its future within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Its jobs come back at once: given back by the dropped worker's own cleanup.
    let back = Instant::now();
    while env.count("state = 'running'").await? > 0 && back.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left_running = env.count("state = 'running'").await?;
    let given_back = back.elapsed();
    // Nothing of it runs on in the process that outlives it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late_effects: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {} WHERE pid = $1 AND at > to_timestamp($2) + interval '1 s'",
        env.effects
    ))
    .bind(i64::from(dropped.pid))
    .bind(dropped_at)
    .fetch_one(&env.db)
    .await?;
    let live_workers: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}_workers\" WHERE pid = $1",
        &env.table[..env.table.len() - 1]
    ))
    .bind(i32::try_from(dropped.pid).unwrap_or(i32::MAX))
    .fetch_one(&env.db)
    .await?;
    report.line(format!(
        "a worker's future dropped after 3 s: its jobs back in the queue within {} ms ({left_running} left running), {late_effects} effects of it after the drop, {live_workers} registrations of it left",
        given_back.as_millis()
    ));
    report.check(
        left_running == 0,
        format!("{left_running} jobs left running by the dropped worker"),
    );
    report.check(
        late_effects == 0,
        format!("{late_effects} effects written by the dropped worker's tasks after the drop"),
    );
    report.check(
        live_workers == 0,
        format!("{live_workers} registrations of the dropped worker left"),
    );
    let status = dropped.wait(Duration::from_secs(30)).await?;
    report.check(
        status.success(),
        format!("the dropped worker's process exited with {status}"),
    );

    let options = WorkerOptions::default();
    let mut workers = start_workers(&mut env, 2, &options)?;
    let (ledger, _) = env
        .wait_producers(&mut producers, allowance(profile.shutdown_jobs))
        .await?;
    env.wait_drained(allowance(profile.shutdown_jobs)).await?;
    env.stop_workers(&mut workers, &mut report).await?;
    env.account(
        &ledger,
        &HashSet::from([dropped.pid]),
        Duplicates::GivenBack,
        options.keep_completed,
        &mut report,
    )
    .await?;
    Ok(report)
}

/// Workers under load get SIGTERM while the server hangs (every process of it SIGSTOPped):
/// each must exit 0 within its grace period (2 s) plus the flush time (10 s) and some slack,
/// though nothing it sends gets an answer, and one that gets a second SIGTERM exits at once.
/// Once the server goes on, new workers rescue what the stopped ones could not record (their
/// leases ran out) and drain the queue; nothing is lost.
pub async fn shutdown_hung(profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("shutdown-hung", logs).await?;
    let options = WorkerOptions {
        lease: Duration::from_secs(5),
        grace: Duration::from_secs(2),
        ..WorkerOptions::default()
    };
    let spread = Duration::from_secs(4);
    let mut producers = start_producers(&mut env, 1, profile.shutdown_jobs / 2, spread, 300)?;
    let mut workers = start_workers(&mut env, 3, &options)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped: HashSet<u32> = workers.iter().map(|w| w.pid).collect();
    env.server.freeze().await?;
    let signalled = Instant::now();
    for worker in &workers {
        worker.signal("TERM")?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    workers[2].signal("TERM")?;
    let again = Instant::now();
    let mut impatient = workers.pop().expect("three workers");
    let status = impatient.wait(Duration::from_secs(10)).await;
    let at_once = again.elapsed();
    report.check(
        status.as_ref().is_ok_and(|s| s.success()) && at_once < Duration::from_secs(3),
        format!("a second SIGTERM stops a worker at once ({at_once:?}, {status:?})"),
    );
    let bound = options.grace + Duration::from_secs(10) + Duration::from_secs(5);
    let mut slowest = Duration::ZERO;
    for worker in &mut workers {
        let status = worker.wait(bound + Duration::from_secs(10)).await?;
        slowest = slowest.max(signalled.elapsed());
        report.check(
            status.success(),
            format!("{} exited with {status} while the server hung", worker.name),
        );
    }
    report.line(format!(
        "server frozen under load; SIGTERM: 2 workers exited within {} ms (bound {} ms), one given a second SIGTERM within {} ms of it",
        slowest.as_millis(),
        bound.as_millis(),
        at_once.as_millis()
    ));
    report.check(
        slowest < bound,
        format!("the workers exited within grace + flush ({slowest:?})"),
    );
    env.server.thaw().await?;
    let mut workers = start_workers(&mut env, 2, &options)?;
    let (ledger, _) = env
        .wait_producers(&mut producers, spread + allowance(profile.shutdown_jobs))
        .await?;
    env.wait_drained(allowance(profile.shutdown_jobs)).await?;
    env.stop_workers(&mut workers, &mut report).await?;
    env.account(
        &ledger,
        &stopped,
        Duplicates::OnlyInterrupted,
        options.keep_completed,
        &mut report,
    )
    .await?;
    Ok(report)
}
