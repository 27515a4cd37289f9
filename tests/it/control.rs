//! Control over running work: cancelling a job while it runs, cooperatively or by aborting it,
//! and pausing a queue.

use std::time::Duration;

use pq::{JobState, Pq, TaskContext, Worker};

use crate::support::{database_url, direct, eventually, record_run, runs_of, Running, TestDb};

/// Writes in its transaction, then waits to be cancelled.
#[pq::task(queue = "control", max_retries = 3, retry_in = "0s")]
async fn until_cancelled(ctx: TaskContext, effects: String) -> anyhow::Result<()> {
    record_run(&ctx);
    let mut tx = ctx.transaction().await?;
    sqlx::query(&format!("INSERT INTO {effects} (job) VALUES ($1)"))
        .persistent(false)
        .bind(ctx.job_id().0)
        .execute(&mut *tx)
        .await?;
    drop(tx);
    assert!(!ctx.is_cancelled());
    ctx.cancelled().await;
    assert!(ctx.is_cancelled());
    Ok(()) // it ends cancelled all the same
}

/// Writes in its transaction, then sleeps, deaf to cancellation.
#[pq::task(
    queue = "control",
    max_retries = 3,
    retry_in = "0s",
    on_cancel = "abort"
)]
async fn sleep_through(ctx: TaskContext, effects: String) -> anyhow::Result<()> {
    record_run(&ctx);
    let mut tx = ctx.transaction().await?;
    sqlx::query(&format!("INSERT INTO {effects} (job) VALUES ($1)"))
        .persistent(false)
        .bind(ctx.job_id().0)
        .execute(&mut *tx)
        .await?;
    drop(tx);
    tokio::time::sleep(Duration::from_secs(600)).await;
    Ok(())
}

#[pq::task(queue = "control")]
async fn quick(ctx: TaskContext) {
    record_run(&ctx);
}

async fn effects_table(db: &TestDb) -> String {
    let effects = format!("\"{}\".effects", db.schema);
    sqlx::raw_sql(&format!("CREATE TABLE {effects} (job bigint)"))
        .execute(db.pool())
        .await
        .unwrap();
    effects
}

async fn written(effects: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {effects}"))
        .fetch_one(&mut direct().await)
        .await
        .unwrap()
}

