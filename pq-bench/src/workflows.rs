//! Workflows: fan-outs of 1,000 jobs with a result each, and a fan-in that takes all 1,000
//! results, enqueued as one workflow each and drained by one worker process; beside the same
//! number of jobs with a result and no edges.

use std::time::Instant;

use anyhow::{ensure, Result};
use sqlx::PgPool;

use crate::tasks::{self, QUEUE, SQUARE};
use crate::workload::PqTable;

/// Jobs of each fan-out.
const WIDTH: u32 = 1_000;

/// The figure's lines, for the report's notes.
pub async fn workflows(
    admin: &PgPool,
    pq: &PqTable,
    workflows: u32,
    concurrency: usize,
) -> Result<String> {
    let jobs = u64::from(workflows) * u64::from(WIDTH + 1);
    let mut lines = vec![format!(
        "Workflows of a {WIDTH}-job fan-out and its fan-in, 1 worker process × {concurrency}, {workflows} workflows ({jobs} jobs) a drain, in turns with as many jobs with a result and no edges:"
    )];
    for round in 1..=2 {
        pq.truncate(admin).await?;
        // Closed before the drain, whose counters wait for every connection of the load.
        let handle = pq.connect().await?;
        let mut enqueue_ms = Vec::new();
        for w in 0..workflows {
            let mut workflow = pq::Workflow::new();
            let squares: Vec<_> = (0..WIDTH)
                .map(|n| workflow.add(tasks::square(n + w)))
                .collect();
            workflow.add(tasks::total(&squares));
            let started = Instant::now();
            workflow.enqueue(&handle).await?;
            enqueue_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        handle.pool().close().await;
        enqueue_ms.sort_by(f64::total_cmp);
        let (measured, state, _) = pq.drain_queue(admin, QUEUE, 1, concurrency, jobs).await?;
        ensure!(
            state.rows == i64::try_from(jobs)?,
            "{} jobs kept, not {jobs}",
            state.rows
        );
        lines.push(format!(
            "- round {round}, workflows: {:.0} jobs/s, {:.0} B of WAL a job; a workflow's enqueue took {:.1} ms (median)",
            measured.rate(),
            measured.wal_per_job(),
            enqueue_ms[enqueue_ms.len() / 2],
        ));
        pq.truncate(admin).await?;
        pq.add_of(admin, SQUARE, r#"{"n":%s}"#, jobs).await?;
        let (measured, _, _) = pq.drain_queue(admin, QUEUE, 1, concurrency, jobs).await?;
        lines.push(format!(
            "- round {round}, the same jobs without edges: {:.0} jobs/s, {:.0} B of WAL a job",
            measured.rate(),
            measured.wal_per_job(),
        ));
    }
    Ok(lines.join("\n"))
}
