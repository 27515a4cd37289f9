//! Results: a task that returns a value keeps it on its job, done, for its `keep_result` time,
//! and the `JobHandle` its enqueue answers waits for it.

use std::time::Duration;

use pq::{Error, JobHandle, JobId, JobState, TaskContext, Worker};
use serde::{Deserialize, Serialize};

use crate::support::{burst, eventually, result_of, Running, TestDb};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Thumbnail {
    name: String,
    width: u32,
}

#[pq::task(queue = "results")]
async fn resize(name: String, width: u32) -> anyhow::Result<Thumbnail> {
    Ok(Thumbnail { name, width })
}

#[pq::task(queue = "results")]
fn count_words(text: String) -> Result<usize, String> {
    Ok(text.split_whitespace().count())
}

#[pq::task(queue = "results")]
async fn look_up(found: bool) -> anyhow::Result<Option<String>> {
    Ok(found.then(|| "here".to_owned()))
}

/// A string `jsonb` would refuse: its NUL is kept.
#[pq::task(queue = "results")]
async fn with_a_nul() -> anyhow::Result<String> {
    Ok("a\0b".to_owned())
}

#[pq::task(queue = "results")]
async fn double_in_its_transaction(ctx: TaskContext, n: i64) -> anyhow::Result<i64> {
    let mut tx = ctx.transaction().await?;
    let doubled: i64 = sqlx::query_scalar("SELECT $1::int8 * 2")
        .bind(n)
        .persistent(false)
        .fetch_one(&mut *tx)
        .await?;
    Ok(doubled)
}

#[pq::task(queue = "results", max_retries = 0)]
async fn refuse(reason: String) -> anyhow::Result<u32> {
    anyhow::bail!("refused: {reason}")
}

#[pq::task(queue = "results")]
async fn too_large() -> anyhow::Result<String> {
    Ok("x".repeat(pq::MAX_RESULT))
}

#[pq::task(queue = "results", keep_result = "1s")]
async fn brief() -> anyhow::Result<u8> {
    Ok(7)
}

#[pq::task(queue = "results")]
async fn nothing_back() -> anyhow::Result<()> {
    Ok(())
}

#[pq::task(queue = "results", unique = [name])]
async fn unique_resize(name: String) -> anyhow::Result<u32> {
    Ok(name.len() as u32)
}

fn worker(db: &TestDb) -> Worker {
    Worker::new(db.pq.clone()).queues(["results"])
}

#[tokio::test]
async fn results_of_several_types_round_trip_and_are_kept_with_their_job() {
    let db = TestDb::new().await;
    let thumbnail = resize("cat.png".into(), 200).enqueue(&db.pq).await.unwrap();
    let words = count_words("a few words here".into())
        .enqueue(&db.pq)
        .await
        .unwrap();
    let found = look_up(true).enqueue(&db.pq).await.unwrap();
    let missing = look_up(false).enqueue(&db.pq).await.unwrap();
    let nul = with_a_nul().enqueue(&db.pq).await.unwrap();
    let doubled = double_in_its_transaction(21).enqueue(&db.pq).await.unwrap();
    assert_eq!(thumbnail.status(&db.pq).await.unwrap(), JobState::Ready);

    let running = Running::start(worker(&db));
    assert_eq!(
        result_of(&db, thumbnail).await.unwrap(),
        Thumbnail {
            name: "cat.png".into(),
            width: 200
        }
    );
    assert_eq!(result_of(&db, words).await.unwrap(), 4);
    assert_eq!(
        result_of(&db, found).await.unwrap().as_deref(),
        Some("here")
    );
    assert_eq!(result_of(&db, missing).await.unwrap(), None);
    assert_eq!(result_of(&db, nul).await.unwrap(), "a\0b");
    assert_eq!(result_of(&db, doubled).await.unwrap(), 42);
    running.stop().await.unwrap().unwrap();

    // Kept done, with the result, for the task's time (a day by default).
    assert_eq!(thumbnail.status(&db.pq).await.unwrap(), JobState::Done);
    let job = db.pq.admin().job(thumbnail.id()).await.unwrap().unwrap();
    assert_eq!(
        job.result,
        Some(serde_json::json!({"name": "cat.png", "width": 200}))
    );
    let kept = job.expires_at.unwrap() - job.finished_at.unwrap();
    assert_eq!(kept, chrono::Duration::days(1));
}

