//! The worker: dispatch, retries, failures, panics, leases, rescue, shutdown, transactions.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pq::{Enqueue, JobId, NewJob, Pq, TaskContext, Worker};

use crate::support::{
    burst, direct, eventually, record_run, runs_of, wait_until, Claimer, Running, TestDb,
};

#[pq::task(queue = "work")]
async fn succeed(ctx: TaskContext, expected_id: Option<i64>) -> anyhow::Result<()> {
    record_run(&ctx);
    if let Some(expected) = expected_id {
        anyhow::ensure!(ctx.job_id().0 == expected, "got someone else's id");
    }
    Ok(())
}

#[pq::task(queue = "work")]
fn tally_by_id(job_id: JobId, table: String) {
    crate::support::record_run_of(&table, job_id);
}

#[pq::task(queue = "work", max_retries = 2, retry_in = "0s")]
async fn always_fail(ctx: TaskContext) -> Result<(), String> {
    let run = record_run(&ctx);
    Err(format!("failure number {run}"))
}

#[pq::task(queue = "work", max_retries = 1, retry_in = "0s")]
async fn panic_once(ctx: TaskContext) {
    if record_run(&ctx) == 1 {
        panic!("the first run panics");
    }
}

#[pq::task(queue = "work", retry_in = "0s")]
async fn sleep_for(ctx: TaskContext, millis: u64) {
    record_run(&ctx);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

#[pq::task(queue = "work", max_retries = 1, retry_in = "0s")]
async fn write_then_fail_once(ctx: TaskContext, effects: String) -> anyhow::Result<()> {
    let run = record_run(&ctx);
    let mut tx = ctx.transaction().await?;
    sqlx::query(&format!("INSERT INTO {effects} (job, run) VALUES ($1, $2)"))
        .persistent(false)
        .bind(ctx.job_id().0)
        .bind(run as i32)
        .execute(&mut *tx)
        .await?;
    anyhow::ensure!(run > 1, "the first run fails after writing");
    Ok(())
}

async fn run_burst(pq: &Pq) {
    burst(Worker::new(pq.clone()), "work").await;
}

struct Row {
    state: String,
    attempts: i32,
    last_error: Option<String>,
    errors: Option<serde_json::Value>,
}

async fn row(pq: &Pq, id: JobId) -> Option<Row> {
    let row: Option<(String, i32, Option<String>, Option<serde_json::Value>)> =
        sqlx::query_as(&format!(
            "SELECT state, attempts, last_error, errors::text::json FROM {} WHERE id = $1",
            pq.table()
        ))
        .bind(id.0)
        .fetch_optional(&mut direct().await)
        .await
        .unwrap();
    row.map(|(state, attempts, last_error, errors)| Row {
        state,
        attempts,
        last_error,
        errors,
    })
}

#[tokio::test]
async fn a_job_runs_once_with_its_own_id_and_is_then_removed() {
    let db = TestDb::new().await;
    let id = succeed(None).enqueue(&db.pq).await.unwrap();
    sqlx::query(&format!(
        "UPDATE {} SET data = json_build_object('expected_id', id)",
        db.pq.table()
    ))
    .execute(db.pool())
    .await
    .unwrap();
    let by_id = tally_by_id(db.pq.table()).enqueue(&db.pq).await.unwrap();

    run_burst(&db.pq).await;

    assert_eq!(runs_of(&db.pq, id), 1);
    assert_eq!(runs_of(&db.pq, by_id), 1);
    assert!(row(&db.pq, id).await.is_none(), "done jobs are deleted");
}

#[tokio::test]
async fn completed_jobs_can_be_kept_in_the_done_state() {
    let db = TestDb::new().await;
    let id = succeed(None).enqueue(&db.pq).await.unwrap();
    burst(Worker::new(db.pq.clone()).keep_completed(true), "work").await;
    let row = row(&db.pq, id).await.expect("kept");
    assert_eq!(row.state, "done");
    assert_eq!(row.attempts, 1);
}

#[tokio::test]
async fn a_failing_job_is_retried_max_retries_times_then_kept_failed_with_its_errors() {
    let db = TestDb::new().await;
    let id = always_fail().enqueue(&db.pq).await.unwrap();

    run_burst(&db.pq).await;

    assert_eq!(runs_of(&db.pq, id), 3, "1 run + max_retries = 2");
    let row = row(&db.pq, id).await.expect("failed jobs are kept");
    assert_eq!(row.state, "failed");
    assert_eq!(row.attempts, 3);
    assert_eq!(row.last_error.as_deref(), Some("failure number 3"));
    let errors = row.errors.unwrap();
    let errors = errors.as_array().unwrap();
    assert_eq!(errors.len(), 3);
    for (i, error) in errors.iter().enumerate() {
        assert_eq!(error["attempt"], i + 1);
        assert_eq!(error["error"], format!("failure number {}", i + 1));
    }
}

#[tokio::test]
async fn a_failing_job_does_not_stop_the_others_and_unknown_ones_wait() {
    let db = TestDb::new().await;
    let failing = always_fail().enqueue(&db.pq).await.unwrap();
    let unknown = (&db.pq)
        .enqueue(
            NewJob::from_json("work", "{}".into())
                .unwrap()
                .task("no::such::task"),
        )
        .await
        .unwrap()
        .id();
    let plain = db.pq.queue("work").put(&"not a task").await.unwrap();
    let ok: Vec<JobId> = {
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(succeed(None).enqueue(&db.pq).await.unwrap());
        }
        ids
    };

    run_burst(&db.pq).await;

    for id in ok {
        assert_eq!(runs_of(&db.pq, id), 1);
    }
    assert_eq!(row(&db.pq, failing).await.unwrap().state, "failed");
    // A job of a task this worker does not know, or of none, waits for a worker that does:
    // during a rolling deploy, a newer (or older) binary runs it.
    for id in [unknown, plain] {
        let row = row(&db.pq, id).await.unwrap();
        assert_eq!((row.state.as_str(), row.attempts), ("queued", 0));
    }
}