/// A worker of one slot whose heartbeat comes every half second, on a handle of its own named
/// `name` in `pg_stat_activity`.
async fn worker(db: &TestDb, name: &str) -> Running {
    let pq = db
        .handle_at(&format!("{}?application_name={name}", database_url()))
        .await;
    Running::start(
        Worker::new(pq)
            .queues(["control"])
            .concurrency(1)
            .lease(Duration::from_millis(1500))
            .poll_interval(Duration::from_millis(100)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_is_told_ends_cancelled_and_keeps_none_of_its_writes() {
    let db = TestDb::new().await;
    let effects = effects_table(&db).await;
    let name = format!("control-{}", std::process::id());
    let worker = worker(&db, &name).await;
    let id = until_cancelled(effects.clone())
        .enqueue(&db.pq)
        .await
        .unwrap();
    eventually(|| async { db.state_of(id).await.as_deref() == Some("running") }).await;
    // The request does not need the worker's notifications: its LISTEN connection is gone.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND query ILIKE 'LISTEN%'",
    )
    .bind(&name)
    .execute(db.pool())
    .await
    .unwrap();

    assert!(db.pq.admin().cancel(id).await.unwrap());
    eventually(|| async { db.state_of(id).await.as_deref() == Some("cancelled") }).await;

    let job = db.pq.admin().job(id).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Cancelled, 1));
    assert_eq!(job.last_error.as_deref(), Some("cancelled while it ran"));
    assert!(job.finished_at.is_some());
    assert_eq!(written(&effects).await, 0, "its transaction rolled back");
    assert_eq!(runs_of(&db.pq, id), 1, "not retried (max_retries = 3)");
    assert!(
        !db.pq.admin().cancel(id).await.unwrap(),
        "a cancelled job cannot be cancelled again"
    );
    worker.stop().await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborting_run_is_stopped_at_once_and_frees_its_slot() {
    let db = TestDb::new().await;
    let effects = effects_table(&db).await;
    let worker = worker(&db, "control-abort").await;
    let id = sleep_through(effects.clone())
        .enqueue(&db.pq)
        .await
        .unwrap();
    eventually(|| async { db.state_of(id).await.as_deref() == Some("running") }).await;
    let next = quick().enqueue(&db.pq).await.unwrap();

    assert!(db.pq.admin().cancel(id).await.unwrap());
    eventually(|| async { db.state_of(id).await.as_deref() == Some("cancelled") }).await;
    // The worker's one slot was the sleeping run's: it is free once that run was dropped.
    eventually(|| async { db.state_of(next).await.is_none() }).await;

    assert_eq!(written(&effects).await, 0, "its transaction rolled back");
    assert_eq!((runs_of(&db.pq, id), runs_of(&db.pq, next)), (1, 1));
    worker.stop().await.unwrap().unwrap();
}

#[tokio::test]
async fn cancelling_a_job_that_ended_or_never_was_changes_nothing() {
    let db = TestDb::new().await;
    let admin = db.pq.admin();
    let done = quick().enqueue(&db.pq).await.unwrap();
    crate::support::burst(Worker::new(db.pq.clone()).keep_completed(true), "control").await;

    assert!(!admin.cancel(done).await.unwrap());
    assert!(!admin.cancel(pq::JobId(i64::MAX)).await.unwrap());
    assert_eq!(db.state_of(done).await.as_deref(), Some("done"));
}

#[pq::task(queue = "pausable")]
async fn tick(ctx: TaskContext) {
    record_run(&ctx);
}

async fn queued(pq: &Pq) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {} WHERE state = 'queued'",
        pq.table()
    ))
    .fetch_one(&mut direct().await)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_pause_returns_no_worker_takes_a_job_of_the_queue_until_it_resumes() {
    let db = TestDb::new().await;
    sqlx::query(&format!(
        "INSERT INTO {} (q_name, task, data) \
         SELECT 'pausable', 'it::control::tick', '{{}}' FROM generate_series(1, 10000)",
        db.pq.table()
    ))
    .execute(db.pool())
    .await
    .unwrap();
    // Three workers claiming as fast as they can, small claims back to back: a pause that did
    // not wait for the claims under way would see one of them commit after it returned.
    let workers: Vec<Running> = (0..3)
        .map(|_| {
            Running::start(
                Worker::new(db.pq.clone())
                    .queues(["pausable"])
                    .concurrency(2),
            )
        })
        .collect();
    // Each round is a chance for a claim to be under way as the pause commits.
    for round in 0..5 {
        let before = queued(&db.pq).await;
        eventually(|| async { queued(&db.pq).await < before - 100 }).await;
        assert!(db.pq.admin().pause("pausable").await.unwrap());
        let left = queued(&db.pq).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            queued(&db.pq).await,
            left,
            "round {round}: a job was taken after the pause"
        );
        assert!(db.pq.admin().stats().await.unwrap()[0].paused);
        assert!(db.pq.admin().resume("pausable").await.unwrap());
    }
    // Puts go on while paused.
    db.pq.admin().pause("pausable").await.unwrap();
    let left = queued(&db.pq).await;
    tick().enqueue(&db.pq).await.unwrap();
    assert_eq!(queued(&db.pq).await, left + 1);
    assert!(db.pq.admin().resume("pausable").await.unwrap());
    eventually(|| async { queued(&db.pq).await == 0 }).await;
    for worker in workers {
        worker.stop().await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn pausing_a_queue_with_a_name_no_queue_may_have_is_an_error() {
    let db = TestDb::new().await;
    let error = db.pq.admin().pause("").await.unwrap_err();
    assert!(
        matches!(error, pq::Error::InvalidQueueName { .. }),
        "{error}"
    );
    assert!(!db.pq.admin().resume("never-paused").await.unwrap());
}

#[tokio::test]
async fn a_dead_worker_shows_as_not_alive_then_ages_out_of_the_list() {
    let db = TestDb::new().await;
    let lapsed = crate::support::Claimer::new(&db.pq, &["control"]).await;
    let dead = crate::support::Claimer::new(&db.pq, &["control"]).await;
    let workers = crate::support::derived(&db.pq, "workers");
    for (worker, ago) in [(lapsed.worker, "30 seconds"), (dead.worker, "2 minutes")] {
        sqlx::query(&format!(
            "UPDATE {workers} SET expires_at = now() - interval '{ago}' WHERE id = $1"
        ))
        .bind(worker.0)
        .execute(db.pool())
        .await
        .unwrap();
    }

    db.pq.rescue(100, 3).await.unwrap(); // what every live worker runs every half lease

    let listed = db.pq.admin().workers().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0].id, listed[0].alive), (lapsed.worker, false));
}

