//! Unique tasks: at most one waiting job per key, enforced by PostgreSQL; a duplicate is told
//! apart, and skips, replaces or debounces the waiting job; a running or returning job never
//! holds its key.

use std::time::Duration;

use pq::protocol::Failure;
use pq::{Enqueue, Enqueued, JobId, OnConflict, Pq, TaskContext};
use serde_json::{json, Value};

use crate::support::{failed, Claimer, TestDb};

#[pq::task(queue = "unique", unique = [user])]
async fn welcome(ctx: TaskContext, user: i64, address: String) {
    let _ = (ctx, user, address);
}

#[pq::task(queue = "unique", unique = [account], on_conflict = "replace")]
async fn sync(account: String, version: u32) {
    let _ = (account, version);
}

#[pq::task(queue = "unique", unique = [account], debounce = "30s", debounce_max = "1m")]
async fn reindex(account: String, calls: u32) {
    let _ = (account, calls);
}

#[pq::task(queue = "unique")]
async fn plain(n: u32) {
    let _ = n;
}

/// The waiting jobs of a task: their ids, data and how long until each may run, in seconds.
async fn waiting(db: &TestDb, task: &str) -> Vec<(JobId, Value, f64)> {
    let rows: Vec<(i64, Value, f64)> = sqlx::query_as(&format!(
        "SELECT id, data::jsonb, \
           extract(epoch FROM GREATEST(schedule_at, enqueued_at) - now())::float8 FROM {} \
         WHERE task = $1 AND state = 'queued' ORDER BY id",
        db.pq.table()
    ))
    .bind(task)
    .fetch_all(db.pool())
    .await
    .expect("read the waiting jobs");
    rows.into_iter()
        .map(|(id, data, due)| (JobId(id), data, due))
        .collect()
}

fn name<T: pq::Task>() -> &'static str {
    T::NAME
}

#[tokio::test]
async fn a_call_with_the_key_of_a_waiting_job_is_told_it_is_a_duplicate_and_changes_nothing() {
    let db = TestDb::new().await;
    let pq = &db.pq;

    let first = welcome(7, "a@example.com".into())
        .enqueue(pq)
        .await
        .unwrap();
    let again = welcome(7, "b@example.com".into())
        .enqueue(pq)
        .await
        .unwrap();
    let other = welcome(8, "a@example.com".into())
        .enqueue(pq)
        .await
        .unwrap();

    let Enqueued::New(id) = first else {
        panic!("{first:?}")
    };
    assert_eq!(again, Enqueued::Duplicate(id));
    assert!(matches!(other, Enqueued::New(other) if other != id));
    let jobs = waiting(&db, name::<welcome>()).await;
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].1, json!({"user": 7, "address": "a@example.com"}));
    let shown = pq.admin().job(id).await.unwrap().unwrap();
    assert_eq!(
        shown.unique_key.as_deref(),
        Some(r#"["it::unique::welcome",[7]]"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_producers_racing_on_one_key_leave_one_waiting_job_and_one_new_answer() {
    let db = TestDb::new().await;
    let producers: Vec<_> = (0..8)
        .map(|producer| {
            let pq = db.pq.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for call in 0..25 {
                    let address = format!("{producer}.{call}@example.com");
                    answers.push(welcome(42, address).enqueue(&pq).await.expect("enqueue"));
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for producer in producers {
        answers.extend(producer.await.unwrap());
    }

    let jobs = waiting(&db, name::<welcome>()).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let new: Vec<_> = answers.iter().filter(|a| !a.is_duplicate()).collect();
    assert_eq!(new, [&Enqueued::New(jobs[0].0)]);
    assert!(answers.iter().all(|a| a.id() == jobs[0].0));
}

#[tokio::test]
async fn a_running_job_frees_its_key_and_its_retry_is_never_refused_by_the_next_waiting_one() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let first = welcome(5, "a".into()).enqueue(pq).await.unwrap().id();
    let mut worker = Claimer::new(pq, &["unique"]).await;
    let claim = worker.claim_one(first).await;

    // While it runs, the key is free: the next request waits beside it.
    let next = welcome(5, "b".into()).enqueue(pq).await.unwrap();
    assert!(matches!(next, Enqueued::New(id) if id != first), "{next:?}");
    // Its retry comes back to the queue though a job with its key waits.
    let held = pq
        .fail(&[failed(claim, "boom", Failure::RetryIn(Duration::ZERO))])
        .await
        .expect("record the failure");
    assert_eq!(held, [first]);
    let jobs = waiting(&db, name::<welcome>()).await;
    assert_eq!(
        jobs.iter().map(|j| j.0).collect::<Vec<_>>(),
        [first, next.id()]
    );
    // The key is the waiting one's: a third call meets that one, not the retry.
    let third = welcome(5, "c".into()).enqueue(pq).await.unwrap();
    assert_eq!(third, Enqueued::Duplicate(next.id()));
}

#[tokio::test]
async fn replace_gives_the_waiting_job_the_calls_arguments() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let first = sync("acme".into(), 1).enqueue(pq).await.unwrap();
    let second = sync("acme".into(), 2)
        .schedule_at("1h")
        .enqueue(pq)
        .await
        .unwrap();

    assert_eq!(second, Enqueued::Duplicate(first.id()));
    let jobs = waiting(&db, name::<sync>()).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].1, json!({"account": "acme", "version": 2}));
    assert!((3500.0..3700.0).contains(&jobs[0].2), "{jobs:?}");
}