#[tokio::test]
async fn many_waits_are_answered_together() {
    let db = TestDb::new().await;
    let mut handles = Vec::new();
    for width in 0..300 {
        handles.push(resize("x".into(), width).enqueue(&db.pq).await.unwrap());
    }
    let running = Running::start(worker(&db).concurrency(16));
    let results =
        futures_util::future::join_all(handles.iter().map(|handle| result_of(&db, *handle))).await;
    running.stop().await.unwrap().unwrap();
    for (width, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap().width, width as u32);
    }
}

#[tokio::test]
async fn waiting_on_a_job_that_fails_returns_its_error() {
    let db = TestDb::new().await;
    let handle = refuse("too large".into()).enqueue(&db.pq).await.unwrap();
    let running = Running::start(worker(&db));
    let error = result_of(&db, handle).await.unwrap_err();
    running.stop().await.unwrap().unwrap();
    match &error {
        Error::JobFailed {
            id,
            cancelled: false,
            error,
        } => {
            assert_eq!(*id, handle.id());
            assert_eq!(error, "refused: too large");
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        format!("job {} failed: refused: too large", handle.id())
    );
    assert_eq!(handle.status(&db.pq).await.unwrap(), JobState::Failed);
}

#[tokio::test]
async fn a_result_too_large_to_keep_fails_its_job_alone() {
    let db = TestDb::new().await;
    let large = too_large().enqueue(&db.pq).await.unwrap();
    let small = resize("small.png".into(), 5).enqueue(&db.pq).await.unwrap();
    let running = Running::start(worker(&db));
    let error = result_of(&db, large).await.unwrap_err();
    assert_eq!(result_of(&db, small).await.unwrap().width, 5);
    running.stop().await.unwrap().unwrap();
    let Error::JobFailed { error, .. } = error else {
        panic!("expected JobFailed, got {error:?}");
    };
    assert!(error.contains("more than the 16777216"), "{error}");
}

#[tokio::test]
async fn waiting_on_a_cancelled_job_says_it_was_cancelled() {
    let db = TestDb::new().await;
    let handle = resize("later.png".into(), 1)
        .schedule_at("1h")
        .enqueue(&db.pq)
        .await
        .unwrap();
    let wait = tokio::spawn({
        let pq = db.pq.clone();
        async move { handle.result(&pq).await }
    });
    assert_eq!(handle.status(&db.pq).await.unwrap(), JobState::Scheduled);
    assert!(db.pq.admin().cancel(handle.id()).await.unwrap());
    let error = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("the wait ends with the cancel")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::JobFailed {
                cancelled: true,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_wait_for_a_job_whose_transaction_has_not_committed_is_an_error_not_a_hang() {
    let db = TestDb::new().await;
    let mut tx = db.pq.queue("results").begin().await.unwrap();
    let handle = resize("pending.png".into(), 3)
        .enqueue(&mut tx)
        .await
        .unwrap();
    let error = result_of(&db, handle).await.unwrap_err();
    assert!(
        matches!(error, Error::NoSuchJob { id } if id == handle.id()),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("never committed"),
        "the message says what to do: {error}"
    );

    // Once committed, the same handle waits for the result.
    tx.commit().await.unwrap();
    let running = Running::start(worker(&db));
    assert_eq!(result_of(&db, handle).await.unwrap().width, 3);
    running.stop().await.unwrap().unwrap();
}

#[tokio::test]
async fn a_result_expires_after_its_keep_time_and_its_job_is_deleted() {
    let db = TestDb::new().await;
    let handle = brief().enqueue(&db.pq).await.unwrap();
    let kept = resize("kept.png".into(), 9).enqueue(&db.pq).await.unwrap();
    // A short lease: the maintenance that deletes expired jobs runs every second.
    let running = Running::start(worker(&db).lease(Duration::from_secs(2)));
    assert_eq!(result_of(&db, handle).await.unwrap(), 7);
    eventually(|| async { matches!(handle.status(&db.pq).await, Err(Error::NoSuchJob { .. })) })
        .await;
    running.stop().await.unwrap().unwrap();
    assert!(matches!(
        result_of(&db, handle).await,
        Err(Error::NoSuchJob { .. })
    ));
    // A job kept for a day stays.
    assert_eq!(kept.status(&db.pq).await.unwrap(), JobState::Done);
}

#[tokio::test]
async fn a_task_that_returns_nothing_keeps_no_row() {
    let db = TestDb::new().await;
    let id: JobId = nothing_back().enqueue(&db.pq).await.unwrap();
    burst(worker(&db), "results").await;
    assert_eq!(db.state_of(id).await, None, "deleted as it succeeded");
}

#[tokio::test]
async fn a_unique_task_with_a_result_tells_a_duplicate_and_both_wait_for_one_job() {
    let db = TestDb::new().await;
    let first = unique_resize("abc".into()).enqueue(&db.pq).await.unwrap();
    let again = unique_resize("abc".into()).enqueue(&db.pq).await.unwrap();
    assert!(!first.is_duplicate());
    assert!(again.is_duplicate());
    assert_eq!(first.id(), again.id());
    let running = Running::start(worker(&db));
    assert_eq!(result_of(&db, again).await.unwrap(), 3);
    running.stop().await.unwrap().unwrap();
}

#[tokio::test]
async fn a_worker_that_keeps_completed_jobs_keeps_results_for_good() {
    let db = TestDb::new().await;
    let handle = brief().enqueue(&db.pq).await.unwrap();
    let worker = worker(&db)
        .keep_completed(true)
        .lease(Duration::from_secs(2));
    let running = Running::start(worker);
    assert_eq!(result_of(&db, handle).await.unwrap(), 7);
    // Past its `keep_result` of a second, and the maintenance's rounds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.stop().await.unwrap().unwrap();
    let job = db.pq.admin().job(handle.id()).await.unwrap().unwrap();
    assert_eq!((job.state, job.expires_at), (JobState::Done, None));
}

#[tokio::test]
async fn a_handle_of_the_wrong_type_fails_to_decode_saying_which_job() {
    let db = TestDb::new().await;
    let thumbnail = resize("cat.png".into(), 200).enqueue(&db.pq).await.unwrap();
    let running = Running::start(worker(&db));
    result_of(&db, thumbnail).await.unwrap();
    running.stop().await.unwrap().unwrap();
    // The same job, waited for as another type (an id saved before the task changed).
    let wrong = JobHandle::<Vec<u8>>::new(thumbnail.id());
    let error = result_of(&db, wrong).await.unwrap_err();
    assert!(
        matches!(&error, Error::DecodeResult { id, .. } if *id == thumbnail.id()),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("cannot decode the result of job"),
        "{error}"
    );
}

/// Hears, within `within`, a notification whose payload is `payload` (others are passed over).
async fn hears(listener: &mut sqlx::postgres::PgListener, payload: &str, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        loop {
            let heard = listener.recv().await.unwrap();
            if heard.payload() == payload {
                return;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn completions_with_results_notify_only_while_a_process_waits_for_one() {
    const RESULTS: &str = "\u{1}pq results";
    let db = TestDb::new().await;
    let mut listener = sqlx::postgres::PgListener::connect(&crate::support::database_url())
        .await
        .unwrap();
    listener
        .listen(&crate::support::channel_of(&db).await)
        .await
        .unwrap();

    // Nobody waits: the completion sends nothing. (Completed by hand: a worker's own wait
    // for jobs, at the same instant, makes a put or a completion notify whatever it finds.)
    let first = resize("a".into(), 1).enqueue(&db.pq).await.unwrap();
    let mut claimer = crate::support::Claimer::new(&db.pq, &["results"]).await;
    let claim = claimer.claim_one(first.id()).await;
    let returned = pq::protocol::Returned {
        claim,
        result: r#"{"name":"a","width":1}"#.into(),
        keep: None,
    };
    assert_eq!(
        db.pq.complete_results(&[returned]).await.unwrap(),
        [first.id()]
    );
    assert!(!hears(&mut listener, RESULTS, Duration::from_millis(500)).await);

    // A wait registers its process: the completion wakes it.
    let handle = resize("b".into(), 2)
        .schedule_at("1h")
        .enqueue(&db.pq)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let pq = db.pq.clone();
        async move { handle.result(&pq).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // registered
    assert!(db.pq.admin().schedule_job_now(handle.id()).await.unwrap());
    burst(worker(&db), "results").await;
    assert!(hears(&mut listener, RESULTS, Duration::from_secs(10)).await);
    assert_eq!(waiting.await.unwrap().unwrap().width, 2);
}
