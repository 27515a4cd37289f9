//! Futures dropped half-way and servers that hang: a `get` whose future is dropped, a worker's
//! `run()` dropped mid-drain, a handler past its timeout, a shutdown while the database is away,
//! and statements against a server that stopped answering.

use std::time::{Duration, Instant};

use pq::{Pq, TaskContext, Worker};

use crate::proxy::Proxy;
use crate::support::{direct, eventually, record_run, runs_of, wait_until, Running, TestDb};

async fn states(pq: &Pq) -> Vec<(String, i64)> {
    sqlx::query_as(&format!(
        "SELECT state, count(*) FROM {} GROUP BY state ORDER BY state",
        pq.table()
    ))
    .fetch_all(&mut direct().await)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_future_is_dropped_loses_no_job() {
    let db = TestDb::new().await;
    // Large jobs, so that a get spends a while receiving its row after the server took it; their
    // puts may take longer than the default bound under a loaded test run.
    let pq = crate::support::builder()
        .schema(&db.schema)
        .statement_timeout(Duration::from_secs(60))
        .connect(&crate::support::handle_url())
        .await
        .unwrap();
    let queue = pq.queue("dropped");
    let payload = "x".repeat(4 << 20);
    let jobs = 24;
    for _ in 0..jobs {
        queue.put(&payload).await.unwrap();
    }
    let mut received = 0;
    for attempt in 0..jobs * 4 {
        let budget = Duration::from_micros(200 * (attempt % 24 + 1));
        if let Ok(Ok(Some(_))) = tokio::time::timeout(budget, queue.try_get()).await {
            received += 1;
        }
    }
    // Whatever a dropped get had taken is back, or was received: none is left taken.
    let mut left = 0;
    for _ in 0..50 {
        left = queue.len().await.unwrap();
        if received + left == jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        received + left,
        jobs,
        "every job was received or is ready again: {:?}",
        states(&db.pq).await
    );
}

#[pq::task(queue = "dropping", retry_in = "0s")]
async fn long_nap(ctx: TaskContext) {
    record_run(&ctx);
    tokio::time::sleep(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_worker_future_leaves_no_job_running_and_nothing_behind() {
    let db = TestDb::new().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(long_nap().enqueue(&db.pq).await.unwrap());
    }
    let run = Worker::new(db.pq.clone())
        .queues(["dropping"])
        .lease(Duration::from_secs(1))
        .run();
    // Dropped, as a `select!` or a timeout around it would.
    let _ = tokio::time::timeout(Duration::from_millis(1500), run).await;
    assert!(ids.iter().all(|id| runs_of(&db.pq, *id) == 1));
    // Nothing of the worker carries on: its jobs are queued again, not kept running by a
    // heartbeat or renewer that outlived it.
    let mut left = Vec::new();
    for _ in 0..50 {
        left = states(&db.pq).await;
        if left == [("queued".to_owned(), 4)] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, [("queued".to_owned(), 4)]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(states(&db.pq).await, [("queued".to_owned(), 4)]);
}

#[pq::task(queue = "dropped-done")]
async fn nap_then_finish(ctx: TaskContext) {
    record_run(&ctx);
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_worker_future_records_the_jobs_that_finished() {
    let db = TestDb::new().await;
    let proxy = Proxy::start().await;
    let pq = db.handle_at(&proxy.url()).await;
    let id = nap_then_finish().enqueue(&db.pq).await.unwrap();
    let run = tokio::spawn(Worker::new(pq).queues(["dropped-done"]).run());
    wait_until(|| runs_of(&db.pq, id) == 1).await;
    // The run ends while the server hangs, so its completion goes unanswered; then the
    // connection breaks, and the future is dropped while the completion waits to be retried.
    proxy.freeze();
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.cut();
    run.abort();
    let _ = run.await;
    proxy.thaw();
    // Recorded, not given back to the queue to run again.
    eventually(|| async { db.state_of(id).await.is_none() }).await;
    assert_eq!(runs_of(&db.pq, id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_against_a_hung_server_fails_fast() {
    let db = TestDb::new().await;
    let proxy = Proxy::start().await;
    let pq = db.handle_at(&proxy.url()).await;
    long_nap().enqueue(&pq).await.unwrap();
    proxy.freeze();
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), long_nap().enqueue(&pq)).await;
    let error = result
        .expect("an enqueue does not wait on a hung server")
        .unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    proxy.thaw();
}

#[pq::task(queue = "away")]
async fn quick(ctx: TaskContext) {
    record_run(&ctx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_while_the_database_hangs_ends_within_its_bounds() {
    let db = TestDb::new().await;
    let proxy = Proxy::start().await;
    let pq = db.handle_at(&proxy.url()).await;
    let id = quick().enqueue(&pq).await.unwrap();
    let worker = Running::start(
        Worker::new(pq)
            .queues(["away"])
            .grace_period(Duration::from_secs(1)),
    );
    wait_until(|| runs_of(&db.pq, id) == 1).await;
    // The job ran; its completion and everything after meet a server that no longer answers.
    proxy.freeze();
    let worker = worker.stop();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(40), worker)
        .await
        .expect("shutdown ends although the database hangs")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    proxy.thaw();
}

/// Records its start, sleeps far longer than its timeout in its transaction, then writes.
#[pq::task(queue = "limited", timeout = "1s", max_retries = 1, retry_in = "1h")]
async fn overruns(ctx: TaskContext, effects: String) -> anyhow::Result<()> {
    record_run(&ctx);
    let mut tx = ctx.transaction().await?;
    sqlx::query(&format!("INSERT INTO {effects} VALUES ($1)"))
        .persistent(false)
        .bind(ctx.job_id().0)
        .execute(&mut *tx)
        .await?;
    drop(tx);
    tokio::time::sleep(Duration::from_secs(30)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_timeout_is_stopped_rolled_back_and_retried_by_its_policy() {
    let db = TestDb::new().await;
    let effects = format!("\"{}\".effects", db.schema);
    sqlx::raw_sql(&format!("CREATE TABLE {effects} (job bigint)"))
        .execute(db.pool())
        .await
        .unwrap();
    let by_attribute = overruns(effects.clone()).enqueue(&db.pq).await.unwrap();
    // A call's own timeout wins over the attribute's.
    let by_call = overruns(effects.clone())
        .timeout("2s")
        .enqueue(&db.pq)
        .await
        .unwrap();
    let started = Instant::now();
    crate::support::burst(Worker::new(db.pq.clone()), "limited").await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    for (id, limit) in [(by_attribute, "1s"), (by_call, "2s")] {
        assert_eq!(runs_of(&db.pq, id), 1);
        let (state, error): (String, String) = sqlx::query_as(&format!(
            "SELECT state, last_error FROM {} WHERE id = $1",
            db.pq.table()
        ))
        .bind(id.0)
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(state, "queued", "retried in an hour, as its policy says");
        assert!(
            error.contains(&format!("timed out after {limit}")),
            "{error}"
        );
    }
    let written: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {effects}"))
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(
        written, 0,
        "the stopped runs' transactions were rolled back"
    );
}
