//! An isolated queue table per test: a fresh schema, dropped when the test ends (even when it
//! fails).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use pq::{Pq, Worker};

/// The database the tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema name no other test (or test run) uses.
pub fn unique_schema(label: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "pq_test_{label}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `worker` on `queue` until nothing is ready there.
pub async fn burst(worker: Worker, queue: &str) {
    tokio::time::timeout(
        Duration::from_secs(60),
        worker.queues([queue]).burst().run(),
    )
    .await
    .expect("a burst worker returns once the queue is empty")
    .expect("the worker starts");
}

/// A queue table in a schema of its own.
pub struct TestDb {
    pub pq: Pq,
    pub schema: String,
}

impl TestDb {
    /// A created table `queue` in a new schema.
    pub async fn new() -> TestDb {
        Self::with_table("queue").await
    }

    /// A created table of this name in a new schema.
    pub async fn with_table(table: &str) -> TestDb {
        let schema = unique_schema("t");
        let pq = Pq::builder()
            .schema(&schema)
            .table(table)
            .max_connections(12)
            .connect(&database_url())
            .await
            .expect("connect to the test database");
        pq.create().await.expect("create the queue table");
        TestDb { pq, schema }
    }

    /// Another handle on the same table (another process, say).
    pub async fn another_handle(&self) -> Pq {
        Pq::builder()
            .schema(&self.schema)
            .connect(&database_url())
            .await
            .expect("connect")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        // Drop is synchronous: a short-lived runtime on its own thread does the async work.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&database_url()).await {
                    // A transaction a failed test left open must not hang the suite.
                    let drop = format!(
                        "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    );
                    let _ = sqlx::raw_sql(&drop).execute(&mut conn).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}
