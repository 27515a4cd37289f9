//! The `pq` binary run as a real process against PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`), each test on a table in a schema of its own.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pq::protocol::{Claim, ClaimQueues, Failed, Failure, Returned, WorkerInfo};
use pq::{JobId, JobState, Pq};
use serde_json::{json, Value};

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema of its own, dropped at the end of the test; the table is created unless asked not to.
struct Db {
    schema: String,
    pq: Pq,
}

impl Db {
    async fn new() -> Db {
        let db = Db::without_table().await;
        db.pq.create().await.expect("create the queue table");
        db
    }

    async fn without_table() -> Db {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let schema = format!(
            "pq_cli_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let pq = Pq::builder()
            .schema(&schema)
            .max_connections(4)
            .connect(&database_url())
            .await
            .expect("connect to the test database");
        Db { schema, pq }
    }

    /// Runs `pq --schema <schema> ARGS...`.
    fn pq(&self, args: &[&str]) -> Run {
        run(&[&["--schema", &self.schema], args].concat())
    }

    async fn failed_job(&self, queue: &str, error: &str) -> JobId {
        let id = self.pq.queue(queue).put(&json!({"n": 1})).await.unwrap();
        let claim = self.claim(queue, id).await;
        let failed = Failed {
            claim,
            error: error.to_owned(),
            then: Failure::GiveUp,
        };
        assert_eq!(self.pq.fail(&[failed]).await.unwrap(), [id]);
        id
    }

    /// Claims the next job of `queue`, which must be `id`, for a worker registered for it.
    async fn claim(&self, queue: &str, id: JobId) -> Claim {
        let info = WorkerInfo {
            queues: vec![queue.to_owned()],
            concurrency: 1,
            lease: Duration::from_secs(60),
            version: "test".into(),
            tasks: None,
        };
        let worker = self.pq.register_worker(&info).await.unwrap();
        let queues = ClaimQueues::new([queue]).unwrap();
        let claimed = self.pq.claim(worker, &queues, 1).await.unwrap();
        assert_eq!(claimed.jobs[0].id(), id);
        claimed.jobs[0].claim().unwrap()
    }

    async fn state(&self, id: JobId) -> Option<JobState> {
        self.pq.admin().job(id).await.unwrap().map(|j| j.state)
    }

    async fn count(&self) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {}", self.pq.table()))
            .fetch_one(self.pq.pool())
            .await
            .unwrap()
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

/// A finished run of the binary.
struct Run {
    output: Output,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Asserts success; returns stdout.
    #[track_caller]
    fn ok(&self) -> String {
        assert!(
            self.output.status.success(),
            "failed with {}\nstdout: {}\nstderr: {}",
            self.output.status,
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }

    /// Asserts success; returns stdout as JSON.
    #[track_caller]
    fn json(&self) -> Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// Asserts failure with a message on stderr and nothing on stdout; returns stderr.
    #[track_caller]
    fn fails(&self) -> String {
        assert!(
            !self.output.status.success(),
            "succeeded\nstdout: {}",
            self.stdout()
        );
        assert_eq!(self.stdout(), "", "stderr: {}", self.stderr());
        let err = self.stderr();
        assert!(!err.trim().is_empty());
        err
    }
}

fn run(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_pq"))
        .env("DATABASE_URL", database_url())
        .env_remove("PQ_SCHEMA")
        .env_remove("PQ_TABLE")
        .args(args)
        .output()
        .expect("run the pq binary");
    Run { output }
}

fn id(id: JobId) -> String {
    id.to_string()
}

#[tokio::test]
async fn migrate_creates_the_table_and_can_run_again() {
    let db = Db::without_table().await;

    let first = db.pq(&["migrate"]).ok();
    let again = db.pq(&["migrate", "--json"]).json();

    assert!(first.contains("is up to date"), "{first}");
    let versions: Vec<i64> = pq::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(again["migrations"], json!(versions));
    assert_eq!(db.count().await, 0);
}

#[tokio::test]
async fn workers_lists_each_registered_worker_with_its_running_jobs() {
    let db = Db::new().await;
    assert_eq!(db.pq(&["workers"]).ok().trim(), "no workers");
    let id = db.pq.queue("apples").put(&json!({"n": 1})).await.unwrap();
    db.claim("apples", id).await;

    let table = db.pq(&["workers"]).ok();
    let json = db.pq(&["workers", "--json"]).json();

    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ID",
            "HOST",
            "PID",
            "VERSION",
            "QUEUES",
            "CONCURRENCY",
            "RUNNING",
            "STARTED",
            "LAST",
            "SEEN",
            "ALIVE"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[3..7], ["test", "apples", "1", "1"], "{table}");
    assert_eq!(row.last(), Some(&"yes"), "{table}");
    let worker = &json[0];
    assert_eq!(worker["queues"], json!(["apples"]));
    assert_eq!(worker["running"], json!(1));
    assert_eq!(worker["alive"], json!(true));
    assert_eq!(worker["pid"], json!(std::process::id()));
}

#[tokio::test]
async fn queues_limit_sets_shows_and_lifts_limits_and_refuses_bad_ones() {
    let db = Db::new().await;
    assert_eq!(
        db.pq(&[
            "queues",
            "limit",
            "mail",
            "--max-running",
            "3",
            "--rate",
            "10/s"
        ])
        .ok(),
        "limited mail: at most 3 running, at most 10/s, over every worker\n"
    );
    let limits = db.pq(&["queues", "limits", "--json"]).json();
    let mail = limits
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "queue")
        .unwrap();
    assert_eq!(mail["name"], "mail");
    assert_eq!(mail["max_running"], 3);
    assert_eq!(mail["rate"], "10/s");
    assert_eq!(
        mail["burst"], 1,
        "a rate's burst is what it allows in 100 ms"
    );
    for (bad, reason) in [
        (["--max-running", "0"], "at least one"),
        (["--rate", "0/s"], "at least one job"),
        (["--rate", "many"], "jobs/period"),
    ] {
        let run = db.pq(&[&["queues", "limit", "mail"], &bad[..]].concat());
        assert_eq!(run.output.status.code(), Some(1), "{}", run.stderr());
        assert!(run.stderr().contains(reason), "{}", run.stderr());
    }
    assert_eq!(
        db.pq(&["queues", "limit", "mail"]).ok(),
        "mail has no limits of its own\n"
    );
    let limits = db.pq(&["queues", "limits", "--json"]).json();
    assert!(limits
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["kind"] != "queue"));
}

