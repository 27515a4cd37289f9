//! Tasks and a worker: enqueue typed tasks by calling them, then run them, with a retry, a
//! failure, a result and a small workflow along the way.
//!
//! Run with `cargo run --example worker` (PostgreSQL at `DATABASE_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`).

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::bail;

/// Eats apples; runs on the `apples` queue.
#[pq::task(queue = "apples")]
async fn eat(ctx: pq::TaskContext, kind: String, count: u32) -> anyhow::Result<()> {
    println!(
        "[job {}] umm, {count} {kind} apples taste good",
        ctx.job_id()
    );
    Ok(())
}

static PICKS: AtomicU32 = AtomicU32::new(0);

/// Fails on its first attempt, succeeds on the retry.
#[pq::task(queue = "apples", max_retries = 2, retry_in = "1s")]
async fn pick(ctx: pq::TaskContext, tree: String) -> anyhow::Result<()> {
    if PICKS.fetch_add(1, Ordering::SeqCst) == 0 {
        println!(
            "[job {}] attempt {}: the ladder slipped",
            ctx.job_id(),
            ctx.attempt()
        );
        bail!("the ladder slipped at {tree}");
    }
    println!(
        "[job {}] attempt {}: picked {tree}",
        ctx.job_id(),
        ctx.attempt()
    );
    // Follow-up work goes through the same handle.
    eat(tree, 12).enqueue(ctx.pq()).await?;
    Ok(())
}

/// Never succeeds: after its one retry it stays in the table as failed, with its errors.
#[pq::task(queue = "apples", max_retries = 1, retry_in = "500ms")]
fn bake(job_id: pq::JobId, pie: String) -> Result<(), String> {
    println!("[job {job_id}] the oven is cold, no {pie} pie");
    Err(format!("the oven is cold ({pie})"))
}

/// Weighs apples: its job keeps the weight, which the enqueuer waits for.
#[pq::task(queue = "apples")]
async fn weigh(apples: u32) -> anyhow::Result<f64> {
    Ok(f64::from(apples) * 0.15)
}

/// Adds up what its parents weighed, once every one of them has: a fan-in.
#[pq::task(queue = "apples")]
async fn total(#[parents] weights: Vec<f64>) -> anyhow::Result<f64> {
    Ok(weights.iter().sum())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pq = pq::Pq::builder()
        .schema("pq_example_worker")
        .connect(&url)
        .await?;
    pq.create().await?;
    pq.queue("apples").clear().await?;

    eat("Cox".into(), 3).enqueue(&pq).await?;
    eat("Braeburn".into(), 1)
        .schedule_at("1s")
        .enqueue(&pq)
        .await?;
    pick("the old tree".into()).enqueue(&pq).await?;
    let bake_id = bake("apple".into()).enqueue(&pq).await?;

    let weight = weigh(12).enqueue(&pq).await?; // a pq::JobHandle<f64>

    // Three crates weighed, then their total: it waits for all three, and takes their weights.
    let mut workflow = pq::Workflow::new();
    let crates = [10, 20, 30].map(|apples| workflow.add(weigh(apples)));
    let sum = workflow.add(total(crates));
    let weighed = workflow.enqueue(&pq).await?;

    // Work for four seconds, long enough for the retries, then shut down gracefully. A real
    // worker binary runs `pq::Worker::new(pq).run().await?` and stops on SIGINT or SIGTERM.
    let worker = tokio::spawn(
        pq::Worker::new(pq.clone())
            .shutdown_on(tokio::time::sleep(std::time::Duration::from_secs(4)))
            .run(),
    );
    println!("12 apples weigh {:.2} kg", weight.result(&pq).await?);
    let crates = weighed.handle(sum).result(&pq).await?;
    println!(
        "three crates weigh {crates:.2} kg (workflow {})",
        weighed.id()
    );
    let report = worker.await??;
    println!("the worker's runs: {report}");

    if let Some(job) = pq.admin().job(bake_id).await? {
        let error = job.last_error.unwrap_or_default();
        println!("job {bake_id} is {}: {error}", job.state);
    }
    Ok(())
}
