//! An isolated queue table per test: a fresh schema, dropped when the test ends (even when it
//! fails).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pq::{JobId, Pq, TaskContext, Worker};

/// The database the tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// PgBouncer's URL, in transaction pooling mode in front of [`database_url`], when the tests
/// are to run through it (`.ci/run` runs them so once): the handles of [`TestDb`] connect
/// there.
pub fn pooler_url() -> Option<String> {
    std::env::var("PQ_TEST_POOLER_URL").ok()
}

/// A handle's builder for the server or, when the tests run through PgBouncer, for it.
pub fn builder() -> pq::PqBuilder {
    match pooler_url() {
        Some(_) => Pq::builder()
            .transaction_pooler()
            .direct_url(&database_url()),
        None => Pq::builder(),
    }
}

/// Where [`builder`]'s handles connect.
pub fn handle_url() -> String {
    pooler_url().unwrap_or_else(database_url)
}

/// A connection to the server itself, for a test's own statements.
pub async fn direct() -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(&database_url())
        .await
        .expect("connect to the test database")
}

/// Completes `claims` as a handler's transaction does: in a transaction of `pq`'s pool, which
/// a transaction pooler needs.
pub async fn complete(pq: &Pq, claims: &[pq::protocol::Claim], keep: bool) -> Vec<JobId> {
    let mut tx = pq.pool().begin().await.expect("begin");
    let done = pq.complete(&mut tx, claims, keep).await.expect("complete");
    tx.commit().await.expect("commit");
    done
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

/// Runs per (table, job id), so that tests in other schemas never share a counter.
fn runs() -> &'static Mutex<HashMap<(String, i64), u32>> {
    static RUNS: OnceLock<Mutex<HashMap<(String, i64), u32>>> = OnceLock::new();
    RUNS.get_or_init(Mutex::default)
}

/// Counts a run of the context's job; returns which run this is (1 for the first).
pub fn record_run(ctx: &TaskContext) -> u32 {
    record_run_of(&ctx.pq().table(), ctx.job_id())
}

/// Counts a run of job `id` of `table`; returns which run this is.
pub fn record_run_of(table: &str, id: JobId) -> u32 {
    let mut runs = runs().lock().unwrap();
    let count = runs.entry((table.to_owned(), id.0)).or_default();
    *count += 1;
    *count
}

/// How many times job `id` of `pq`'s table ran.
pub fn runs_of(pq: &Pq, id: JobId) -> u32 {
    runs()
        .lock()
        .unwrap()
        .get(&(pq.table(), id.0))
        .copied()
        .unwrap_or(0)
}

/// Waits up to 30 s for `condition`.
pub async fn wait_until(mut condition: impl FnMut() -> bool) {
    eventually(|| std::future::ready(condition())).await;
}

/// Waits up to 30 s for `condition`, a question to the database, say.
pub async fn eventually<F: std::future::Future<Output = bool>>(mut condition: impl FnMut() -> F) {
    for _ in 0..600 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 30 s");
}

/// Waits for a handle's result, for at most a minute.
pub async fn result_of<T: serde::de::DeserializeOwned>(
    db: &TestDb,
    handle: pq::JobHandle<T>,
) -> Result<T, pq::Error> {
    tokio::time::timeout(Duration::from_secs(60), handle.result(&db.pq))
        .await
        .expect("the job has an outcome within a minute")
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

/// A worker running in a task of its own until it is asked to stop.
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    worker: tokio::task::JoinHandle<Result<pq::Report, pq::WorkerError>>,
}

impl Running {
    pub fn start(worker: Worker) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(
            worker
                .shutdown_on(async {
                    let _ = stopped.await;
                })
                .run(),
        );
        Running { stop, worker }
    }

    /// Signals it to shut down; returns its task, to await its return.
    pub fn stop(self) -> tokio::task::JoinHandle<Result<pq::Report, pq::WorkerError>> {
        let _ = self.stop.send(());
        self.worker
    }
}

/// A queue table in a schema of its own.
pub struct TestDb {
    pub pq: Pq,
    pub schema: String,
    /// Connections to the server itself, for the test's own statements: through PgBouncer,
    /// sqlx's prepared statements would meet other clients'.
    direct: sqlx::PgPool,
}

impl TestDb {
    /// A created table `queue` in a new schema.
    pub async fn new() -> TestDb {
        Self::with_table("queue").await
    }

    /// A created table of this name in a new schema.
    pub async fn with_table(table: &str) -> TestDb {
        let schema = unique_schema("t");
        let pq = builder()
            .schema(&schema)
            .table(table)
            .max_connections(12)
            .connect(&handle_url())
            .await
            .expect("connect to the test database");
        pq.create().await.expect("create the queue table");
        let direct = match pooler_url() {
            Some(_) => sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect_lazy(&database_url())
                .expect("the database's URL"),
            None => pq.pool().clone(),
        };
        TestDb { pq, schema, direct }
    }

