//! What a worker's prefetch costs others: how evenly four worker processes share a backlog of
//! 1 ms jobs, and how long a more urgent job enqueued during a drain waits to start, with the
//! default prefetch and with none.

use std::time::{Duration, Instant};

use anyhow::Result;
use sqlx::PgPool;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::Notify;

use crate::tasks::{self, QUEUE};
use crate::workload::{started_at, PqTable};

/// How long each job of the backlog runs.
const JOB: Duration = Duration::from_millis(1);

/// Empties the table, then adds `jobs` ready jobs of the 1 ms task.
async fn fill(admin: &PgPool, pq: &PqTable, jobs: u64) -> Result<()> {
    pq.truncate(admin).await?;
    pq.add_pauses(admin, jobs, JOB).await
}

/// Enqueue-to-start times of `samples` urgent jobs (`expected_at` now, before every job of the
/// backlog), put 20 ms apart while one worker of concurrency 16 drains the backlog. In
/// milliseconds, sorted.
async fn urgent_waits(
    admin: &PgPool,
    pq: &PqTable,
    samples: u32,
    prefetch: Option<usize>,
    started: &mut UnboundedReceiver<(u32, Instant)>,
) -> Result<Vec<f64>> {
    fill(admin, pq, u64::from(samples) * 40 * 16 + 5_000).await?;
    let handle = pq.connect().await?;
    let stop = std::sync::Arc::new(Notify::new());
    let mut worker = pq::Worker::new(handle.clone())
        .queues([QUEUE])
        .concurrency(16);
    if let Some(prefetch) = prefetch {
        worker = worker.prefetch(prefetch);
    }
    let worker = {
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(
            worker
                .shutdown_on(async move { stop.notified().await })
                .run(),
        )
    };
    // Into the drain's stride first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut waits = Vec::new();
    for n in 0..samples {
        let put = Instant::now();
        tasks::urgent(n)
            .expected_at(Duration::ZERO)
            .enqueue(&handle)
            .await?;
        let started_at = started_at(started, n).await?;
        waits.push(started_at.duration_since(put).as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.notify_one();
    worker.await??;
    handle.pool().close().await;
    waits.sort_by(f64::total_cmp);
    Ok(waits)
}

fn quantiles(waits: &[f64]) -> String {
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q).round() as usize];
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        at(0.5),
        at(0.9),
        at(1.0)
    )
}

/// The figure's lines, for the report's notes; once per process (the urgent jobs' channel is
/// set once).
pub async fn prefetch(admin: &PgPool, pq: &PqTable, jobs: u64, samples: u32) -> Result<String> {
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    anyhow::ensure!(
        tasks::URGENT.set(started_tx).is_ok(),
        "the prefetch figure runs once per process"
    );
    let jobs = jobs.max(4_000);
    fill(admin, pq, jobs).await?;
    let (measured, _, shares) = pq.drain_queue(admin, QUEUE, 4, 16, jobs).await?;
    let fair = jobs as f64 / shares.len() as f64;
    let spread: Vec<String> = shares
        .iter()
        .map(|share| format!("{:.0}%", 100.0 * *share as f64 / fair))
        .collect();
    let default = urgent_waits(admin, pq, samples, None, &mut started).await?;
    let none = urgent_waits(admin, pq, samples, Some(0), &mut started).await?;
    Ok(format!(
        "Prefetch, jobs of {} ms:\n\
         - 4 worker processes × concurrency 16 drain {jobs}: {:.0} jobs/s, each process's share of a fair quarter {}\n\
         - an urgent job enqueued during a drain (1 process × 16), enqueue to start over {samples}: default prefetch {}; prefetch(0) {}",
        JOB.as_millis(),
        measured.rate(),
        spread.join(" / "),
        quantiles(&default),
        quantiles(&none),
    ))
}
