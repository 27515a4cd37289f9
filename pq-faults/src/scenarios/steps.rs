//! Durable steps across worker processes: jobs of two steps each, drained by two workers while
//! one worker after another is SIGKILLed (and another started). A step whose record committed
//! is never run again by a later run of its job, and its effect, written in the job's
//! transaction, happens exactly once.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::{allowance, start_workers, Profile};
use crate::env::Env;
use crate::procs::WorkerOptions;
use crate::report::Report;
use crate::tasks;

/// How long each step of a job works: long enough for kills to fall between and within steps.
const WORK_MS: u32 = 40;

pub async fn steps(profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("steps", logs).await?;
    let jobs = profile.steps_jobs;
    let calls: pq::TaskBatch = (0..jobs)
        .map(|n| tasks::stepped(n as i64, WORK_MS))
        .collect();
    calls.enqueue(&env.pq).await?;

    let options = WorkerOptions {
        lease: Duration::from_secs(2),
        queues: vec![tasks::STEPS_QUEUE.to_owned()],
        ..WorkerOptions::default()
    };
    let mut workers = start_workers(&mut env, 2, &options)?;
    // A kill a second while a quarter of the jobs still wait, each time the oldest worker,
    // and another started in its place.
    let mut kills = 0;
    while kills < 3 && env.count("state = 'queued'").await? > i64::try_from(jobs / 4)? {
        tokio::time::sleep(Duration::from_secs(1)).await;
        workers[kills].kill().await?;
        workers.push(env.fleet.worker(&options)?);
        kills += 1;
    }
    if let Err(error) = env.wait_drained(allowance(jobs)).await {
        report.check(false, error.to_string());
    }
    for worker in workers.iter().skip(kills) {
        worker.signal("TERM")?;
    }
    for worker in workers.iter_mut().skip(kills) {
        let status = worker.wait(Duration::from_secs(60)).await?;
        report.check(
            status.success(),
            format!("{} exited with {status}", worker.name),
        );
    }

    let count = |kind: &str| {
        format!(
            "SELECT count(*) FROM (SELECT key FROM {} WHERE kind = '{kind}' \
               GROUP BY key HAVING count(*) = 1) AS once",
            env.effects
        )
    };
    let first_once: i64 = sqlx::query_scalar(&count("first"))
        .fetch_one(&env.db)
        .await?;
    let second_once: i64 = sqlx::query_scalar(&count("second"))
        .fetch_one(&env.db)
        .await?;
    // A body that ran after its step's effect committed: a step run again.
    let again: Vec<(i64, String)> = sqlx::query_as(&format!(
        "SELECT r.key, r.kind FROM {e} AS r JOIN {e} AS s \
           ON s.key = r.key AND r.kind = 'ran ' || s.kind AND r.at > s.at \
         WHERE s.kind IN ('first', 'second') ORDER BY 1",
        e = env.effects
    ))
    .fetch_all(&env.db)
    .await?;
    // Jobs a kill cut between their steps, whose next run skipped the first.
    let skipped: i64 = sqlx::query_scalar(&format!(
        "SELECT count(DISTINCT s.key) FROM {e} AS s JOIN {e} AS f \
           ON f.key = s.key AND f.kind = 'first' \
         WHERE s.kind = 'ran second' AND s.attempt > f.attempt",
        e = env.effects
    ))
    .fetch_one(&env.db)
    .await?;
    let jobs = i64::try_from(jobs)?;
    report.line(format!(
        "{kills} workers killed; of {jobs} jobs, {first_once} first and {second_once} second steps took effect exactly once; {skipped} jobs ran again past a completed step"
    ));
    report.check(kills == 3, format!("{kills} of 3 kills happened"));
    report.check(
        first_once == jobs && second_once == jobs,
        format!("{first_once} first and {second_once} second steps of {jobs} jobs took effect exactly once"),
    );
    report.check_all(
        "steps run again after their record committed",
        &again
            .iter()
            .map(|(key, kind)| format!("job {key}: {kind} after its effect"))
            .collect::<Vec<_>>(),
    );
    report.check(
        skipped > 0,
        "no job ran again past a completed step: the kills missed every step",
    );
    Ok(report)
}