#[tokio::test]
async fn status_shows_the_ready_jobs_no_live_worker_can_run() {
    let db = Db::new().await;
    let job = pq::NewJob::from_json("apples", "{}".into())
        .unwrap()
        .task("gone::task");
    pq::Enqueue::enqueue(&db.pq, job).await.unwrap();
    let status = db.pq(&["status"]).ok();
    assert!(status.contains("no live worker"), "{status}");
    let line = status.lines().find(|line| line.contains("gone::task"));
    assert!(
        line.is_some_and(|line| line.starts_with("apples") && line.contains(" 1 ")),
        "{status}"
    );
}

#[tokio::test]
async fn queues_pause_and_resume_show_in_status_and_say_when_nothing_changed() {
    let db = Db::new().await;
    db.pq.queue("apples").put(&1).await.unwrap();

    assert_eq!(
        db.pq(&["queues", "pause", "pears"]).ok(),
        "paused pears: no worker starts its jobs\n"
    );
    assert_eq!(
        db.pq(&["queues", "pause", "pears"]).ok(),
        "pears was paused already\n"
    );
    let status = db.pq(&["status", "--json"]).json();
    assert_eq!(status[0]["queue"], "apples");
    assert_eq!(status[0]["paused"], false);
    assert_eq!(
        status[1]["queue"], "pears",
        "a paused queue shows without jobs"
    );
    assert_eq!(status[1]["paused"], true);

    let json = db.pq(&["queues", "resume", "pears", "--json"]).json();
    assert_eq!(
        json,
        json!({"queue": "pears", "paused": false, "changed": true})
    );
    assert_eq!(
        db.pq(&["queues", "resume", "pears"]).ok(),
        "pears was not paused\n"
    );
    assert_eq!(
        db.pq(&["status", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let err = db.pq(&["queues", "pause", ""]).fails();
    assert!(err.contains("queue"), "{err}");
}

#[tokio::test]
async fn status_shows_each_queue_counted_by_state_in_aligned_columns() {
    let db = Db::new().await;
    db.failed_job("apples", "boom").await;
    db.pq.queue("apples").put(&1).await.unwrap();
    db.pq.queue("apples").put(&2).await.unwrap();
    db.pq
        .queue("pears")
        .put(&3)
        .schedule_at("1h")
        .await
        .unwrap();

    let table = db.pq(&["status"]).ok();
    let json = db.pq(&["status", "--json"]).json();

    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "QUEUE",
            "READY",
            "SCHEDULED",
            "RUNNING",
            "FAILED",
            "DONE",
            "CANCELLED",
            "WAITING",
            "OLDEST",
            "READY",
            "PAUSED"
        ]
    );
    let apples: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&apples[..7], ["apples", "2", "0", "0", "1", "0", "0"]);
    // Right-aligned counts end where their headers end.
    let end_of = |line: &str, word: &str| line.find(word).unwrap() + word.len();
    assert_eq!(
        end_of(lines[0], "READY"),
        lines[1].find(" 2 ").unwrap() + 2,
        "{table}"
    );
    assert!(lines[2].starts_with("pears "), "{table}");
    assert_eq!(json[0]["queue"], "apples");
    assert_eq!(json[0]["ready"], 2);
    assert_eq!(json[0]["failed"], 1);
    assert!(json[0]["oldest_ready_seconds"].is_number());
    assert_eq!(json[1]["scheduled"], 1);
    assert_eq!(json[1]["oldest_ready_seconds"], Value::Null);
}

