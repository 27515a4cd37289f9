//! Control over running work across worker processes: a queue paused under load, running jobs
//! cancelled while no worker can hear a notification, handler outcomes (snooze, permanent
//! failure), and a killed worker ageing out of the list of workers.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use pq::{JobId, JobState};

use super::{allowance, start_producers, start_workers, Profile};
use crate::account::Duplicates;
use crate::child::KEY_SPACE;
use crate::env::Env;
use crate::procs::WorkerOptions;
use crate::report::Report;
use crate::tasks;

/// Keys of the scenario's own jobs, apart from the producers'.
const KEYS: i64 = 9 * KEY_SPACE;

/// Three workers (3 s leases) work the suite's queue, which a producer fills, and the control
/// queue. The suite's queue is paused: no job of it may be taken after `pause` returned, though
/// enqueueing goes on. Meanwhile, on the control queue, a cooperative run and an aborting run
/// are cancelled while every LISTEN connection is killed over and over: both must end
/// `cancelled` within a heartbeat or two, their transactional writes rolled back, not retried.
/// A job that snoozes 3 times completes on its first attempt; one that snoozes forever fails at
/// the cap; a permanent failure skips its retries. Then a worker is SIGKILLed: it must show as
/// dead, then leave the list of workers. The queue resumes and is drained, every job
/// accounted for.
pub async fn control(profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("control", logs).await?;
    let options = WorkerOptions {
        lease: Duration::from_secs(3),
        keep_completed: true,
        queues: vec![tasks::QUEUE.to_owned(), tasks::CONTROL_QUEUE.to_owned()],
        ..WorkerOptions::default()
    };
    let spread = Duration::from_secs(15);
    let mut producers = start_producers(&mut env, 1, profile.shutdown_jobs, spread, 100)?;
    let mut workers = start_workers(&mut env, 3, &options)?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let paused = pause(&env).await?;
    cancel(&env, &mut report).await?;
    outcomes(&env, &mut report).await?;
    paused.check(&env, &mut report).await?;
    env.pq.admin().resume(tasks::QUEUE).await?;

    let mut killed = workers.remove(0);
    killed.kill().await?;
    let killed_at = Instant::now();
    let pid = i32::try_from(killed.pid)?;
    // Dead once its lease ran out, gone a minute later: each within a rescue pass (half a
    // lease) and some slack.
    let (mut dead, mut gone) = (None, None);
    while gone.is_none() && killed_at.elapsed() < Duration::from_secs(90) {
        match env
            .pq
            .admin()
            .workers()
            .await?
            .iter()
            .find(|w| w.pid == pid)
        {
            Some(worker) if !worker.alive => {
                dead.get_or_insert(killed_at.elapsed());
            }
            Some(_) => {}
            None => gone = Some(killed_at.elapsed()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.line(format!(
        "a worker SIGKILLed: listed as dead after {:?}, gone after {:?}",
        dead.map(|d| d.as_millis()),
        gone.map(|d| d.as_millis())
    ));
    report.check(
        dead.is_some_and(|d| d < Duration::from_secs(15)),
        "the killed worker was not listed as dead within 15 s",
    );
    report.check(
        gone.is_some(),
        "the killed worker is still listed after 90 s",
    );
    let replacement = env.fleet.worker(&options)?;
    // Registered before it is stopped: a SIGTERM that comes before the worker listens for it
    // (a debug binary starting up) kills it, which would fail the scenario for nothing.
    env.wait_registered(&replacement, Duration::from_secs(60))
        .await?;
    workers.push(replacement);

    let (ledger, _) = env
        .wait_producers(&mut producers, allowance(profile.shutdown_jobs))
        .await?;
    env.wait_drained(allowance(profile.shutdown_jobs)).await?;
    env.stop_workers(&mut workers, &mut report).await?;
    // The control queue's jobs are checked above and are in no producer's ledger.
    sqlx::query(&format!("DELETE FROM {} WHERE q_name = $1", env.table))
        .bind(tasks::CONTROL_QUEUE)
        .execute(&env.db)
        .await?;
    sqlx::query(&format!("DELETE FROM {} WHERE key >= $1", env.effects))
        .bind(KEYS)
        .execute(&env.db)
        .await?;
    env.account(
        &ledger,
        &HashSet::from([killed.pid]),
        Duplicates::OnlyInterrupted,
        options.keep_completed,
        &mut report,
    )
    .await?;
    Ok(report)
}

/// What the suite's queue looked like when its pause returned.
struct Paused {
    /// The database's clock just after `pause` returned.
    at: f64,
    /// Its jobs taken so far (running, or ended: the workers keep completed jobs).
    taken: i64,
    queued: i64,
}

async fn pause(env: &Env) -> Result<Paused> {
    env.pq.admin().pause(tasks::QUEUE).await?;
    let (at, taken, queued): (f64, i64, i64) = sqlx::query_as(&format!(
        "SELECT extract(epoch FROM clock_timestamp())::float8, \
                count(*) FILTER (WHERE state <> 'queued'), count(*) FILTER (WHERE state = 'queued') \
         FROM {} WHERE q_name = $1",
        env.table
    ))
    .bind(tasks::QUEUE)
    .fetch_one(&env.db)
    .await?;
    Ok(Paused { at, taken, queued })
}

impl Paused {
    /// Seconds later: nothing taken since, and enqueueing went on.
    async fn check(&self, env: &Env, report: &mut Report) -> Result<()> {
        let (late, taken, queued, for_s): (i64, i64, i64, f64) = sqlx::query_as(&format!(
            "SELECT count(*) FILTER (WHERE dequeued_at > to_timestamp($2)), \
                    count(*) FILTER (WHERE state <> 'queued'), \
                    count(*) FILTER (WHERE state = 'queued'), \
                    extract(epoch FROM clock_timestamp())::float8 - $2 \
             FROM {} WHERE q_name = $1",
            env.table
        ))
        .bind(tasks::QUEUE)
        .bind(self.at)
        .fetch_one(&env.db)
        .await?;
        let stats = env.pq.admin().stats().await?;
        let shown = stats.iter().any(|s| s.queue == tasks::QUEUE && s.paused);
        report.line(format!(
            "queue paused under load with {} jobs taken and {} queued; {for_s:.1} s later {taken} taken ({late} after the pause returned) and {queued} queued; shown paused: {shown}",
            self.taken, self.queued
        ));
        report.check(
            late == 0 && taken == self.taken,
            format!(
                "{} jobs of the paused queue taken after its pause returned",
                late.max(taken - self.taken)
            ),
        );
        report.check(
            queued > self.queued,
            "no job was enqueued while the queue was paused",
        );
        report.check(shown, "the stats do not show the queue paused");
        Ok(())
    }
}

/// A cooperative run and an aborting run, cancelled while every LISTEN connection is killed
/// again and again.
async fn cancel(env: &Env, report: &mut Report) -> Result<()> {
    let cooperative = tasks::until_cancelled(KEYS + 1).enqueue(&env.pq).await?;
    let aborted = tasks::aborted(KEYS + 2).enqueue(&env.pq).await?;
    wait("both runs to start", || async {
        Ok(effects(env, "kind = 'started'").await? == 2)
    })
    .await?;
    let deafen = tokio::spawn({
        let db = env.db.clone();
        async move {
            loop {
                let _ = sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE pid <> pg_backend_pid() AND query ILIKE 'LISTEN %'",
                )
                .execute(&db)
                .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let asked = Instant::now();
    let ended = async {
        for id in [cooperative, aborted] {
            env.pq.admin().cancel(id).await?;
        }
        wait("both runs to end cancelled", || async {
            Ok(state(env, cooperative).await? == Some(JobState::Cancelled)
                && state(env, aborted).await? == Some(JobState::Cancelled))
        })
        .await
    }
    .await;
    let took = asked.elapsed();
    deafen.abort();
    ended?;
    // Long enough for a retry, had there been one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written = effects(env, "kind IN ('until_cancelled', 'aborted')").await?;
    let started = effects(env, "kind = 'started'").await?;
    let mut attempts = Vec::new();
    for id in [cooperative, aborted] {
        let job = env.pq.admin().job(id).await?;
        attempts.push(job.map(|job| (job.state, job.attempts)));
    }
    report.line(format!(
        "a cooperative and an aborting run cancelled, no LISTEN connection alive: both cancelled within {} ms; their transactional writes kept {written}, runs {started}",
        took.as_millis()
    ));
    report.check(
        written == 0,
        format!("{written} writes of cancelled runs committed"),
    );
    report.check(
        started == 2,
        format!("cancelled jobs ran {started} times, not 2"),
    );
    report.check(
        attempts
            .iter()
            .all(|a| *a == Some((JobState::Cancelled, 1))),
        format!("cancelled jobs are {attempts:?}, not cancelled after 1 attempt"),
    );
    Ok(())
}

/// Snoozes and a permanent failure.
async fn outcomes(env: &Env, report: &mut Report) -> Result<()> {
    let admin = env.pq.admin();
    let snoozed = tasks::snoozer(KEYS + 3, 3).enqueue(&env.pq).await?;
    let forever = tasks::snoozer(KEYS + 4, i64::MAX).enqueue(&env.pq).await?;
    let bounced = tasks::permanent(KEYS + 5).enqueue(&env.pq).await?;
    wait("the snoozes and the failure to end", || async {
        Ok(state(env, snoozed).await? == Some(JobState::Done)
            && state(env, forever).await? == Some(JobState::Failed)
            && state(env, bounced).await? == Some(JobState::Failed))
    })
    .await?;
    let (Some(snoozed), Some(forever), Some(bounced)) = (
        admin.job(snoozed).await?,
        admin.job(forever).await?,
        admin.job(bounced).await?,
    ) else {
        bail!("a job of the control queue is gone");
    };
    report.line(format!(
        "a job that snoozed {} times done after {} attempt; one that always snoozes failed after {} snoozes; a permanent failure after {} of its 6 attempts",
        snoozed.snoozes, snoozed.attempts, forever.snoozes, bounced.attempts
    ));
    report.check(
        snoozed.snoozes == 3 && snoozed.attempts == 1,
        format!(
            "the snoozing job: {} snoozes, {} attempts (not 3 and 1)",
            snoozed.snoozes, snoozed.attempts
        ),
    );
    report.check(
        forever.snoozes == pq::MAX_SNOOZES,
        format!(
            "the job that always snoozes failed after {} snoozes, not {}",
            forever.snoozes,
            pq::MAX_SNOOZES
        ),
    );
    report.check(
        bounced.attempts == 1
            && bounced
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("bounced")),
        format!(
            "the permanent failure: {} attempts, error {:?}",
            bounced.attempts, bounced.last_error
        ),
    );
    Ok(())
}

async fn state(env: &Env, id: JobId) -> Result<Option<JobState>> {
    Ok(env.pq.admin().job(id).await?.map(|job| job.state))
}

/// Effects of the scenario's own jobs matching `condition`.
async fn effects(env: &Env, condition: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {} WHERE key >= $1 AND {condition}",
        env.effects
    ))
    .bind(KEYS)
    .fetch_one(&env.db)
    .await?)
}

/// Waits up to 30 s for `condition`.
async fn wait<F, Fut>(what: &str, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition().await? {
        if Instant::now() > deadline {
            bail!("waited 30 s for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
