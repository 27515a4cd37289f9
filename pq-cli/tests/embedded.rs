//! The CLI embedded in a program that registers tasks, as an application's own binary embeds
//! it: `enqueue` checks task names and arguments against the registry, and `work` runs them.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use pq::{JobFilter, JobState, Pq};

static EATEN: AtomicUsize = AtomicUsize::new(0);

#[pq::task(name = "cli::eat", queue = "apples")]
async fn eat(kind: String) -> anyhow::Result<()> {
    assert!(!kind.is_empty());
    EATEN.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[pq::task(name = "cli::peel", queue = "pears")]
fn peel(count: u32) {
    let _ = count;
}

#[pq::task(name = "cli::sms", queue = "sms", limit_key = [customer], limit = 1)]
fn sms(customer: u32, text: String) {
    let _ = (customer, text);
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A created table in a schema of its own, dropped at the end of the test.
struct Db {
    schema: String,
    pq: Pq,
}

impl Db {
    async fn new() -> Db {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let schema = format!(
            "pq_cli_embedded_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let pq = Pq::builder()
            .schema(&schema)
            .max_connections(4)
            .connect(&database_url())
            .await
            .expect("connect to the test database");
        pq.create().await.expect("create the queue table");
        Db { schema, pq }
    }

    /// Runs the embedded CLI with `ARGS...` on this table.
    async fn cli(&self, args: &[&str]) -> anyhow::Result<()> {
        let url = database_url();
        let mut all = vec!["my-app", "--database-url", &url, "--schema", &self.schema];
        all.extend_from_slice(args);
        pq_cli::run_from(all).await
    }

    async fn jobs(&self) -> Vec<pq::JobInfo> {
        let page = self.pq.admin().list(&JobFilter::new(), None, 100).await;
        page.unwrap().jobs
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let drop = format!(
            "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        );
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&database_url()).await {
                    let _ = sqlx::raw_sql(&drop).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn enqueue_writes_a_registered_task_on_its_own_queue() {
    let db = Db::new().await;

    db.cli(&["enqueue", "cli::eat", r#"{"kind": "Cox"}"#])
        .await
        .unwrap();

    let jobs = db.jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].task.as_deref(), Some("cli::eat"));
    assert_eq!(jobs[0].queue, "apples");
    assert_eq!(jobs[0].data, serde_json::json!({"kind": "Cox"}));
}

#[tokio::test]
async fn enqueue_puts_a_job_under_its_tasks_flow_key_as_a_call_does() {
    let db = Db::new().await;

    db.cli(&["enqueue", "cli::sms", r#"{"customer": 7, "text": "hi"}"#])
        .await
        .unwrap();
    sms(7, "hi".into()).enqueue(&db.pq).await.unwrap();

    let flows: Vec<Option<String>> =
        sqlx::query_scalar(&format!("SELECT flow FROM {} ORDER BY id", db.pq.table()))
            .fetch_all(db.pq.pool())
            .await
            .unwrap();
    assert_eq!(flows.len(), 2);
    assert!(flows[0].is_some(), "{flows:?}");
    assert_eq!(flows[0], flows[1]);
}

#[tokio::test]
async fn enqueue_refuses_an_unknown_task_name_and_lists_the_known_ones() {
    let db = Db::new().await;

    let err = db
        .cli(&["enqueue", "cli::eet", r#"{"kind": "Cox"}"#])
        .await
        .unwrap_err()
        .to_string();

    assert_eq!(
        err,
        "no task is named `cli::eet` in this program; its tasks are: cli::eat, cli::never, cli::peel, cli::sms"
    );
    assert!(db.jobs().await.is_empty());
}

#[tokio::test]
async fn enqueue_refuses_arguments_that_do_not_decode_into_the_task() {
    let db = Db::new().await;

    let wrong_type = db
        .cli(&["enqueue", "cli::peel", r#"{"count": "three"}"#])
        .await
        .unwrap_err()
        .to_string();
    let missing = db
        .cli(&["enqueue", "cli::eat", "{}"])
        .await
        .unwrap_err()
        .to_string();

    assert!(
        wrong_type.starts_with("cannot decode the arguments of task `cli::peel`: invalid type"),
        "{wrong_type}"
    );
    assert!(missing.contains("missing field `kind`"), "{missing}");
    assert!(db.jobs().await.is_empty());
}

static RAN: AtomicUsize = AtomicUsize::new(0);

#[pq::task(name = "cli::never", queue = "nobody works here")]
fn never(n: u32) {
    RAN.fetch_add(n as usize, Ordering::SeqCst);
}

#[tokio::test]
async fn checking_the_arguments_does_not_run_the_task() {
    let db = Db::new().await;

    db.cli(&["enqueue", "cli::never", r#"{"n": 1}"#])
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    assert_eq!(RAN.load(Ordering::SeqCst), 0);
    assert_eq!(db.jobs().await.len(), 1);
}

#[tokio::test]
async fn work_runs_the_registered_tasks_until_nothing_is_ready_in_burst_mode() {
    let db = Db::new().await;
    db.cli(&["enqueue", "cli::eat", r#"{"kind": "Cox"}"#])
        .await
        .unwrap();
    db.cli(&["enqueue", "cli::eat", r#"{"kind": "Gala"}"#])
        .await
        .unwrap();
    db.cli(&["enqueue", "cli::peel", r#"{"count": 3}"#])
        .await
        .unwrap();

    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        db.cli(&["work", "--queue", "apples", "--concurrency", "2", "--burst"]),
    )
    .await
    .expect("a burst worker returns")
    .unwrap();

    let jobs = db.jobs().await;
    assert_eq!(jobs.len(), 1, "completed jobs are deleted");
    assert_eq!(jobs[0].task.as_deref(), Some("cli::peel"));
    assert_eq!(jobs[0].state, JobState::Ready, "its queue was not worked");
    assert!(EATEN.load(Ordering::SeqCst) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_registers_its_worker_with_the_lease_it_was_given() {
    let db = std::sync::Arc::new(Db::new().await);
    let work = tokio::spawn({
        let db = std::sync::Arc::clone(&db);
        async move {
            db.cli(&[
                "work",
                "--queue",
                "apples",
                "--lease",
                "90s",
                "--grace-period",
                "1s",
            ])
            .await
        }
    });
    let mut workers = Vec::new();
    for _ in 0..300 {
        workers = db.pq.admin().workers().await.unwrap();
        if !workers.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    work.abort();
    let worker = workers.first().expect("the worker registered");
    let lease = worker.expires_at - worker.seen_at;
    assert_eq!(lease.num_seconds(), 90, "{lease}");
}

/// Not a test by itself: run by `work_logs_to_stderr_unless_the_program_has_a_subscriber` as a
/// child process, it is the application's binary, running the embedded CLI with the arguments
/// in `PQ_CLI_CHILD_ARGS` (a JSON array).
#[test]
fn embedded_cli_child() {
    let Ok(args) = std::env::var("PQ_CLI_CHILD_ARGS") else {
        return;
    };
    let args: Vec<String> = serde_json::from_str(&args).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(pq_cli::run_from(args))
        .unwrap();
}

#[tokio::test]
async fn work_logs_to_stderr_unless_the_program_has_a_subscriber() {
    let db = Db::new().await;
    db.cli(&["enqueue", "cli::eat", r#"{"kind": "Fuji"}"#])
        .await
        .unwrap();
    let url = database_url();
    let args = [
        "my-app",
        "--database-url",
        &url,
        "--schema",
        &db.schema,
        "work",
        "--queues",
        "apples,pears",
        "--burst",
    ];
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "embedded_cli_child", "--nocapture"])
        .env("PQ_CLI_CHILD_ARGS", serde_json::to_string(&args).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(child.status.success(), "{stderr}");
    assert!(stderr.contains("pq: worker started"), "{stderr}");
    assert!(stderr.contains(r#"queues=["apples", "pears"]"#), "{stderr}");
    assert!(db.jobs().await.is_empty(), "the job was worked");
}