#[tokio::test]
async fn status_of_an_empty_table_says_so() {
    let db = Db::new().await;

    assert_eq!(db.pq(&["status"]).ok(), "no jobs\n");
    assert_eq!(db.pq(&["status", "--json"]).json(), json!([]));
}

#[tokio::test]
async fn a_missing_table_is_reported_with_how_to_create_it() {
    let db = Db::without_table().await;

    let err = db.pq(&["status"]).fails();

    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("pq migrate"), "{err}");
    assert!(err.contains("--schema and --table"), "{err}");
    assert!(err.starts_with("pq: "), "{err}");
}

#[tokio::test]
async fn jobs_list_filters_and_pages_by_id() {
    let db = Db::new().await;
    let mut failed = Vec::new();
    for _ in 0..3 {
        failed.push(db.failed_job("mail", "connection refused").await);
    }
    db.pq.queue("mail").put(&1).await.unwrap();

    let first = db.pq(&["jobs", "list", "--state", "failed", "--limit", "2"]);
    let table = first.ok();
    let next = db
        .pq(&[
            "jobs",
            "list",
            "--state",
            "failed",
            "--limit",
            "2",
            "--after",
            &id(failed[1]),
            "--json",
        ])
        .json();

    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].contains("ID") && lines[0].contains("LAST ERROR"));
    assert!(lines[1].contains("mail") && lines[1].contains("failed"));
    assert!(lines[1].contains("connection refused"), "{table}");
    assert!(
        first.stderr().contains(&format!("--after {}", failed[1])),
        "{}",
        first.stderr()
    );
    assert_eq!(next["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(next["jobs"][0]["id"], failed[2].0);
    assert_eq!(next["next_after"], Value::Null);
    let ready = db
        .pq(&["jobs", "list", "--state", "ready", "--json"])
        .json();
    assert_eq!(ready["jobs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn jobs_list_refuses_an_unknown_state() {
    let db = Db::new().await;

    let err = db.pq(&["jobs", "list", "--state", "lost"]).fails();

    assert!(
        err.contains("expected one of waiting, ready, scheduled"),
        "{err}"
    );
}

#[tokio::test]
async fn jobs_show_prints_every_column_and_the_error_history() {
    let db = Db::new().await;
    let job = db.failed_job("mail", "connection refused").await;

    let shown = db.pq(&["jobs", "show", &id(job)]).ok();
    let json = db.pq(&["jobs", "show", &id(job), "--json"]).json();

    assert!(shown.contains(&format!("id:           {job}")), "{shown}");
    assert!(shown.contains("state:        failed"), "{shown}");
    assert!(
        shown.contains("last error:   connection refused"),
        "{shown}"
    );
    assert!(shown.contains("\"n\": 1"), "{shown}");
    assert!(shown.contains("attempt 1 at "), "{shown}");
    assert_eq!(json["state"], "failed");
    assert_eq!(json["attempts"], 1);
    assert_eq!(json["errors"][0]["error"], "connection refused");
}

#[tokio::test]
async fn jobs_show_prints_a_result_and_when_it_expires() {
    let db = Db::new().await;
    let job = db.pq.queue("thumbs").put(&json!({"n": 1})).await.unwrap();
    let claim = db.claim("thumbs", job).await;
    let returned = Returned {
        claim,
        result: r#"{"width":200}"#.to_owned(),
        keep: Some(Duration::from_secs(3600)),
    };
    let completed = db.pq.complete_results(&[returned]).await.unwrap();
    assert_eq!(completed, [job]);

    let shown = db.pq(&["jobs", "show", &id(job)]).ok();
    let json = db.pq(&["jobs", "show", &id(job), "--json"]).json();

    assert!(shown.contains("state:        done"), "{shown}");
    assert!(shown.contains("expires at:"), "{shown}");
    assert!(
        shown.contains("result:\n  {\n    \"width\": 200\n  }"),
        "{shown}"
    );
    assert_eq!(json["result"], json!({"width": 200}));
    assert!(json["expires_at"].is_string(), "{json}");
}

#[tokio::test]
async fn jobs_show_and_flows_show_print_parents_children_and_states() {
    let db = Db::new().await;
    let mut graph = pq::Graph::new();
    let a = graph.add(pq::NewJob::new("flows", &1).unwrap());
    let b = graph.add(pq::NewJob::new("flows", &2).unwrap());
    let c = graph.add(pq::NewJob::new("flows", &3).unwrap());
    for (parent, child) in [(a, b), (a, c), (b, c)] {
        graph.edge(pq::Edge {
            parent: pq::Parent::New(parent),
            child,
            input: pq::Input::Nothing,
            on_failure: pq::OnParentFailure::Fail,
        });
    }
    let written = db.pq.enqueue_graph(graph).await.unwrap();
    let [a, b, c] = written.jobs[..] else {
        panic!()
    };
    let claim = db.claim("flows", a).await;
    assert_eq!(db.pq.complete_claims(&[claim], true).await.unwrap(), [a]);

    let shown = db.pq(&["jobs", "show", &id(b)]).ok();
    assert!(shown.contains("state:        ready"), "{shown}");
    assert!(
        shown.contains(&format!("parents:      {a} (done)")),
        "{shown}"
    );
    assert!(shown.contains(&format!("children:     {c}\n")), "{shown}");
    assert!(
        shown.contains(&format!("workflow:     {}", written.workflow)),
        "{shown}"
    );
    let json = db.pq(&["jobs", "show", &id(c), "--json"]).json();
    assert_eq!(json["state"], "waiting");
    assert_eq!(json["parents"].as_array().unwrap().len(), 2, "{json}");
    assert_eq!(json["children"], json!([]));

    let flow = db
        .pq(&["flows", "show", &written.workflow.to_string()])
        .ok();
    let lines: Vec<Vec<&str>> = flow
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["ID", "TASK", "STATE", "AFTER", "LAST", "ERROR"],
        "{flow}"
    );
    assert_eq!(lines[1][..4], [id(a).as_str(), "-", "done", "-"], "{flow}");
    assert_eq!(lines[2][..3], [id(b).as_str(), "-", "ready"], "{flow}");
    assert_eq!(lines[3][..3], [id(c).as_str(), "-", "waiting"], "{flow}");
    assert!(
        flow.contains(&format!("{a} (done), {b} (not ended)")),
        "{flow}"
    );
    let err = db.pq(&["flows", "show", "999999"]).fails();
    assert!(err.contains("no workflow has id 999999"), "{err}");
}

#[tokio::test]
async fn an_unknown_job_id_fails_with_a_message_and_changes_nothing() {
    let db = Db::new().await;
    let known = db.failed_job("mail", "boom").await;
    let unknown = id(JobId(known.0 + 1000));

    for command in ["show", "retry", "cancel", "delete"] {
        let err = db.pq(&["jobs", command, &unknown]).fails();
        assert!(
            err.contains(&format!("no job has id {unknown}")),
            "{command}: {err}"
        );
    }
    let err = db.pq(&["jobs", "retry", &id(known), &unknown]).fails();
    assert!(err.contains("nothing was retried"), "{err}");

    assert_eq!(db.state(known).await, Some(JobState::Failed));
    assert_eq!(db.count().await, 1);
}

#[tokio::test]
async fn jobs_retry_queues_failed_jobs_again() {
    let db = Db::new().await;
    let a = db.failed_job("mail", "boom").await;
    let b = db.failed_job("mail", "boom").await;

    let out = db.pq(&["jobs", "retry", &id(a)]).ok();
    let json = db.pq(&["jobs", "retry", &id(b), "--json"]).json();

    assert_eq!(out, format!("retried job {a}\n"));
    assert_eq!(json, json!({"count": 1, "ids": [b.0]}));
    assert_eq!(db.state(a).await, Some(JobState::Ready));
    assert_eq!(db.state(b).await, Some(JobState::Ready));
}

#[tokio::test]
async fn jobs_retry_refuses_jobs_that_did_not_fail_and_changes_nothing() {
    let db = Db::new().await;
    let failed = db.failed_job("mail", "boom").await;
    let ready = db.pq.queue("mail").put(&1).await.unwrap();

    let err = db.pq(&["jobs", "retry", &id(failed), &id(ready)]).fails();

    assert!(
        err.contains(&format!(
            "job {ready} is ready: only failed jobs can be retried"
        )),
        "{err}"
    );
    assert_eq!(db.state(failed).await, Some(JobState::Failed));
}

#[tokio::test]
async fn jobs_retry_all_requeues_every_match_in_batches() {
    let db = Db::new().await;
    for _ in 0..5 {
        db.failed_job("mail", "boom").await;
    }
    let other = db.failed_job("sms", "boom").await;

    let run = db.pq(&[
        "jobs",
        "retry",
        "--all",
        "--queue",
        "mail",
        "--batch-size",
        "2",
    ]);
    let again = db.pq(&["jobs", "retry", "--all", "--json"]).json();

    assert_eq!(run.ok(), "retried 5 failed jobs\n");
    assert!(
        run.stderr().contains("retried 2 jobs so far"),
        "{}",
        run.stderr()
    );
    assert_eq!(again, json!({"count": 1}));
    assert_eq!(db.state(other).await, Some(JobState::Ready));
}

#[tokio::test]
async fn jobs_retry_needs_ids_or_all() {
    let db = Db::new().await;

    let err = db.pq(&["jobs", "retry"]).fails();

    assert!(err.contains("--all"), "{err}");
}

#[tokio::test]
async fn jobs_cancel_stops_queued_jobs_asks_the_worker_of_running_ones_and_refuses_ended_ones() {
    let db = Db::new().await;
    let running = db.pq.queue("mail").put(&1).await.unwrap();
    db.claim("mail", running).await;
    let scheduled = db.pq.queue("mail").put(&2).schedule_at("1h").await.unwrap();
    let failed = db.failed_job("sms", "boom").await;

    let err = db
        .pq(&["jobs", "cancel", &id(failed), &id(scheduled)])
        .fails();
    assert!(
        err.contains(&format!(
            "job {failed} is failed: only jobs that have not ended can be cancelled"
        )),
        "{err}"
    );
    assert_eq!(
        db.state(scheduled).await,
        Some(JobState::Scheduled),
        "nothing was cancelled"
    );

    let out = db
        .pq(&["jobs", "cancel", &id(scheduled), &id(running)])
        .ok();
    assert_eq!(
        out,
        format!(
            "cancelled job {scheduled}\n\
             cancelling job {running}: its worker stops it at its next heartbeat\n"
        )
    );
    assert_eq!(db.state(scheduled).await, Some(JobState::Cancelled));
    // The running job ends when its worker hears of the request, which waits in its row.
    assert_eq!(db.state(running).await, Some(JobState::Running));
    let asked: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT unnest(cancel) FROM \"{}\".queue_workers",
        db.schema
    ))
    .fetch_all(db.pq.pool())
    .await
    .unwrap();
    assert_eq!(asked, [running.0]);
}

