//! Jobs whose task returns a value, kept with its job: drained by one worker process beside
//! plain jobs, in turns.

use anyhow::{ensure, Result};
use sqlx::PgPool;

use crate::tasks::{NOOP, QUEUE, SQUARE};
use crate::workload::PqTable;

/// The figure's lines, for the report's notes.
pub async fn results(
    admin: &PgPool,
    pq: &PqTable,
    jobs: u64,
    concurrency: usize,
) -> Result<String> {
    let mut lines = vec![format!(
        "Jobs with a result, 1 worker process × {concurrency}, {jobs} jobs a drain, in turns:"
    )];
    for round in 1..=2 {
        for (label, task) in [("plain", NOOP), ("with a result", SQUARE)] {
            pq.truncate(admin).await?;
            pq.add_of(admin, task, r#"{"n":%s}"#, jobs).await?;
            let (measured, state, _) = pq.drain_queue(admin, QUEUE, 1, concurrency, jobs).await?;
            let kept = if task == SQUARE { jobs } else { 0 };
            ensure!(
                state.rows == i64::try_from(kept)?,
                "{} {label} jobs kept, not {kept}",
                state.rows
            );
            lines.push(format!(
                "- round {round}, {label}: {:.0} jobs/s, {:.0} B of WAL a job, {} rows kept",
                measured.rate(),
                measured.wal_per_job(),
                state.rows,
            ));
        }
    }
    Ok(lines.join("\n"))
}
