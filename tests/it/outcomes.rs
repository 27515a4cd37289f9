//! What a handler may ask of its failed run: no retry (`permanent`), a retry after its own
//! delay (`retry_in`), or to wait without spending an attempt (`snooze`).

use std::time::Duration;

use anyhow::Context as _;
use pq::{JobId, JobInfo, JobState, Pq, TaskContext, TaskError, Worker, MAX_SNOOZES};

use crate::support::{burst, record_run, runs_of, TestDb};

#[pq::task(queue = "outcomes", max_retries = 5, retry_in = "0s")]
async fn bounce(ctx: TaskContext) -> Result<(), TaskError> {
    record_run(&ctx);
    Err(TaskError::permanent("the address bounced"))
}

#[pq::task(queue = "outcomes", max_retries = 5, retry_in = "0s")]
async fn bounce_in_anyhow(ctx: TaskContext) -> anyhow::Result<()> {
    record_run(&ctx);
    Err(TaskError::permanent("the address bounced")).context("sending the welcome mail")
}

#[pq::task(queue = "outcomes")]
async fn snooze_then_succeed(ctx: TaskContext, snoozes: u32) -> Result<(), TaskError> {
    if record_run(&ctx) <= snoozes {
        return Err(TaskError::snooze("0s"));
    }
    Ok(())
}

#[pq::task(queue = "outcomes", max_retries = 5)]
async fn snooze_forever(ctx: TaskContext) -> Result<(), TaskError> {
    record_run(&ctx);
    Err(TaskError::snooze(Duration::ZERO))
}

#[pq::task(queue = "outcomes", max_retries = 1, retry_in = "0s")]
async fn server_down(ctx: TaskContext) -> Result<(), TaskError> {
    record_run(&ctx);
    Err(TaskError::retry_in("1h", "the server is down"))
}

#[pq::task(queue = "outcomes", max_retries = 0)]
async fn snooze_badly(ctx: TaskContext, delay: Option<String>) -> Result<(), TaskError> {
    record_run(&ctx);
    match delay {
        Some(delay) => Err(TaskError::snooze(delay.as_str())),
        None => Err(TaskError::snooze(Duration::MAX)),
    }
}

async fn work(pq: &Pq) {
    burst(Worker::new(pq.clone()).keep_completed(true), "outcomes").await;
}

async fn job(pq: &Pq, id: JobId) -> JobInfo {
    pq.admin().job(id).await.unwrap().expect("the job is kept")
}

#[tokio::test]
async fn a_permanent_failure_fails_the_job_at_once_whatever_retries_are_left() {
    let db = TestDb::new().await;
    let id = bounce().enqueue(&db.pq).await.unwrap();
    work(&db.pq).await;
    let job = job(&db.pq, id).await;
    assert_eq!(
        runs_of(&db.pq, id),
        1,
        "max_retries = 5, but no retry can help"
    );
    assert_eq!((job.state, job.attempts), (JobState::Failed, 1));
    assert_eq!(job.last_error.as_deref(), Some("the address bounced"));
}

#[tokio::test]
async fn a_permanent_failure_inside_an_anyhow_error_keeps_its_context_and_its_meaning() {
    let db = TestDb::new().await;
    let id = bounce_in_anyhow().enqueue(&db.pq).await.unwrap();
    work(&db.pq).await;
    let job = job(&db.pq, id).await;
    assert_eq!(runs_of(&db.pq, id), 1);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(
        job.last_error.as_deref(),
        Some("sending the welcome mail: the address bounced")
    );
}

#[tokio::test]
async fn a_snooze_runs_the_job_again_without_counting_an_attempt_or_recording_an_error() {
    let db = TestDb::new().await;
    // max_retries = 0: a snooze that counted would fail the job at the second run.
    let id = snooze_then_succeed(3).enqueue(&db.pq).await.unwrap();
    work(&db.pq).await;
    let job = job(&db.pq, id).await;
    assert_eq!(
        runs_of(&db.pq, id),
        4,
        "three snoozes, then the run that succeeds"
    );
    assert_eq!(
        (job.state, job.attempts, job.snoozes),
        (JobState::Done, 1, 3)
    );
    assert!(
        job.errors.is_empty(),
        "a snooze is no error: {:?}",
        job.errors
    );
}

#[tokio::test]
async fn a_job_that_always_snoozes_fails_for_good_after_max_snoozes() {
    let db = TestDb::new().await;
    let id = snooze_forever().enqueue(&db.pq).await.unwrap();
    work(&db.pq).await;
    let job = job(&db.pq, id).await;
    assert_eq!(runs_of(&db.pq, id), MAX_SNOOZES + 1);
    assert_eq!(
        (job.state, job.attempts, job.snoozes),
        (JobState::Failed, 1, MAX_SNOOZES)
    );
    let error = job.last_error.unwrap();
    assert!(error.contains("snoozed 100 times"), "{error}");
    assert_eq!(job.errors.len(), 1, "only the last snooze is an error");
}

#[tokio::test]
async fn retry_in_counts_an_attempt_and_waits_the_handlers_delay() {
    let db = TestDb::new().await;
    let id = server_down().enqueue(&db.pq).await.unwrap();
    work(&db.pq).await;
    let job = job(&db.pq, id).await;
    // The policy's delay is 0 s: the job would have run twice in the burst.
    assert_eq!(runs_of(&db.pq, id), 1, "the retry waits its hour");
    assert_eq!((job.state, job.attempts), (JobState::Scheduled, 1));
    let wait = job.schedule_at.unwrap() - chrono::Utc::now();
    assert!(wait > chrono::Duration::minutes(55), "retried in {wait}");
    assert_eq!(job.last_error.as_deref(), Some("the server is down"));

    // Once the retries are spent, the handler's delay cannot add one.
    sqlx::query(&format!(
        "UPDATE {} SET schedule_at = '-infinity' WHERE id = $1",
        db.pq.table()
    ))
    .bind(id.0)
    .execute(db.pool())
    .await
    .unwrap();
    work(&db.pq).await;
    let job = self::job(&db.pq, id).await;
    assert_eq!(runs_of(&db.pq, id), 2);
    assert_eq!((job.state, job.attempts), (JobState::Failed, 2));
}

#[tokio::test]
async fn a_snooze_whose_delay_cannot_be_read_is_a_failure_that_says_so() {
    let db = TestDb::new().await;
    let id = snooze_badly(Some("soonish".into()))
        .enqueue(&db.pq)
        .await
        .unwrap();
    work(&db.pq).await;
    let job = job(&db.pq, id).await;
    assert_eq!((job.state, job.snoozes), (JobState::Failed, 0));
    let error = job.last_error.unwrap();
    assert!(error.starts_with("cannot snooze: "), "{error}");
    assert!(error.contains("soonish"), "{error}");
}

#[tokio::test]
async fn a_snooze_of_duration_max_waits_as_long_as_pq_can_say() {
    let db = TestDb::new().await;
    let id = snooze_badly(None).enqueue(&db.pq).await.unwrap();
    work(&db.pq).await;
    let job = job(&db.pq, id).await;
    assert_eq!(
        (job.state, job.attempts, job.snoozes),
        (JobState::Scheduled, 0, 1)
    );
    let wait = job.schedule_at.unwrap() - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::days(365 * 100),
        "snoozed for {wait}"
    );
}
