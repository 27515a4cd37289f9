//! Limits across worker processes: a queue limited to 6 running jobs, whose task runs one job
//! per key at a time, drained by four workers of 8 slots while one of them is SIGKILLed. What
//! ran at once, counted from each run's recorded start and end, never passes either limit.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};

use super::{allowance, start_workers, Profile};
use crate::env::Env;
use crate::procs::WorkerOptions;
use crate::report::Report;
use crate::tasks;

/// The queue's own limit.
const MAX_RUNNING: u32 = 6;

/// Keys of the jobs: more than the queue's limit, so that the queue's limit binds too.
const KEYS: u64 = 20;

pub async fn limits(profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("limits", logs).await?;
    let queue = env.pq.queue(tasks::LIMITED_QUEUE);
    queue.limits().max_running(MAX_RUNNING).apply().await?;
    let jobs = profile.limits_jobs;
    let calls: pq::TaskBatch = (0..jobs)
        .map(|n| tasks::limited((n % KEYS) as i64, 20))
        .collect();
    calls.enqueue(&env.pq).await?;

    let options = WorkerOptions {
        lease: Duration::from_secs(3),
        queues: vec![tasks::LIMITED_QUEUE.to_owned()],
        ..WorkerOptions::default()
    };
    let mut workers = start_workers(&mut env, 4, &options)?;
    // A third of the way, one worker dies with its jobs: they count until its lease runs out,
    // and run again after.
    let deadline = tokio::time::Instant::now() + allowance(jobs);
    while queue.len().await? > jobs * 2 / 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    workers[0].kill().await?;
    let killed_at: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&env.db)
        .await?;
    workers.push(env.fleet.worker(&options)?);
    loop {
        let stats = env.pq.admin().stats().await?;
        let left: u64 = stats
            .iter()
            .filter(|s| s.queue == tasks::LIMITED_QUEUE)
            .map(|s| s.ready + s.scheduled + s.running)
            .sum();
        if left == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            report.check(
                false,
                format!("{left} jobs left after {:?}", allowance(jobs)),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for worker in workers.iter().skip(1) {
        worker.signal("TERM")?;
    }
    for worker in workers.iter_mut().skip(1) {
        let status = worker.wait(Duration::from_secs(60)).await?;
        report.check(
            status.success(),
            format!("{} exited with {status}", worker.name),
        );
    }

    // Each run, from its start to its end (to the kill, for the runs the killed worker cut).
    let most = |per_key: bool| {
        format!(
            "WITH runs AS ( \
               SELECT s.key, s.at AS started, COALESCE(e.at, $1) AS ended \
               FROM {effects} AS s LEFT JOIN {effects} AS e \
                 ON e.job_id = s.job_id AND e.attempt = s.attempt AND e.kind = 'end' \
               WHERE s.kind = 'start'), \
             edges AS (SELECT key, started AS at, 1 AS d FROM runs \
               UNION ALL SELECT key, ended, -1 FROM runs) \
             SELECT COALESCE(max(n), 0)::int8 FROM (SELECT sum(d) OVER ( \
               {partition} ORDER BY at, d ROWS UNBOUNDED PRECEDING) AS n FROM edges) AS counted",
            effects = env.effects,
            partition = if per_key { "PARTITION BY key" } else { "" },
        )
    };
    let at_once: i64 = sqlx::query_scalar(&most(false))
        .bind(killed_at)
        .fetch_one(&env.db)
        .await?;
    let per_key: i64 = sqlx::query_scalar(&most(true))
        .bind(killed_at)
        .fetch_one(&env.db)
        .await?;
    let ended: i64 = sqlx::query_scalar(&format!(
        "SELECT count(DISTINCT job_id) FROM {} WHERE kind = 'end'",
        env.effects
    ))
    .fetch_one(&env.db)
    .await?;
    report.line(format!(
        "{ended} of {jobs} jobs ran to their end; at most {at_once} at once (limit {MAX_RUNNING}), {per_key} of one key (limit 1)"
    ));
    report.check(
        ended == i64::try_from(jobs)?,
        format!("{ended} of {jobs} jobs ran to their end"),
    );
    report.check(
        at_once <= i64::from(MAX_RUNNING),
        format!("{at_once} ran at once under a limit of {MAX_RUNNING}"),
    );
    report.check(
        at_once >= 3,
        format!("at most {at_once} ran at once: the limit was not used"),
    );
    report.check(per_key == 1, format!("{per_key} runs of one key at once"));
    Ok(report)
}
