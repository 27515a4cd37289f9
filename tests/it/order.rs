//! The order jobs come out in: jobs with an `expected_at` first, earliest first; then the rest;
//! within each, the job that became ready first (a scheduled job when it fell due, a retry when
//! its delay ran out, any other job when it was enqueued). Scheduled jobs stay invisible until
//! due.

use std::sync::Mutex;

use pq::{JobId, Pq, TaskContext, Worker};

use crate::support::{burst, TestDb};

/// The jobs in the order they ran, per table.
static RAN: Mutex<Vec<(String, i64)>> = Mutex::new(Vec::new());

#[pq::task(queue = "order")]
async fn in_turn(ctx: TaskContext) {
    RAN.lock().unwrap().push((ctx.pq().table(), ctx.job_id().0));
}

fn ran(pq: &Pq) -> Vec<JobId> {
    let table = pq.table();
    let ran = RAN.lock().unwrap();
    ran.iter()
        .filter(|(t, _)| *t == table)
        .map(|(_, id)| JobId(*id))
        .collect()
}

/// Moves a job's times, as a retry, a delay or an old enqueue would have set them.
async fn set_times(pq: &Pq, id: JobId, enqueued: &str, scheduled: &str) {
    sqlx::query(&format!(
        "UPDATE {} SET enqueued_at = now() - $2::interval, schedule_at = now() - $3::interval \
         WHERE id = $1",
        pq.table()
    ))
    .bind(id.0)
    .bind(enqueued)
    .bind(scheduled)
    .execute(pq.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn a_job_that_fell_due_an_hour_ago_runs_before_jobs_enqueued_since() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let mut later = Vec::new();
    for _ in 0..30 {
        later.push(in_turn().enqueue(pq).await.unwrap());
    }
    // A retry: enqueued two hours ago, due again since an hour ago.
    let retry = in_turn().enqueue(pq).await.unwrap();
    set_times(pq, retry, "2 hours", "1 hour").await;
    // A job enqueued a minute ago.
    let older = in_turn().enqueue(pq).await.unwrap();
    set_times(pq, older, "1 minute", "100 years").await;
    // Not due yet: it must not run at all.
    let future = in_turn().schedule_at("1h").enqueue(pq).await.unwrap();

    burst(Worker::new(pq.clone()).concurrency(1), "order").await;

    let order = ran(pq);
    assert_eq!(order.len(), 32, "{order:?}");
    assert_eq!(&order[..2], [retry, older], "ready longest first");
    assert_eq!(&order[2..], later, "then in the order they were enqueued");
    assert!(!order.contains(&future));
}

#[tokio::test]
async fn jobs_with_an_expected_time_come_first_however_late_they_became_ready() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let plain = in_turn().enqueue(pq).await.unwrap();
    set_times(pq, plain, "1 day", "1 day").await;
    let late = in_turn().expected_at("2h").enqueue(pq).await.unwrap();
    let soon = in_turn().expected_at("1h").enqueue(pq).await.unwrap();
    // Expected earliest of all, but scheduled later: invisible until due.
    let scheduled = in_turn()
        .expected_at("1m")
        .schedule_at("1h")
        .enqueue(pq)
        .await
        .unwrap();

    burst(Worker::new(pq.clone()).concurrency(1), "order").await;

    assert_eq!(ran(pq), [soon, late, plain]);
    let left: Vec<i64> = sqlx::query_scalar(&format!("SELECT id FROM {}", pq.table()))
        .fetch_all(pq.pool())
        .await
        .unwrap();
    assert_eq!(left, [scheduled.0]);
}

#[tokio::test]
async fn get_takes_jobs_in_the_same_order() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("plain");
    let later = queue.put(&"later").await.unwrap();
    let retry = queue.put(&"retry").await.unwrap();
    set_times(&db.pq, retry, "2 hours", "1 hour").await;
    let urgent = queue.put(&"urgent").expected_at("1h").await.unwrap();
    let mut order = Vec::new();
    while let Some(job) = queue.try_get().await.unwrap() {
        order.push(job.id());
    }
    assert_eq!(order, [urgent, retry, later]);
}