#[tokio::test]
async fn jobs_cancel_all_cancels_every_matching_job_that_has_not_ended() {
    let db = Db::new().await;
    let mut mail = Vec::new();
    for n in 0..3 {
        mail.push(db.pq.queue("mail").put(&n).await.unwrap());
    }
    let scheduled = db.pq.queue("mail").put(&3).schedule_at("1h").await.unwrap();
    let running = db.pq.queue("mail").put(&4).await.unwrap();
    // The claim takes the oldest ready job of mail first: make `running` the only one.
    sqlx::query(&format!(
        "UPDATE {} SET schedule_at = now() + interval '1 day' WHERE id = ANY($1)",
        db.pq.table()
    ))
    .bind(mail.iter().map(|id| id.0).collect::<Vec<_>>())
    .execute(db.pq.pool())
    .await
    .unwrap();
    db.claim("mail", running).await;
    let failed = db.failed_job("mail", "boom").await;
    let sms = db.pq.queue("sms").put(&5).await.unwrap();

    let only_scheduled = db
        .pq(&[
            "jobs",
            "cancel",
            "--all",
            "--queue",
            "mail",
            "--state",
            "scheduled",
            "--json",
        ])
        .json();
    assert_eq!(
        only_scheduled,
        json!({"count": 4}),
        "the three tomorrow and the one in an hour"
    );
    let rest = db
        .pq(&[
            "jobs",
            "cancel",
            "--all",
            "--queue",
            "mail",
            "--batch-size",
            "1",
        ])
        .ok();

    assert_eq!(
        rest,
        "cancelled 1 jobs (running ones stop at their worker's next heartbeat)\n"
    );
    assert_eq!(db.state(scheduled).await, Some(JobState::Cancelled));
    assert_eq!(
        db.state(running).await,
        Some(JobState::Running),
        "asked of its worker"
    );
    assert_eq!(
        db.state(failed).await,
        Some(JobState::Failed),
        "it had ended"
    );
    assert_eq!(db.state(sms).await, Some(JobState::Ready), "another queue");
    let err = db.pq(&["jobs", "cancel", "--state", "running"]).fails();
    assert!(err.contains("--all"), "{err}");
    let err = db
        .pq(&["jobs", "cancel", "--all", "--state", "failed"])
        .fails();
    assert!(err.contains("have ended"), "{err}");
}

