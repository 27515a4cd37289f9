//! The order jobs come out in: jobs with an `expected_at` first, earliest first; then the rest;
//! within each, the job that became ready first (a scheduled job when it fell due, a retry when
//! its delay ran out, any other job when it was enqueued). Scheduled jobs stay invisible until
//! due.

use std::sync::Mutex;

use pq::{JobId, Pq, TaskContext, Worker};

use crate::support::{burst, direct, Claimer, TestDb};

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
    .execute(&mut direct().await)
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
        .fetch_all(&mut direct().await)
        .await
        .unwrap();
    assert_eq!(left, [scheduled.0]);
}

#[tokio::test]
async fn during_a_backlog_a_claim_resumes_after_the_last_one_until_it_comes_up_short() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let soon = in_turn().expected_at("1h").enqueue(pq).await.unwrap();
    let late = in_turn().expected_at("2h").enqueue(pq).await.unwrap();
    // Ready two minutes ago; one minute ago (enqueued before, but due since); 30 s ago.
    let first = in_turn().enqueue(pq).await.unwrap();
    set_times(pq, first, "2 minutes", "100 years").await;
    let fell_due = in_turn().enqueue(pq).await.unwrap();
    set_times(pq, fell_due, "3 minutes", "1 minute").await;
    let last = in_turn().enqueue(pq).await.unwrap();
    set_times(pq, last, "30 seconds", "100 years").await;
    let ids = |jobs: Vec<pq::Job>| jobs.iter().map(pq::Job::id).collect::<Vec<_>>();
    let give_back = |jobs: &[pq::Job]| {
        let claims: Vec<pq::protocol::Claim> = jobs.iter().filter_map(pq::Job::claim).collect();
        async move { pq.release(&claims).await.unwrap() }
    };

    let mut claimer = Claimer::new(pq, &["order"]).await;
    let taken = claimer.claim(2).await;
    assert_eq!(ids(taken.clone()), [soon, late]);
    // A job given back sorts before where the claims stopped: it waits while they resume...
    give_back(&taken[..1]).await;
    let taken = claimer.resume(2).await;
    assert_eq!(ids(taken.clone()), [first, fell_due]);
    give_back(&taken[..1]).await;
    assert_eq!(ids(claimer.resume(2).await), [last]);
    // ...until a claim comes up short: the next starts from the top.
    assert_eq!(ids(claimer.resume(2).await), [soon, first]);
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