    /// A pool of connections to the server itself, for the test's own statements.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.direct
    }

    /// Another handle on the same table (another process, say).
    pub async fn another_handle(&self) -> Pq {
        builder()
            .schema(&self.schema)
            .connect(&handle_url())
            .await
            .expect("connect")
    }

    /// A handle on the same table through the server at `url` (a proxy, say).
    pub async fn handle_at(&self, url: &str) -> Pq {
        Pq::builder()
            .schema(&self.schema)
            .connect(url)
            .await
            .expect("connect")
    }

    /// The state of job `id`, `None` once it is gone.
    pub async fn state_of(&self, id: JobId) -> Option<String> {
        sqlx::query_scalar(&format!(
            "SELECT state::text FROM {} WHERE id = $1",
            self.pq.table()
        ))
        .bind(id.0)
        .fetch_optional(self.pool())
        .await
        .expect("read the job's state")
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

/// A worker's side of the claim protocol, driven by hand: registered, claiming from the top of
/// its queues each time.
pub struct Claimer {
    pub pq: Pq,
    pub worker: pq::WorkerId,
    pub info: pq::protocol::WorkerInfo,
    queues: pq::protocol::ClaimQueues,
}

impl Claimer {
    /// A worker registered on `queues`, with a lease of a minute.
    pub async fn new(pq: &Pq, queues: &[&str]) -> Claimer {
        Self::with_tasks(pq, queues, None).await
    }

    /// A worker registered on `queues` that runs only `tasks` (`None`: any).
    pub async fn with_tasks(pq: &Pq, queues: &[&str], tasks: Option<&[&str]>) -> Claimer {
        let info = pq::protocol::WorkerInfo {
            queues: queues.iter().map(|q| (*q).to_owned()).collect(),
            concurrency: 100,
            lease: Duration::from_secs(60),
            version: "test".into(),
            tasks: tasks.map(|tasks| tasks.iter().map(|t| (*t).to_owned()).collect()),
        };
        let worker = pq.register_worker(&info).await.expect("register");
        let queues = pq::protocol::ClaimQueues::new(queues.iter().copied()).expect("queue names");
        Claimer {
            pq: pq.clone(),
            worker,
            info,
            queues,
        }
    }

    /// Claims up to `limit` ready jobs, the first in dequeue order.
    pub async fn claim(&mut self, limit: u32) -> Vec<pq::Job> {
        self.queues.restart();
        self.resume(limit).await
    }

    /// Claims up to `limit` ready jobs after those the last claims took, as a worker's claims
    /// do while a backlog lasts.
    pub async fn resume(&mut self, limit: u32) -> Vec<pq::Job> {
        let claimed = self
            .pq
            .claim(self.worker, &self.queues, limit)
            .await
            .expect("claim");
        assert!(claimed.unreadable.is_empty(), "{:?}", claimed.unreadable);
        claimed.jobs
    }

    /// Claims the next job, which must be `id`, and returns its claim.
    pub async fn claim_one(&mut self, id: JobId) -> pq::protocol::Claim {
        let jobs = self.claim(1).await;
        assert_eq!(jobs.iter().map(pq::Job::id).collect::<Vec<_>>(), [id]);
        jobs[0].claim().expect("claimed")
    }

    /// Makes the worker's lease run out, as if it had been frozen or cut off: its jobs become
    /// rescuable, until its next heartbeat.
    pub async fn expire(&self) {
        sqlx::query(&format!(
            "UPDATE {} SET expires_at = now() - interval '1 s' WHERE id = $1",
            derived(&self.pq, "workers")
        ))
        .bind(self.worker.0)
        .execute(&mut direct().await)
        .await
        .expect("expire");
    }

    /// Renews the worker's lease.
    pub async fn heartbeat(&self) -> pq::protocol::Heartbeat {
        self.pq
            .heartbeat(self.worker, &self.info)
            .await
            .expect("heartbeat")
    }
}

/// A failed attempt to record.
pub fn failed(
    claim: pq::protocol::Claim,
    error: &str,
    then: pq::protocol::Failure,
) -> pq::protocol::Failed {
    pq::protocol::Failed {
        claim,
        error: error.to_owned(),
        then,
    }
}

/// An object named after `pq`'s table: `"schema"."queue_<suffix>"`.
pub fn derived(pq: &Pq, suffix: &str) -> String {
    let table = pq.table();
    format!("{}_{suffix}\"", &table[..table.len() - 1])
}

/// The LISTEN/NOTIFY channel of `db`'s table, as its notify function names it.
pub async fn channel_of(db: &TestDb) -> String {
    let source: String = sqlx::query_scalar(
        "SELECT prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = $1 AND p.proname = 'queue_notify'",
    )
    .bind(&db.schema)
    .fetch_one(db.pool())
    .await
    .unwrap();
    let start = source.find("'pq_").unwrap() + 1;
    source[start..start + 19].to_owned()
}
