//! Drains under limits, beside the unlimited drain of the same run: a queue limited to 64
//! running jobs, 1,000 keys of one running job each, a queue limited to 5,000 jobs a second,
//! 1,000 keys of 10 jobs a second each.
//! One worker process at concurrency 1000 each time, so that the limit, not the worker, binds.
//! A sampler reads what runs every 2 ms: the most at once, of the queue and of one key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use sqlx::PgPool;

use crate::tasks::{KEYED, KEY_PACED};
use crate::workload::PqTable;

const CONCURRENCY: usize = 1000;

/// The most jobs seen running at once, in all and of one flow key.
#[derive(Default)]
struct Seen {
    running: i64,
    per_key: i64,
}

/// Samples what runs until stopped.
async fn sample(pool: PgPool, table: String, stop: Arc<AtomicBool>) -> Result<Seen> {
    let mut seen = Seen::default();
    let statement = format!(
        "SELECT COALESCE(sum(n), 0)::int8, COALESCE(max(n) FILTER (WHERE flow IS NOT NULL), 0)::int8 \
         FROM (SELECT flow, count(*) AS n FROM {table} WHERE state = 'running' GROUP BY flow) AS r"
    );
    while !stop.load(Ordering::Relaxed) {
        let (running, per_key): (i64, i64) = sqlx::query_as(&statement).fetch_one(&pool).await?;
        seen.running = seen.running.max(running);
        seen.per_key = seen.per_key.max(per_key);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(seen)
}

/// One drain of `queue`, its jobs written by `fill`, sampled: jobs a second, and what was seen.
async fn drain(
    admin: &PgPool,
    pq: &PqTable,
    queue: &str,
    jobs: u64,
    keyed: Option<(&str, u64)>,
) -> Result<(f64, Seen)> {
    pq.truncate(admin).await?;
    pq.add_to(admin, queue, jobs, keyed).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*admin.connect_options()).clone())
        .await?;
    let sampler = tokio::spawn(sample(pool, pq.name.clone(), Arc::clone(&stop)));
    let drained = pq.drain_queue(admin, queue, 1, CONCURRENCY, jobs).await;
    stop.store(true, Ordering::Relaxed);
    let seen = sampler.await??;
    let (measured, _, _) = drained?;
    Ok((measured.rate(), seen))
}

/// The figure's lines, for the report's notes.
pub async fn limits(admin: &PgPool, pq: &PqTable, jobs: u64) -> Result<String> {
    let limited = pq.connect().await?;
    limited
        .queue("bench_capped")
        .limits()
        .max_running(64)
        .apply()
        .await?;
    limited
        .queue("bench_paced")
        .limits()
        .rate("5000/s")
        .apply()
        .await?;
    let burst = "5000/s".parse::<pq::Rate>()?.default_burst();
    limited.pool().close().await;

    let (free, free_seen) = drain(admin, pq, crate::tasks::QUEUE, jobs, None).await?;
    let (capped, capped_seen) = drain(admin, pq, "bench_capped", jobs, None).await?;
    let (keyed, keyed_seen) = drain(admin, pq, "bench_keyed", jobs, Some((KEYED, 1000))).await?;
    let (paced, paced_seen) = drain(admin, pq, "bench_paced", jobs, None).await?;
    // 1,000 keys at 10/s each, a burst of one: at most 10,000/s over them all.
    let key_jobs = jobs.min(20_000);
    let (key_paced, _) = drain(
        admin,
        pq,
        "bench_key_paced",
        key_jobs,
        Some((KEY_PACED, 1000)),
    )
    .await?;
    let key_held = (key_jobs as f64 - 1000.0) / (key_jobs as f64 / key_paced);
    // The rate's first `burst` jobs start at once; the rest at the rate.
    let seconds = jobs as f64 / paced;
    let held = (jobs as f64 - f64::from(burst)) / seconds;
    Ok(format!(
        "Limits, 1 worker process × concurrency {CONCURRENCY}, {jobs} jobs each:\n\
         - unlimited: {free:.0} jobs/s, at most {} running\n\
         - a queue limited to 64 running: {capped:.0} jobs/s ({:.0}% of unlimited), at most {} running\n\
         - 1,000 keys, one running each: {keyed:.0} jobs/s ({:.0}%), at most {} running, {} of one key\n\
         - a queue limited to 5,000/s (burst {burst}): {paced:.0} jobs/s over the drain, {held:.0}/s after the burst ({:.1}% of the rate), at most {} running\n\
         - 1,000 keys of 10/s each (burst 1), {key_jobs} jobs: {key_paced:.0} jobs/s over the drain, {key_held:.0}/s after the first burst ({:.1}% of 10,000/s)",
        free_seen.running,
        100.0 * capped / free,
        capped_seen.running,
        100.0 * keyed / free,
        keyed_seen.running,
        keyed_seen.per_key,
        100.0 * held / 5000.0,
        paced_seen.running,
        100.0 * key_held / 10_000.0,
    ))
}
