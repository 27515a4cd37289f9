//! Workflows across worker processes: diamonds (a top, two sides that take its result, a
//! bottom that takes both of theirs), drained by two workers while one worker after another is
//! SIGKILLed (and another started). Every part takes effect exactly once, no part starts
//! before each of its parents took effect, the bottom gets both sides' results in order, and
//! no job is left waiting.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::{allowance, start_workers, Profile};
use crate::env::Env;
use crate::procs::WorkerOptions;
use crate::report::Report;
use crate::tasks;

/// How long each part works: long enough for kills to fall within runs.
const WORK_MS: u32 = 20;

pub async fn workflows(profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("workflows", logs).await?;
    let diamonds = profile.diamonds;
    // A few workflows of many diamonds each, so that one transaction writes many edges.
    for first in (0..diamonds).step_by(100) {
        let mut workflow = pq::Workflow::new();
        for key in first..(first + 100).min(diamonds) {
            let key = i64::try_from(key)?;
            let top = workflow.add(tasks::top(key, WORK_MS));
            let left = workflow.add(tasks::side(top, key, 1, WORK_MS));
            let right = workflow.add(tasks::side(top, key, 2, WORK_MS));
            workflow.add(tasks::bottom([left, right], key, WORK_MS));
        }
        workflow.enqueue(&env.pq).await?;
    }

    let options = WorkerOptions {
        lease: Duration::from_secs(2),
        queues: vec![tasks::WORKFLOWS_QUEUE.to_owned()],
        ..WorkerOptions::default()
    };
    let mut workers = start_workers(&mut env, 2, &options)?;
    let mut kills = 0;
    while kills < 3 && env.count("state IN ('waiting', 'queued')").await? > i64::try_from(diamonds)?
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
        workers[kills].kill().await?;
        workers.push(env.fleet.worker(&options)?);
        kills += 1;
    }
    if let Err(error) = env.wait_drained(allowance(diamonds * 4)).await {
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

    let e = &env.effects;
    let once: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM (SELECT key, kind FROM {e} \
           WHERE kind IN ('top', 'left', 'right', 'bottom') GROUP BY key, kind HAVING count(*) = 1) AS once"
    ))
    .fetch_one(&env.db)
    .await?;
    // A part that began before one of its parents took effect: an edge not honoured.
    let early: Vec<(i64, String)> = sqlx::query_as(&format!(
        "SELECT r.key, r.kind FROM {e} AS r JOIN {e} AS p ON p.key = r.key \
           AND ((r.kind IN ('ran left', 'ran right') AND p.kind = 'top') \
             OR (r.kind = 'ran bottom' AND p.kind IN ('left', 'right'))) \
         WHERE r.at < p.at ORDER BY 1, 2"
    ))
    .fetch_all(&env.db)
    .await?;
    let rerun: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {e} WHERE kind LIKE 'ran %' AND attempt > 1"
    ))
    .fetch_one(&env.db)
    .await?;
    let left_over: Vec<(i64, String)> = sqlx::query_as(&format!(
        "SELECT id, state || ': ' || COALESCE(last_error, '') FROM {} \
         WHERE state NOT IN ('done') ORDER BY id LIMIT 20",
        env.table
    ))
    .fetch_all(&env.db)
    .await?;
    let parts = i64::try_from(diamonds * 4)?;
    report.line(format!(
        "{kills} workers killed; of {diamonds} diamonds, {once} of {parts} parts took effect exactly once; {rerun} runs were attempts after the first"
    ));
    report.check(kills == 3, format!("{kills} of 3 kills happened"));
    report.check(
        once == parts,
        format!("{once} of {parts} parts took effect exactly once"),
    );
    report.check_all(
        "parts that began before a parent took effect",
        &early
            .iter()
            .map(|(key, kind)| format!("diamond {key}: {kind}"))
            .collect::<Vec<_>>(),
    );
    report.check_all(
        "jobs not done (waiting, failed, cancelled)",
        &left_over
            .iter()
            .map(|(id, state)| format!("job {id}: {state}"))
            .collect::<Vec<_>>(),
    );
    report.check(rerun > 0, "no part ran again: the kills missed every run");
    Ok(report)
}