/// Sleeps, never looking at its cancellation, then succeeds.
#[pq::task(queue = "control")]
async fn sleep_deaf(ctx: TaskContext, millis: u64) {
    record_run(&ctx);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_succeeds_without_looking_completes_and_one_cut_short_stays_cancelled() {
    let db = TestDb::new().await;
    let worker = Running::start(
        Worker::new(db.pq.clone())
            .queues(["control"])
            .concurrency(2)
            .lease(Duration::from_millis(1500))
            .grace_period(Duration::from_millis(200))
            .poll_interval(Duration::from_millis(100)),
    );
    let finishes = sleep_deaf(2500).enqueue(&db.pq).await.unwrap();
    let outlasts = sleep_deaf(600_000).enqueue(&db.pq).await.unwrap();
    for id in [finishes, outlasts] {
        eventually(|| async { db.state_of(id).await.as_deref() == Some("running") }).await;
        assert!(db.pq.admin().cancel(id).await.unwrap());
    }
    // It never looked: it ends as it would have.
    eventually(|| async { db.state_of(finishes).await.is_none() }).await;
    // Heard of at the worker's heartbeats (every half second); then the shutdown cuts the
    // other short: asked to cancel, it is not given back to run again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.stop().await.unwrap().unwrap();
    assert_eq!(db.state_of(outlasts).await.as_deref(), Some("cancelled"));
    assert_eq!(runs_of(&db.pq, outlasts), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_meets_a_claim_under_way_asks_the_claiming_worker() {
    let db = TestDb::new().await;
    let id = quick().enqueue(&db.pq).await.unwrap();
    let claimer = crate::support::Claimer::new(&db.pq, &["control"]).await;
    // A claim held open: it has the job's row locked, and has not committed.
    let mut claim = db.pool().begin().await.unwrap();
    let claimed: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT id FROM {}($1, ARRAY['control'], 1, ARRAY[NULL]::timestamptz[], \
           ARRAY[NULL]::timestamptz[], ARRAY[NULL]::int8[])",
        crate::support::derived(&db.pq, "claim")
    ))
    .bind(claimer.worker.0)
    .fetch_all(&mut *claim)
    .await
    .unwrap();
    assert_eq!(claimed, [id.0]);
    let cancel = tokio::spawn({
        let pq = db.pq.clone();
        async move { pq.admin().cancel(id).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!cancel.is_finished(), "the cancel waits for the claim");
    claim.commit().await.unwrap();

    assert!(
        cancel.await.unwrap(),
        "the job is now running: its worker is asked"
    );
    let asked: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT unnest(cancel) FROM {} WHERE id = $1",
        crate::support::derived(&db.pq, "workers")
    ))
    .bind(claimer.worker.0)
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(asked, [id.0]);
}