#[tokio::test]
async fn jobs_delete_removes_jobs_but_not_running_ones() {
    let db = Db::new().await;
    let running = db.pq.queue("mail").put(&1).await.unwrap();
    db.claim("mail", running).await;
    let failed = db.failed_job("sms", "boom").await;

    let err = db
        .pq(&["jobs", "delete", &id(running), &id(failed)])
        .fails();
    assert!(err.contains("a running job cannot be deleted"), "{err}");
    assert_eq!(db.count().await, 2, "nothing was deleted");

    let json = db.pq(&["jobs", "delete", &id(failed), "--json"]).json();
    assert_eq!(json, json!({"count": 1, "ids": [failed.0]}));
    assert_eq!(db.state(failed).await, None);
}

#[tokio::test]
async fn prune_deletes_jobs_that_finished_long_enough_ago() {
    let db = Db::new().await;
    let mut old = Vec::new();
    for _ in 0..3 {
        old.push(db.failed_job("mail", "boom").await);
    }
    let recent = db.failed_job("mail", "boom").await;
    sqlx::query(&format!(
        "UPDATE {} SET finished_at = now() - interval '8 days' WHERE id = ANY($1)",
        db.pq.table()
    ))
    .bind(old.iter().map(|id| id.0).collect::<Vec<_>>())
    .execute(db.pq.pool())
    .await
    .unwrap();

    let run = db.pq(&["prune", "--older-than", "7d", "--batch-size", "2"]);
    let again = db.pq(&["prune", "--older-than", "7d", "--json"]).json();

    assert_eq!(
        run.ok(),
        "pruned 3 jobs that finished more than 7days ago\n"
    );
    assert!(
        run.stderr().contains("pruned 2 jobs so far"),
        "{}",
        run.stderr()
    );
    assert_eq!(again, json!({"count": 0}));
    assert_eq!(db.state(recent).await, Some(JobState::Failed));
    assert_eq!(db.count().await, 1);
}

