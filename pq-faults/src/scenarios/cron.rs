//! A recurring job across worker processes: each fire time of a schedule that four workers
//! define gets exactly one job, while one of them is SIGKILLed (and started again) and another
//! is stopped and resumed past its lease.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};

use super::{start_workers, Profile};
use crate::env::Env;
use crate::procs::WorkerOptions;
use crate::report::Report;
use crate::tasks;

/// Four workers (3 s leases) define an every-second schedule, whose jobs go to a queue none of
/// them works. A third of the way in, one is SIGKILLed and another started in its place;
/// halfway, another is SIGSTOPped for 5 s, then resumed. Every second from the first fire to
/// the last must have exactly one job.
pub async fn cron(profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("cron", logs).await?;
    let options = WorkerOptions {
        lease: Duration::from_secs(3),
        every_second: true,
        ..WorkerOptions::default()
    };
    let mut workers = start_workers(&mut env, 4, &options)?;
    let third = profile.cron_run / 3;
    tokio::time::sleep(third).await;
    workers[0].kill().await?;
    workers.push(env.fleet.worker(&options)?);
    tokio::time::sleep(profile.cron_run / 6).await;
    workers[1].signal("STOP")?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    workers[1].signal("CONT")?;
    tokio::time::sleep(profile.cron_run - third - profile.cron_run / 6).await;
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

    let fires: Vec<(DateTime<Utc>, i64)> = sqlx::query_as(&format!(
        "SELECT (meta->'cron'->>'fire')::timestamptz AS fire, count(*) FROM {} \
         WHERE task = $1 GROUP BY 1 ORDER BY 1",
        env.table
    ))
    .bind(<tasks::tick as pq::Task>::NAME)
    .fetch_all(&env.db)
    .await?;
    let seconds = match (fires.first(), fires.last()) {
        (Some(first), Some(last)) => (last.0 - first.0).num_seconds() + 1,
        _ => 0,
    };
    report.line(format!(
        "{} fire times with jobs over {seconds} s, {} jobs",
        fires.len(),
        fires.iter().map(|(_, n)| n).sum::<i64>()
    ));
    let expected = i64::try_from(profile.cron_run.as_secs())? - 5;
    report.check(
        seconds >= expected,
        format!("fired over {seconds} s of a {:?} run", profile.cron_run),
    );
    let twice: Vec<String> = fires
        .iter()
        .filter(|(_, n)| *n != 1)
        .map(|(at, n)| format!("{at}: {n} jobs"))
        .collect();
    report.check_all("fire times with more than one job", &twice);
    let missing: Vec<String> = fires
        .windows(2)
        .filter(|pair| pair[1].0 - pair[0].0 != chrono::Duration::seconds(1))
        .map(|pair| format!("none between {} and {}", pair[0].0, pair[1].0))
        .collect();
    report.check_all("gaps", &missing);
    Ok(report)
}
