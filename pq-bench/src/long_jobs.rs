//! What keeping long jobs claimed costs: the rows a worker writes, and the WAL, while its jobs
//! run and nothing else happens.

use std::time::Duration;

use anyhow::Result;
use sqlx::PgPool;

use crate::tasks;

/// Counts of writes, read from the statistics of the queue's tables.
struct Writes {
    wal: i64,
    queue_updates: i64,
    worker_updates: i64,
}

async fn writes(admin: &PgPool, schema: &str) -> Result<Writes> {
    // The workers' backends report their counts once idle a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let updates = |table: String| {
        let admin = admin.clone();
        async move {
            let n: Option<i64> = sqlx::query_scalar(
                "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = to_regclass($1)",
            )
            .bind(table)
            .fetch_optional(&admin)
            .await?
            .flatten();
            anyhow::Ok(n.unwrap_or(0))
        }
    };
    Ok(Writes {
        wal: sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0')::int8")
            .fetch_one(admin)
            .await?,
        queue_updates: updates(format!("\"{schema}\".queue")).await?,
        worker_updates: updates(format!("\"{schema}\".queue_workers")).await?,
    })
}

/// `jobs` jobs that each run `run`, on one worker with a `lease`: what it writes over a window
/// while they all run. Returns the figure's line.
pub async fn long_jobs(
    admin: &PgPool,
    url: &str,
    schema: &str,
    jobs: u32,
    run: Duration,
    lease: Duration,
) -> Result<String> {
    let schema = format!("{schema}_long");
    let pq = pq::Pq::builder().schema(&schema).connect(url).await?;
    pq.create().await?;
    for _ in 0..jobs {
        let millis = u64::try_from(run.as_millis()).unwrap_or(u64::MAX);
        tasks::sleeper(millis).enqueue(&pq).await?;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(
        pq::Worker::new(pq.clone())
            .queues(["bench_long"])
            .concurrency(jobs as usize)
            .lease(lease)
            .shutdown_on(async {
                let _ = stopped.await;
            })
            .run(),
    );
    let running = format!("SELECT count(*) FROM \"{schema}\".queue WHERE state = 'running'");
    while sqlx::query_scalar::<_, i64>(&running)
        .fetch_one(admin)
        .await?
        < i64::from(jobs)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = writes(admin, &schema).await?;
    let window = run.saturating_sub(Duration::from_secs(5));
    tokio::time::sleep(window.saturating_sub(Duration::from_millis(1500))).await;
    let after = writes(admin, &schema).await?;
    let _ = stop.send(());
    worker.await??;
    pq.pool().close().await;
    sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(admin)
        .await?;
    let minutes = window.as_secs_f64() / 60.0;
    let job_rows = (after.queue_updates - before.queue_updates) as f64;
    let worker_rows = (after.worker_updates - before.worker_updates) as f64;
    Ok(format!(
        "Long jobs: {jobs} jobs of {} s on one worker with a lease of {} s. Over {:.0} s while they all ran: \
         {:.1} writes of job rows per job and minute, {:.1} writes of the worker's row per minute, \
         {:.0} bytes of WAL per job and minute.",
        run.as_secs(),
        lease.as_secs_f64(),
        window.as_secs_f64(),
        job_rows / f64::from(jobs) / minutes,
        worker_rows / minutes,
        (after.wal - before.wal) as f64 / f64::from(jobs) / minutes,
    ))
}