#[tokio::test]
async fn arguments_that_no_longer_decode_fail_with_the_task_and_the_reason() {
    let db = TestDb::new().await;
    let id = (&db.pq)
        .enqueue(
            NewJob::from_json("work", r#"{"millis": "soon"}"#.into())
                .unwrap()
                .task(<sleep_for as pq::Task>::NAME),
        )
        .await
        .unwrap()
        .id();
    run_burst(&db.pq).await;
    let row = row(&db.pq, id).await.unwrap();
    assert_eq!(row.state, "failed");
    let error = row.last_error.unwrap();
    assert!(error.contains("sleep_for"), "{error}");
    assert!(error.contains("invalid type"), "{error}");
    assert_eq!(runs_of(&db.pq, id), 0);
}

#[tokio::test]
async fn a_panic_is_caught_recorded_and_retried() {
    let db = TestDb::new().await;
    let id = panic_once().enqueue(&db.pq).await.unwrap();
    burst(Worker::new(db.pq.clone()).keep_completed(true), "work").await;

    assert_eq!(runs_of(&db.pq, id), 2);
    let row = row(&db.pq, id).await.unwrap();
    assert_eq!(row.state, "done");
    assert_eq!(
        row.errors.unwrap()[0]["error"],
        "panicked: the first run panics"
    );
}

#[pq::task(queue = "work", max_retries = 1)]
async fn rescuable(ctx: TaskContext) {
    record_run(&ctx);
}

/// Claims every ready job of `work` like a worker that then dies: its heartbeat stops, and its
/// lease runs out.
async fn claim_and_die(pq: &Pq) {
    let mut claimer = Claimer::new(pq, &["work"]).await;
    assert!(!claimer.claim(10).await.is_empty());
    claimer.expire().await;
}

#[tokio::test]
async fn a_job_whose_worker_died_is_rescued_and_run_again_as_a_new_attempt() {
    let db = TestDb::new().await;
    let id = rescuable().enqueue(&db.pq).await.unwrap();
    claim_and_die(&db.pq).await;

    assert_eq!(db.pq.rescue(100, 3).await.unwrap(), 1);
    burst(Worker::new(db.pq.clone()).keep_completed(true), "work").await;

    assert_eq!(runs_of(&db.pq, id), 1);
    let row = row(&db.pq, id).await.unwrap();
    assert_eq!(
        (row.state.as_str(), row.attempts),
        ("done", 2),
        "the lost run counts as an attempt"
    );
    let lost = &row.errors.unwrap()[0];
    assert_eq!(lost["attempt"], 1);
    assert!(lost["error"].as_str().unwrap().contains("worker was lost"));
}

#[tokio::test]
async fn a_worker_rescues_the_jobs_of_lost_workers_by_itself() {
    let db = TestDb::new().await;
    let id = rescuable().enqueue(&db.pq).await.unwrap();
    claim_and_die(&db.pq).await;
    let worker = stop_once_started(
        &db,
        id,
        Worker::new(db.pq.clone()).lease(Duration::from_secs(2)),
    )
    .await;
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_crash_does_not_spend_the_tasks_retries() {
    let db = TestDb::new().await;
    let id = sleep_for(0).enqueue(&db.pq).await.unwrap(); // max_retries = 0
    claim_and_die(&db.pq).await;
    db.pq.rescue(100, 3).await.unwrap();

    burst(Worker::new(db.pq.clone()).keep_completed(true), "work").await;

    assert_eq!(runs_of(&db.pq, id), 1, "run again, not failed for good");
    let row = row(&db.pq, id).await.unwrap();
    assert_eq!((row.state.as_str(), row.attempts), ("done", 2));
}

#[tokio::test]
async fn a_job_that_keeps_losing_its_worker_fails_once_its_rescues_are_spent() {
    let db = TestDb::new().await;
    let id = sleep_for(0).enqueue(&db.pq).await.unwrap();
    for _ in 0..3 {
        claim_and_die(&db.pq).await;
        assert_eq!(db.pq.rescue(100, 2).await.unwrap(), 1);
    }
    let row = row(&db.pq, id).await.unwrap();
    assert_eq!((row.state.as_str(), row.attempts), ("failed", 3));
    let error = row.last_error.unwrap();
    assert!(error.contains("lost with its worker 3 times"), "{error}");
    assert_eq!(runs_of(&db.pq, id), 0);
}

#[tokio::test]
async fn a_batch_completion_finds_moved_rows_and_refuses_stale_claims() {
    let db = TestDb::new().await;
    for millis in 0..4 {
        sleep_for(millis).enqueue(&db.pq).await.unwrap();
    }
    let mut first = Claimer::new(&db.pq, &["work"]).await;
    let jobs = first.claim(4).await;
    let claims: Vec<_> = jobs.iter().filter_map(pq::Job::claim).collect();
    // Other SQL moves a row: the claim's row version is out of date.
    sqlx::query(&format!(
        "UPDATE {} SET data = data WHERE id = $1",
        db.pq.table()
    ))
    .bind(claims[1].id.0)
    .execute(db.pool())
    .await
    .unwrap();
    // A lost claim: the job is released and claimed again, so the first claim is stale.
    assert_eq!(db.pq.release(&claims[2..3]).await.unwrap(), [claims[2].id]);
    let again = Claimer::new(&db.pq, &["work"]).await.claim(4).await;
    assert_eq!(again.len(), 1);

    let mut done = db.pq.complete_claims(&claims, false).await.unwrap();
    done.sort_unstable();
    assert_eq!(done, [claims[0].id, claims[1].id, claims[3].id]);
    let lost = row(&db.pq, claims[2].id).await.unwrap();
    assert_eq!((lost.state.as_str(), lost.attempts), ("running", 1));
    // The fresh claim completes, kept as done this time, even built from its id and number
    // alone (no row version: found by id).
    let fresh = again[0].claim().unwrap();
    let fresh = pq::protocol::Claim::new(fresh.id, fresh.number);
    assert_eq!(
        db.pq.complete_claims(&[fresh], true).await.unwrap(),
        [fresh.id]
    );
    assert_eq!(row(&db.pq, fresh.id).await.unwrap().state, "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_job_keeps_its_lease_and_is_not_stolen() {
    let db = TestDb::new().await;
    // Renewals come every third of the lease; a lease of 3 s leaves a loaded machine two
    // seconds of slack before a renewal is late, and the job outlasts two leases.
    let id = sleep_for(7000).enqueue(&db.pq).await.unwrap();
    let other = db.another_handle().await;
    let lease = Duration::from_secs(3);
    let a = tokio::spawn(
        Worker::new(db.pq.clone())
            .queues(["work"])
            .lease(lease)
            .burst()
            .run(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = tokio::spawn(
        Worker::new(other)
            .queues(["work"])
            .lease(lease)
            .burst()
            .run(),
    );
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert_eq!(runs_of(&db.pq, id), 1, "never handed to the second worker");
    assert!(row(&db.pq, id).await.is_none());
}

#[tokio::test]
async fn shutdown_lets_running_jobs_finish_and_leaves_none_running() {
    let db = TestDb::new().await;
    let id = sleep_for(1000).enqueue(&db.pq).await.unwrap();
    let worker = stop_once_started(&db, id, Worker::new(db.pq.clone()).keep_completed(true)).await;
    worker.await.unwrap().unwrap();
    assert_eq!(row(&db.pq, id).await.unwrap().state, "done");
}

#[tokio::test]
async fn jobs_still_running_after_the_grace_period_return_to_the_queue() {
    let db = TestDb::new().await;
    let id = sleep_for(60_000).enqueue(&db.pq).await.unwrap();
    let worker = stop_once_started(
        &db,
        id,
        Worker::new(db.pq.clone()).grace_period(Duration::from_millis(200)),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(20), worker)
        .await
        .expect("stops after the grace period")
        .unwrap()
        .unwrap();
    let row = row(&db.pq, id).await.unwrap();
    assert_eq!((row.state.as_str(), row.attempts), ("queued", 0));
}

#[tokio::test]
async fn a_transactional_handlers_writes_happen_once_and_not_for_failed_attempts() {
    let db = TestDb::new().await;
    let effects = format!("\"{}\".effects", db.schema);
    sqlx::raw_sql(&format!("CREATE TABLE {effects} (job bigint, run int)"))
        .execute(db.pool())
        .await
        .unwrap();
    let id = write_then_fail_once(effects.clone())
        .enqueue(&db.pq)
        .await
        .unwrap();

    run_burst(&db.pq).await;

    assert_eq!(runs_of(&db.pq, id), 2);
    let written: Vec<(i64, i32)> = sqlx::query_as(&format!("SELECT job, run FROM {effects}"))
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(
        written,
        [(id.0, 2)],
        "the failed first run's write was rolled back"
    );
    assert!(row(&db.pq, id).await.is_none(), "completed with the write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_workers_over_one_queue_run_every_job_exactly_once() {
    let db = TestDb::new().await;
    let table = db.pq.table();
    let calls: Vec<_> = (0..2000).map(|_| tally_by_id(table.clone())).collect();
    let mut ids = Vec::new();
    for call in calls {
        ids.push(call.enqueue(&db.pq).await.unwrap());
    }
    let mut workers = Vec::new();
    for _ in 0..4 {
        let pq = db.another_handle().await;
        workers.push(tokio::spawn(
            Worker::new(pq)
                .queues(["work"])
                .concurrency(8)
                .burst()
                .run(),
        ));
    }
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
    for id in ids {
        assert_eq!(runs_of(&db.pq, id), 1, "job {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_of_short_jobs_completes_every_one() {
    let db = TestDb::new().await;
    sqlx::query(&format!(
        "INSERT INTO {} (q_name, task, data) \
         SELECT 'work', $1, '{{\"expected_id\": null}}' FROM generate_series(1, 20000)",
        db.pq.table()
    ))
    .bind(<succeed as pq::Task>::NAME)
    .execute(db.pool())
    .await
    .unwrap();
    // Short jobs end as soon as they start, and their completions follow at once. A job that
    // started before its claim committed would have its completion refused, and stay in the
    // table, as they did while claims handed out their rows as they arrived.
    burst(Worker::new(db.pq.clone()).concurrency(1000), "work").await;
    let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", db.pq.table()))
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(left, 0, "every job completed and deleted");
}

/// Jobs running now and the most ever running at once, per table.
fn running() -> &'static Mutex<HashMap<String, (u32, u32)>> {
    static RUNNING: OnceLock<Mutex<HashMap<String, (u32, u32)>>> = OnceLock::new();
    RUNNING.get_or_init(Mutex::default)
}

fn enter(ctx: &TaskContext) {
    let mut running = running().lock().unwrap();
    let (now, most) = running.entry(ctx.pq().table()).or_default();
    *now += 1;
    *most = (*most).max(*now);
}

fn leave(ctx: &TaskContext) {
    running()
        .lock()
        .unwrap()
        .get_mut(&ctx.pq().table())
        .unwrap()
        .0 -= 1;
}

#[pq::task(queue = "work")]
async fn count_running(ctx: TaskContext) {
    enter(&ctx);
    tokio::time::sleep(Duration::from_millis(3)).await;
    leave(&ctx);
}

/// Blocks its thread without awaiting, as a handler that should use `spawn_blocking` does.
#[pq::task(queue = "work")]
async fn hog_the_thread(ctx: TaskContext) {
    enter(&ctx);
    std::thread::sleep(Duration::from_millis(300));
    leave(&ctx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_never_runs_more_jobs_at_once_than_the_concurrency() {
    let db = TestDb::new().await;
    let calls: Vec<_> = (0..300).map(|_| count_running()).collect();
    for call in calls {
        call.enqueue(&db.pq).await.unwrap();
    }
    // During a backlog a second claimer feeds the same slots.
    burst(Worker::new(db.pq.clone()).concurrency(6), "work").await;
    let (now, most) = running().lock().unwrap()[&db.pq.table()];
    assert_eq!(now, 0);
    assert!(
        (2..=6).contains(&most),
        "at most 6 at once, and more than 1: {most}"
    );
    assert_eq!(db.pq.queue("work").len().await.unwrap(), 0);
}

#[pq::task(queue = "prefetched")]
async fn nap(ctx: TaskContext) {
    enter(&ctx);
    tokio::time::sleep(Duration::from_secs(4)).await;
    leave(&ctx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_jobs_wait_for_a_slot_and_go_back_at_once_when_the_worker_stops() {
    let db = TestDb::new().await;
    let calls: pq::TaskBatch = (0..10).map(|_| nap()).collect();
    calls.enqueue(&db.pq).await.unwrap();
    let states = || async {
        sqlx::query_as::<_, (String, i64)>(&format!(
            "SELECT state::text, count(*) FROM {} GROUP BY 1 ORDER BY 1",
            db.pq.table()
        ))
        .fetch_all(db.pool())
        .await
        .unwrap()
    };
    let worker = Running::start(
        Worker::new(db.pq.clone())
            .queues(["prefetched"])
            .concurrency(2)
            .prefetch(3),
    );
    // Two run; three more are claimed and wait for a slot.
    eventually(|| async {
        states().await == [("queued".to_owned(), 5), ("running".to_owned(), 5)]
    })
    .await;
    let stopping = worker.stop();
    // The three waiting go back at once, while the two running finish within the grace period.
    eventually(|| async {
        states().await == [("queued".to_owned(), 8), ("running".to_owned(), 2)]
    })
    .await;
    assert!(
        !stopping.is_finished(),
        "the running jobs have not finished yet"
    );
    stopping.await.unwrap().unwrap();
    assert_eq!(states().await, [("queued".to_owned(), 8)]);
    let (now, most) = running().lock().unwrap()[&db.pq.table()];
    assert_eq!(
        (now, most),
        (0, 2),
        "never more than the concurrency at once"
    );
}

#[pq::task(queue = "prefetched")]
async fn noted(ctx: TaskContext) {
    record_run(&ctx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_job_cancelled_while_it_waits_never_runs() {
    let db = TestDb::new().await;
    nap().enqueue(&db.pq).await.unwrap();
    let waiting = noted().enqueue(&db.pq).await.unwrap();
    let worker = Running::start(
        Worker::new(db.pq.clone())
            .queues(["prefetched"])
            .concurrency(1)
            .prefetch(1)
            .lease(Duration::from_millis(900)),
    );
    eventually(|| async { db.state_of(waiting).await.as_deref() == Some("running") }).await;
    assert!(db.pq.admin().cancel(waiting).await.unwrap());
    eventually(|| async { db.state_of(waiting).await.as_deref() == Some("cancelled") }).await;
    worker.stop().await.unwrap().unwrap();
    assert_eq!(runs_of(&db.pq, waiting), 0);
    let job = db.pq.admin().job(waiting).await.unwrap().unwrap();
    assert_eq!(job.last_error.as_deref(), Some("cancelled before it ran"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_handler_that_blocks_its_thread_does_not_hold_back_the_rest_of_its_claim() {
    let db = TestDb::new().await;
    for _ in 0..4 {
        hog_the_thread().enqueue(&db.pq).await.unwrap();
    }
    // One claim takes all four. It polls the first job itself, which blocks it for 300 ms;
    // the other three then go to tasks of their own, and other threads run them at once.
    burst(Worker::new(db.pq.clone()).concurrency(4), "work").await;
    let (now, most) = running().lock().unwrap()[&db.pq.table()];
    assert_eq!(now, 0);
    assert!(
        most >= 2,
        "the jobs ran one after another: {most} at most at once"
    );
}

/// Arguments whose decoding panics, as a hand-written `Deserialize` may.
#[derive(serde::Serialize)]
struct Explosive;

impl<'de> serde::Deserialize<'de> for Explosive {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("the arguments explode")
    }
}

#[pq::task(queue = "work")]
async fn explode(_arguments: Explosive) {}

#[tokio::test]
async fn arguments_whose_decoding_panics_fail_the_job_for_good() {
    let db = TestDb::new().await;
    let id = explode(Explosive).enqueue(&db.pq).await.unwrap();
    run_burst(&db.pq).await;
    let row = row(&db.pq, id).await.unwrap();
    assert_eq!(row.state, "failed");
    assert_eq!(
        row.last_error.as_deref(),
        Some("panicked decoding its arguments: the arguments explode")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_a_backlog_leaves_every_job_done_or_queued() {
    let db = TestDb::new().await;
    let calls: Vec<_> = (0..400).map(|_| sleep_for(20)).collect();
    let mut ids = Vec::new();
    for call in calls {
        ids.push(call.enqueue(&db.pq).await.unwrap());
    }
    let worker = stop_once_started(&db, ids[40], Worker::new(db.pq.clone()).concurrency(16)).await;
    tokio::time::timeout(Duration::from_secs(20), worker)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
    let states: Vec<(String, i32, i64)> = sqlx::query_as(&format!(
        "SELECT state, attempts, count(*) FROM {} GROUP BY 1, 2",
        db.pq.table()
    ))
    .fetch_all(db.pool())
    .await
    .unwrap();
    let left: i64 = states.iter().map(|(_, _, n)| n).sum();
    assert!(left > 0 && left < 400, "stopped mid-backlog: {states:?}");
    assert_eq!(
        states
            .iter()
            .map(|(s, a, _)| (s.as_str(), *a))
            .collect::<Vec<_>>(),
        [("queued", 0)],
        "nothing left running or counted"
    );
    for id in ids {
        assert!(runs_of(&db.pq, id) <= 1, "job {id} ran twice");
    }
}

#[tokio::test]
async fn a_worker_without_queues_or_tasks_says_so() {
    let db = TestDb::new().await;
    let err = Worker::new(db.pq.clone())
        .registry(pq::Registry::default())
        .run()
        .await
        .unwrap_err();
    assert!(matches!(err, pq::WorkerError::NoQueues), "{err}");
}

/// Runs `worker` on queue `work` until job `id` has started, then signals it to shut down;
/// returns its task, to await its return.
async fn stop_once_started(
    db: &TestDb,
    id: JobId,
    worker: Worker,
) -> tokio::task::JoinHandle<Result<pq::Report, pq::WorkerError>> {
    let worker = Running::start(worker.queues(["work"]));
    wait_until(|| runs_of(&db.pq, id) == 1).await;
    worker.stop()
}

#[pq::task(queue = "failing")]
async fn fail_at_once() -> Result<(), String> {
    Err("no".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_failing_jobs_hold_no_more_than_the_slots_and_one_round_of_outcomes() {
    let db = TestDb::new().await;
    sqlx::query(&format!(
        "INSERT INTO {} (q_name, task, data) SELECT 'failing', $1, '{{}}' \
         FROM generate_series(1, 3000)",
        db.pq.table()
    ))
    .bind(<fail_at_once as pq::Task>::NAME)
    .execute(db.pool())
    .await
    .unwrap();
    // Each failure takes the server 2 ms to record, so that the worker's claims outrun its
    // outcomes: only its leases stop it claiming.
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION \"{schema}\".slowly() RETURNS trigger LANGUAGE plpgsql \
           AS $$ BEGIN PERFORM pg_sleep(0.002); RETURN NEW; END $$; \
         CREATE TRIGGER slow_failures BEFORE UPDATE ON {table} FOR EACH ROW \
           WHEN (NEW.state = 'failed') EXECUTE FUNCTION \"{schema}\".slowly()",
        schema = db.schema,
        table = db.pq.table()
    ))
    .execute(db.pool())
    .await
    .unwrap();
    let (concurrency, prefetch) = (4, 4);
    let worker = tokio::spawn(burst(
        Worker::new(db.pq.clone())
            .concurrency(concurrency)
            .prefetch(prefetch),
        "failing",
    ));
    let mut most = 0;
    while !worker.is_finished() {
        let running: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {} WHERE state = 'running'",
            db.pq.table()
        ))
        .fetch_one(db.pool())
        .await
        .unwrap();
        most = most.max(running);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    worker.await.unwrap();
    // Claimed jobs hold a lease until their outcome is recorded, however fast they fail: at
    // most the concurrency's slots, the prefetched, and one round of outcomes on the way.
    let bound = (concurrency + prefetch + pq::RECORDING) as i64;
    assert!(most <= bound, "{most} jobs leased at once");
    let failed: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {} WHERE state = 'failed'",
        db.pq.table()
    ))
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(failed, 3000);
}

/// Writes a row its transaction's commit refuses: a deferred unique constraint.
#[pq::task(queue = "commit", max_retries = 1, retry_in = "1h")]
async fn commit_refused(ctx: TaskContext, table: String) -> anyhow::Result<()> {
    record_run(&ctx);
    let mut tx = ctx.transaction().await?;
    sqlx::query(&format!("INSERT INTO {table} VALUES (1), (1)"))
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_refused_commit_follows_the_retry_policy_with_the_commits_own_error() {
    let db = TestDb::new().await;
    let table = format!("\"{}\".once", db.schema);
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (n int, CONSTRAINT once_unique UNIQUE (n) DEFERRABLE INITIALLY DEFERRED)"
    ))
    .execute(db.pool())
    .await
    .unwrap();
    let id = commit_refused(table).enqueue(&db.pq).await.unwrap();
    burst(Worker::new(db.pq.clone()), "commit").await;
    assert_eq!(runs_of(&db.pq, id), 1, "the retry waits its hour");
    let (state, attempts, error, delay): (String, i32, String, f64) = sqlx::query_as(&format!(
        "SELECT state, attempts, last_error, \
           extract(epoch FROM schedule_at - now())::float8 FROM {} WHERE id = $1",
        db.pq.table()
    ))
    .bind(id.0)
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!((state.as_str(), attempts), ("queued", 1));
    assert!(delay > 3000.0, "retried in {delay} s, not in an hour");
    assert!(error.contains("once_unique"), "{error}");
}