#[tokio::test]
async fn a_debounce_pushes_the_waiting_job_back_but_never_past_its_bound() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let first = reindex("acme".into(), 1).enqueue(pq).await.unwrap();
    let jobs = waiting(&db, name::<reindex>()).await;
    assert!(
        (25.0..31.0).contains(&jobs[0].2),
        "30 s after the call: {jobs:?}"
    );

    // As if the first call had come 50 s ago: a call now would push it to now + 30 s, past the
    // bound of a minute after the first, so it runs at the bound.
    sqlx::query(&format!(
        "UPDATE {} SET enqueued_at = enqueued_at - interval '50 s', \
           schedule_at = schedule_at - interval '50 s' WHERE id = $1",
        pq.table()
    ))
    .bind(first.id().0)
    .execute(db.pool())
    .await
    .unwrap();
    let second = reindex("acme".into(), 2).enqueue(pq).await.unwrap();

    assert_eq!(second, Enqueued::Duplicate(first.id()));
    let jobs = waiting(&db, name::<reindex>()).await;
    assert_eq!(jobs[0].1, json!({"account": "acme", "calls": 2}));
    assert!(
        (5.0..11.0).contains(&jobs[0].2),
        "the bound, 10 s away: {jobs:?}"
    );

    // Within the bound, a call pushes it to 30 s after itself.
    sqlx::query(&format!(
        "UPDATE {} SET enqueued_at = now(), schedule_at = now() WHERE id = $1",
        pq.table()
    ))
    .bind(first.id().0)
    .execute(db.pool())
    .await
    .unwrap();
    reindex("acme".into(), 3).enqueue(pq).await.unwrap();
    let jobs = waiting(&db, name::<reindex>()).await;
    assert!((25.0..31.0).contains(&jobs[0].2), "{jobs:?}");
}

#[tokio::test]
async fn a_batch_answers_duplicates_within_itself_and_against_the_table_and_writes_the_rest() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let waiting_one = welcome(1, "a".into()).enqueue(pq).await.unwrap().id();

    let mut batch = pq::TaskBatch::new();
    batch.push(welcome(1, "b".into())); // meets the table's
    batch.push(welcome(2, "c".into())); // new
    batch.push(plain(7)); // no key
    batch.push(welcome(2, "d".into())); // meets the batch's
    batch.push(sync("acme".into(), 1));
    batch.push(sync("acme".into(), 2)); // replaces the batch's
    let answers = batch.enqueue(pq).await.unwrap();

    assert_eq!(answers.len(), 6);
    assert_eq!(answers[0], Enqueued::Duplicate(waiting_one));
    let Enqueued::New(two) = answers[1] else {
        panic!("{answers:?}")
    };
    assert!(matches!(answers[2], Enqueued::New(_)));
    assert_eq!(answers[3], Enqueued::Duplicate(two));
    assert!(matches!(answers[4], Enqueued::New(_)));
    assert_eq!(answers[5], Enqueued::Duplicate(answers[4].id()));
    let welcomes = waiting(&db, name::<welcome>()).await;
    assert_eq!(
        welcomes
            .iter()
            .map(|j| (j.0, j.1.clone()))
            .collect::<Vec<_>>(),
        [
            (waiting_one, json!({"user": 1, "address": "a"})),
            (two, json!({"user": 2, "address": "c"})),
        ]
    );
    let syncs = waiting(&db, name::<sync>()).await;
    assert_eq!(syncs[0].1, json!({"account": "acme", "version": 2}));
    assert_eq!(waiting(&db, name::<plain>()).await.len(), 1);
}

