//! `pq::testing`: the helpers a user's tests call, through the real execution path.

use std::time::Duration;

use pq::{testing, JobState, TaskContext, TaskError};

use crate::support::{record_run, runs_of, TestDb};

/// Fails its first run with a retry due at once, succeeds after.
#[pq::task(queue = "testing", max_retries = 3, retry_in = "0s")]
async fn flaky(ctx: TaskContext, n: u32) -> Result<(), TaskError> {
    record_run(&ctx);
    match ctx.attempt() {
        1 => Err(TaskError::new(format!("flaky {n} at first"))),
        _ => Ok(()),
    }
}

/// Always fails, with retries an hour apart.
#[pq::task(queue = "testing", max_retries = 1, retry_in = "1h")]
async fn doomed(ctx: TaskContext) -> anyhow::Result<()> {
    record_run(&ctx);
    anyhow::bail!("doomed, attempt {}", ctx.attempt())
}

#[pq::task(queue = "testing")]
async fn welcome(ctx: TaskContext, user: i64, address: String) {
    record_run(&ctx);
    let _ = (user, address);
}

#[tokio::test]
async fn run_ready_reports_successes_retries_due_within_it_and_failures_with_their_errors() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let plain = welcome(1, "a@example.com".into())
        .enqueue(pq)
        .await
        .unwrap();
    let flaky = flaky(7).enqueue(pq).await.unwrap();
    let doomed = doomed().enqueue(pq).await.unwrap();

    let report = testing::run_ready(pq).await.unwrap();

    assert_eq!(
        (report.succeeded, report.retried, report.failed),
        (2, 2, 0),
        "{report}"
    );
    assert_eq!(
        (runs_of(pq, plain), runs_of(pq, flaky), runs_of(pq, doomed)),
        (1, 2, 1)
    );
    let errors: Vec<_> = report
        .errors
        .iter()
        .map(|e| (e.job, e.error.as_str(), e.retried))
        .collect();
    assert!(
        errors.contains(&(flaky, "flaky 7 at first", true)),
        "{report}"
    );
    assert!(
        errors.contains(&(doomed, "doomed, attempt 1", true)),
        "{report}"
    );
    // The doomed job's retry is an hour away: made due, it fails for good.
    assert_eq!(testing::make_due(pq).await.unwrap(), 1);
    let report = testing::run_ready(pq).await.unwrap();
    assert_eq!((report.succeeded, report.failed), (0, 1), "{report}");
    assert_eq!(report.errors[0].error, "doomed, attempt 2");
    assert!(!report.errors[0].retried);
    let job = pq.admin().job(doomed).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
}

#[tokio::test]
async fn run_job_runs_that_job_now_though_it_is_scheduled_and_nothing_else() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let later = welcome(2, "b@example.com".into())
        .schedule_at("1h")
        .enqueue(pq)
        .await
        .unwrap();
    let other = welcome(3, "c@example.com".into())
        .enqueue(pq)
        .await
        .unwrap();

    let report = testing::run_job(pq, later).await.unwrap();

    assert_eq!((report.succeeded, report.runs()), (1, 1), "{report}");
    assert_eq!((runs_of(pq, later), runs_of(pq, other)), (1, 0));
    assert_eq!(pq.admin().job(later).await.unwrap(), None);
    // A job that no longer waits is not run again.
    let report = testing::run_job(pq, later).await.unwrap();
    assert_eq!(report.runs(), 0, "{report}");
}

#[tokio::test]
async fn enqueued_finds_the_waiting_jobs_a_call_made_by_its_typed_arguments() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let id = welcome(7, "d@example.com".into())
        .enqueue(pq)
        .await
        .unwrap();
    welcome(8, "d@example.com".into())
        .schedule_at("1h")
        .enqueue(pq)
        .await
        .unwrap();

    assert_eq!(
        testing::assert_enqueued(pq, welcome(7, "d@example.com".into())).await,
        id
    );
    assert_eq!(
        testing::enqueued(pq, welcome(8, "d@example.com".into()))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(testing::enqueued(pq, welcome(7, "e@example.com".into()))
        .await
        .unwrap()
        .is_empty());
    assert!(
        testing::enqueued(pq, welcome(7, "d@example.com".into()).queue("elsewhere"))
            .await
            .unwrap()
            .is_empty()
    );

    let missing = tokio::spawn({
        let pq = pq.clone();
        async move { testing::assert_enqueued(&pq, welcome(9, "f@example.com".into())).await }
    })
    .await
    .unwrap_err();
    let message = missing
        .into_panic()
        .downcast::<String>()
        .map(|m| *m)
        .unwrap_or_default();
    assert!(message.contains("no waiting job"), "{message}");
    assert!(
        message.contains("\"user\":7"),
        "the waiting jobs are listed: {message}"
    );
}

#[tokio::test]
async fn a_context_with_a_chosen_attempt_runs_a_tasks_body_directly() {
    let db = TestDb::new().await;
    let ctx = |attempt| {
        TaskContext::new(db.pq.clone(), pq::JobId(1), "it::flaky", "testing").with_attempt(attempt)
    };
    let first = flaky(1).run_with(ctx(1)).await;
    assert_eq!(first.unwrap_err().message(), "flaky 1 at first");
    let third = tokio::time::timeout(Duration::from_secs(5), flaky(1).run_with(ctx(3)))
        .await
        .unwrap();
    assert!(third.is_ok());
}

/// Snoozes its first run for no time, succeeds after.
#[pq::task(queue = "testing")]
async fn sleepy(ctx: TaskContext) -> Result<(), TaskError> {
    match record_run(&ctx) {
        1 => Err(TaskError::snooze(Duration::ZERO)),
        _ => Ok(()),
    }
}

#[tokio::test]
async fn a_snooze_is_counted_apart_from_failures_and_records_no_error() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let id = sleepy().enqueue(pq).await.unwrap();

    let report = testing::run_ready(pq).await.unwrap();

    assert_eq!(
        (
            report.succeeded,
            report.snoozed,
            report.retried,
            report.failed
        ),
        (1, 1, 0, 0),
        "{report}"
    );
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(report.runs(), 2);
    assert_eq!(runs_of(pq, id), 2);
}
