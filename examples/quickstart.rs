//! The queue API in one page: put jobs with a schedule and a priority, get them back.
//!
//! Run with `cargo run --example quickstart` (PostgreSQL at `DATABASE_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`; `bash .ci/ensure-postgres` starts one).

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Apple {
    kind: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pq = pq::Pq::builder()
        .schema("pq_quickstart")
        .connect(&url)
        .await?;
    pq.create().await?; // creates or upgrades the table; safe at every start

    let queue = pq.queue("apples");
    queue.clear().await?;

    let apple = |kind: &str| Apple { kind: kind.into() };
    queue.put(&apple("Cox")).await?;
    queue.put(&apple("Arthur Turner")).expected_at("1h").await?; // priority: expected sooner
    queue
        .put(&apple("Golden Delicious"))
        .expected_at("5m")
        .await?;
    queue.put(&apple("Braeburn")).schedule_at("2s").await?; // not before two seconds from now
    println!("ready now: {}", queue.len().await?);

    // Highest priority first, jobs without an expected time last; the scheduled one when due.
    while let Some(job) = queue.get_timeout(Duration::from_secs(5)).await? {
        let apple: Apple = job.data()?;
        println!("{job}\n    umm, {} apples taste good", apple.kind);
    }

    // Get, work and put atomically: a rollback returns the job to the queue.
    queue.put(&apple("Bramley")).await?;
    let mut tx = queue.begin().await?;
    let job = tx.get().await?.expect("just put");
    tx.rollback().await?;
    let again = queue.get().await?.expect("back in the queue");
    assert_eq!(job.id(), again.id());
    println!("rolled back and got job {} again", again.id());
    Ok(())
}