#[tokio::test]
async fn a_call_may_set_its_own_key_and_way_with_a_duplicate() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let by_user = welcome(3, "a".into()).enqueue(pq).await.unwrap();
    let custom = welcome(3, "b".into())
        .unique_key("welcome-3-again")
        .enqueue(pq)
        .await
        .unwrap();
    let replaced = welcome(4, "c".into())
        .unique_key("welcome-3-again")
        .on_conflict(OnConflict::Replace)
        .enqueue(pq)
        .await
        .unwrap();

    assert!(matches!(custom, Enqueued::New(id) if id != by_user.id()));
    assert_eq!(replaced, Enqueued::Duplicate(custom.id()));
    let jobs = waiting(&db, name::<welcome>()).await;
    assert_eq!(jobs[1].1, json!({"user": 4, "address": "c"}));
}

#[tokio::test]
async fn a_key_holds_inside_a_transaction_and_is_free_again_once_it_rolls_back() {
    let db = TestDb::new().await;
    let pq: &Pq = &db.pq;
    let mut tx = pq.pool().begin().await.unwrap();
    let first = welcome(9, "a".into())
        .enqueue(pq.on(&mut tx))
        .await
        .unwrap();
    let again = welcome(9, "b".into())
        .enqueue(pq.on(&mut tx))
        .await
        .unwrap();
    assert_eq!(again, Enqueued::Duplicate(first.id()));
    tx.rollback().await.unwrap();

    let after = welcome(9, "c".into()).enqueue(pq).await.unwrap();
    assert!(matches!(after, Enqueued::New(_)), "{after:?}");
}

#[tokio::test]
async fn a_long_key_is_stored_as_its_digest_and_a_key_with_a_nul_is_refused_with_the_reason() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let long = "k".repeat(10_000);
    let first = welcome(1, "a".into())
        .unique_key(long.clone())
        .enqueue(pq)
        .await
        .unwrap();
    let again = welcome(2, "b".into())
        .unique_key(long)
        .enqueue(pq)
        .await
        .unwrap();
    assert_eq!(again, Enqueued::Duplicate(first.id()));

    let error = pq
        .enqueue(
            pq::NewJob::from_json("unique", "{}".into())
                .unwrap()
                .unique_key("a\0b", OnConflict::Skip),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, pq::Error::InvalidUniqueKey { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_job_that_returns_to_the_queue_gives_up_a_key_it_still_held() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let first = welcome(6, "a".into()).enqueue(pq).await.unwrap().id();
    let mut worker = Claimer::new(pq, &["unique"]).await;
    let claim = worker.claim_one(first).await;
    let next = welcome(6, "b".into()).enqueue(pq).await.unwrap().id();
    // As an older pq's claim would leave it: the running job still holds its key.
    sqlx::query(&format!(
        "UPDATE {} SET unique_key = (SELECT unique_key FROM {0} WHERE id = $2) WHERE id = $1",
        pq.table()
    ))
    .bind(first.0)
    .bind(next.0)
    .execute(db.pool())
    .await
    .unwrap();

    let held = pq
        .fail(&[failed(claim, "boom", Failure::RetryIn(Duration::ZERO))])
        .await
        .expect("a retry is never refused");
    assert_eq!(held, [first]);
    assert_eq!(waiting(&db, name::<welcome>()).await.len(), 2);
}
