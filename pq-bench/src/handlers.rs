//! Realistic handlers: jobs that await 1 ms and 10 ms, as I/O does, drained by one worker
//! process at concurrency 16 and 64, against what their slots allow (`concurrency / length`).

use std::time::Duration;

use anyhow::Result;
use sqlx::PgPool;

use crate::tasks::QUEUE;
use crate::workload::PqTable;

/// The figure's lines, for the report's notes: each drain long enough for about 2 s of work.
pub async fn handlers(admin: &PgPool, pq: &PqTable, quick: bool) -> Result<String> {
    let mut lines = vec!["Handlers that await, 1 worker process:".to_owned()];
    for millis in [1u64, 10] {
        for concurrency in [16usize, 64] {
            let bound = concurrency as f64 * 1000.0 / millis as f64;
            let seconds = if quick { 0.5 } else { 2.0 };
            let jobs = (bound * seconds) as u64;
            pq.truncate(admin).await?;
            pq.add_pauses(admin, jobs, Duration::from_millis(millis))
                .await?;
            let (measured, _, _) = pq.drain_queue(admin, QUEUE, 1, concurrency, jobs).await?;
            lines.push(format!(
                "- jobs of {millis} ms × concurrency {concurrency}, {jobs} jobs: {:.0} jobs/s, {:.0}% of the slots' {bound:.0}/s",
                measured.rate(),
                100.0 * measured.rate() / bound,
            ));
        }
    }
    Ok(lines.join("\n"))
}