#[tokio::test]
async fn prune_refuses_a_malformed_age() {
    let db = Db::new().await;
    db.failed_job("mail", "boom").await;

    let err = db.pq(&["prune", "--older-than", "7x"]).fails();

    assert!(err.contains("7d, 12h or 90m"), "{err}");
    assert_eq!(db.count().await, 1);
}

#[tokio::test]
async fn enqueue_writes_a_job_of_the_task_with_its_arguments() {
    let db = Db::new().await;

    let out = db
        .pq(&["enqueue", "app::send_mail", r#"{"to": "a@example.com"}"#])
        .ok();
    let json = db
        .pq(&[
            "enqueue",
            "app::send_mail",
            "{}",
            "--queue",
            "mail",
            "--schedule-at",
            "5m",
            "--json",
        ])
        .json();

    let first = db
        .pq
        .admin()
        .list(&pq::JobFilter::new(), None, 10)
        .await
        .unwrap();
    let (now, later) = (&first.jobs[0], &first.jobs[1]);
    assert_eq!(
        out,
        format!(
            "enqueued job {}: task app::send_mail on queue default\n",
            now.id
        )
    );
    assert_eq!(now.task.as_deref(), Some("app::send_mail"));
    assert_eq!(now.data, json!({"to": "a@example.com"}));
    assert_eq!(now.state, JobState::Ready);
    assert_eq!(json["id"], later.id.0);
    assert_eq!(later.queue, "mail");
    assert_eq!(later.state, JobState::Scheduled);
}

#[tokio::test]
async fn enqueue_refuses_arguments_that_are_not_a_json_object_and_writes_nothing() {
    let db = Db::new().await;

    let malformed = db.pq(&["enqueue", "app::send_mail", "{to: a}"]).fails();
    let array = db.pq(&["enqueue", "app::send_mail", "[1, 2]"]).fails();

    assert!(malformed.contains("are not valid JSON"), "{malformed}");
    assert!(array.contains("must be a JSON object"), "{array}");
    assert_eq!(db.count().await, 0);
}

#[tokio::test]
async fn a_database_that_is_down_is_reported_quickly() {
    let started = Instant::now();

    let err = run(&[
        "--database-url",
        "postgres://postgres:secret@127.0.0.1:1/test",
        "status",
    ])
    .fails();

    assert!(
        err.contains("cannot connect to the database at postgres://postgres:***@127.0.0.1:1/test"),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn migrate_status_and_enqueue_work_over_tls_and_an_untrusted_certificate_is_refused() {
    let server = pq_pgserver::Server::start_tls_only("cli").await.unwrap();
    let verified = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        server.url(),
        server.ca_certificate().display()
    );
    let require = format!("{}?sslmode=require", server.url());
    run(&["--database-url", &require, "migrate"]).ok();
    run(&["--database-url", &verified, "enqueue", "app::mail", "{}"]).ok();
    let status = run(&["--database-url", &verified, "status"]).ok();
    assert!(status.contains("default"), "{status}");

    let untrusted = format!("{}?sslmode=verify-full", server.url());
    let err = run(&["--database-url", &untrusted, "status"]).fails();
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test]
async fn through_a_transaction_pooler_commands_work_and_migrate_asks_for_the_direct_url() {
    let db = Db::without_table().await;
    let server: sqlx::postgres::PgConnectOptions = database_url().parse().unwrap();
    let bouncer = pq_pgserver::Bouncer::start("cli", server.get_port())
        .await
        .expect("start pgbouncer (.ci/run installs it)");
    let pooled = bouncer.url(server.get_database().unwrap_or("postgres"));
    let through = |args: &[&str]| {
        db.pq(&[&["--database-url", &pooled, "--transaction-pooler"], args].concat())
    };

    let err = through(&["migrate"]).fails();
    assert!(err.contains("--direct-url"), "{err}");
    through(&["--direct-url", &database_url(), "migrate"]).ok();
    through(&["enqueue", "app::mail", "{}"]).ok();
    through(&["enqueue", "app::mail", "{}"]).ok();
    let status = through(&["status"]).ok();
    assert!(status.contains("default"), "{status}");
    let jobs = through(&["jobs", "list"]).ok();
    assert_eq!(jobs.matches("app::mail").count(), 2, "{jobs}");
}

#[tokio::test]
async fn a_missing_database_url_says_how_to_give_one() {
    let output = Command::new(env!("CARGO_BIN_EXE_pq"))
        .env_remove("DATABASE_URL")
        .arg("status")
        .output()
        .unwrap();
    let run = Run { output };

    let err = run.fails();

    assert!(
        err.contains("set DATABASE_URL or pass --database-url"),
        "{err}"
    );
}

#[tokio::test]
async fn work_in_the_standalone_tool_explains_where_it_runs() {
    let db = Db::new().await;

    let err = db.pq(&["work"]).fails();
    let help = run(&["--help"]).ok();

    assert!(err.contains("registers no task"), "{err}");
    let commands: Vec<&str> = help
        .lines()
        .filter_map(|line| line.strip_prefix("  ")?.split_whitespace().next())
        .collect();
    assert!(!commands.contains(&"work"), "{help}");
    let err = db.pq(&["work", "--lease", "soon"]).fails();
    assert!(err.contains("write a duration such as"), "{err}");
    assert!(commands.contains(&"workers"), "{help}");
    assert!(help.contains("enqueue"), "{help}");
}

#[tokio::test]
async fn an_invalid_table_name_is_refused_before_connecting() {
    let err = run(&[
        "--database-url",
        "postgres://postgres@127.0.0.1:1/test",
        "--table",
        "",
        "status",
    ])
    .fails();

    assert_eq!(err, "pq: invalid table name \"\": it is empty\n");
}

#[tokio::test]
async fn a_password_in_the_query_string_is_never_printed() {
    let out = run(&[
        "--database-url",
        "postgres://postgres@127.0.0.1:1/test?sslmode=disable&password=hunter2",
        "status",
    ])
    .fails();
    assert!(out.contains("password=***"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
}

#[tokio::test]
async fn rows_pq_cannot_read_are_reported_not_fatal() {
    let db = Db::new().await;
    let good = db.pq.queue("apples").put(&1).await.unwrap();
    let mut bad = Vec::new();
    for (column, value) in [
        ("expected_at", "'294000-01-01'"),
        ("enqueued_at", "'-infinity'"),
        ("state", "'bogus'"),
        ("errors", "'{\"not\": \"a list\"}'"),
    ] {
        let id = db.pq.queue("apples").put(&2).await.unwrap();
        sqlx::query(&format!(
            "UPDATE {} SET {column} = {value} WHERE id = $1",
            db.pq.table()
        ))
        .bind(id.0)
        .execute(db.pq.pool())
        .await
        .unwrap();
        bad.push(id);
    }

    let list = db.pq(&["jobs", "list"]);
    list.ok();
    for id in &bad {
        assert!(
            list.stderr().contains(&format!("job {id} cannot be read")),
            "{}",
            list.stderr()
        );
        let show = db.pq(&["jobs", "show", &id.to_string()]);
        assert_eq!(show.output.status.code(), Some(1), "{}", show.stderr());
        assert!(
            show.stderr().contains("cannot be read"),
            "{}",
            show.stderr()
        );
    }
    db.pq(&["status"]).ok();
    let page = db.pq(&["jobs", "list", "--json"]).json();
    assert_eq!(page["jobs"][0]["id"], json!(good.0));
    let unreadable: Vec<i64> = page["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry[0].as_i64().unwrap())
        .collect();
    assert_eq!(unreadable, bad.iter().map(|id| id.0).collect::<Vec<_>>());
}

#[tokio::test]
async fn cron_lists_pauses_resumes_triggers_and_deletes_schedules_by_name() {
    let db = Db::new().await;
    assert_eq!(db.pq(&["cron", "list"]).ok().trim(), "no schedules");
    let next = chrono::Utc::now() + chrono::Duration::days(1);
    db.pq
        .declare_schedules(&[pq::ScheduleDefinition {
            name: "nightly".into(),
            expression: "0 3 * * *".into(),
            timezone: "Europe/Berlin".into(),
            on_missed: "coalesce".into(),
            task: "app::report".into(),
            queue: "reports".into(),
            data: "{}".into(),
            next_at: next,
        }])
        .await
        .unwrap();

    let list = db.pq(&["cron", "list"]).ok();
    assert!(list.starts_with("NAME"), "{list}");
    assert!(
        list.contains("nightly") && list.contains("0 3 * * *") && list.contains("Europe/Berlin"),
        "{list}"
    );
    assert!(list.contains("active"), "{list}");
    assert_eq!(
        db.pq(&["cron", "pause", "nightly"]).ok().trim(),
        "paused nightly"
    );
    assert_eq!(
        db.pq(&["cron", "pause", "nightly"]).ok().trim(),
        "nightly was paused already"
    );
    assert!(db.pq(&["cron", "list"]).ok().contains("paused"));
    assert_eq!(
        db.pq(&["cron", "resume", "nightly"]).ok().trim(),
        "resumed nightly"
    );
    let triggered = db.pq(&["cron", "trigger", "nightly"]).ok();
    assert!(
        triggered.starts_with("triggered nightly: job "),
        "{triggered}"
    );
    let job = triggered.trim().rsplit(' ').next().unwrap().to_owned();
    let shown = db.pq(&["jobs", "show", &job]).ok();
    assert!(
        shown.contains("meta:") && shown.contains("\"schedule\": \"nightly\""),
        "{shown}"
    );
    let jobs = db.pq.admin().stats().await.unwrap();
    assert_eq!(
        jobs.iter().map(|q| q.queue.as_str()).collect::<Vec<_>>(),
        ["reports"]
    );
    let listed: Value = serde_json::from_str(&db.pq(&["--json", "cron", "list"]).ok()).unwrap();
    assert_eq!(listed[0]["name"], "nightly");
    assert_eq!(listed[0]["orphaned"], false);

    let err = db.pq(&["cron", "trigger", "weekly"]).fails();
    assert!(err.contains("no schedule is named `weekly`"), "{err}");
    assert_eq!(
        db.pq(&["cron", "delete", "nightly"]).ok().trim(),
        "deleted nightly"
    );
    let err = db.pq(&["cron", "delete", "nightly"]).fails();
    assert!(err.contains("no schedule is named `nightly`"), "{err}");
}
