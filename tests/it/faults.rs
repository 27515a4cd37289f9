//! Bad input and faults that need no server of their own (pq-faults disturbs a server of its
//! own for the rest): each is refused, or fails with an error that says why, and the worker
//! carries on with the other jobs.

use std::time::Duration;

use pq::{Enqueue, JobId, NewJob, Pq, TaskContext, Worker};

use crate::support::{burst, direct, TestDb};

/// Records its job's id in `effects` (a table of the test's schema), in the job's transaction.
#[pq::task(queue = "faults")]
async fn record_in_transaction(ctx: TaskContext, effects: String) -> anyhow::Result<()> {
    let mut tx = ctx.transaction().await?;
    sqlx::query(&format!("INSERT INTO {effects} (job) VALUES ($1)"))
        .persistent(false)
        .bind(ctx.job_id().0)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Records its text's length in `effects`, in the job's transaction.
#[pq::task(queue = "faults")]
async fn record_length(ctx: TaskContext, effects: String, text: String) -> anyhow::Result<()> {
    let mut tx = ctx.transaction().await?;
    sqlx::query(&format!("INSERT INTO {effects} (job, len) VALUES ($1, $2)"))
        .persistent(false)
        .bind(ctx.job_id().0)
        .bind(i64::try_from(text.len())?)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[pq::task(queue = "faults")]
async fn fail_with(message: String) -> Result<(), String> {
    Err(message)
}

/// Nearly the longest `retry_in` the attribute allows (a thousand years, `pq::MAX_DELAY`).
#[pq::task(queue = "faults", max_retries = 1, retry_in = "999y")]
async fn retry_in_centuries() -> Result<(), String> {
    Err("the first run fails".into())
}

async fn effects_table(db: &TestDb) -> String {
    let effects = format!("\"{}\".effects", db.schema);
    sqlx::raw_sql(&format!("CREATE TABLE {effects} (job bigint, len bigint)"))
        .execute(db.pool())
        .await
        .unwrap();
    effects
}

async fn effects_of(db: &TestDb, effects: &str, id: JobId) -> Vec<Option<i64>> {
    sqlx::query_scalar(&format!("SELECT len FROM {effects} WHERE job = $1"))
        .bind(id.0)
        .fetch_all(db.pool())
        .await
        .unwrap()
}

async fn state(pq: &Pq, id: JobId) -> Option<(String, i32, Option<String>)> {
    sqlx::query_as(&format!(
        "SELECT state, attempts, last_error FROM {} WHERE id = $1",
        pq.table()
    ))
    .bind(id.0)
    .fetch_optional(&mut direct().await)
    .await
    .unwrap()
}

/// Inserts a job by SQL, as another program might, with `data` cast to `json` by PostgreSQL.
async fn insert(pq: &Pq, task: &str, data: &str) -> Result<JobId, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "INSERT INTO {} (q_name, task, data) VALUES ('faults', $1, $2::json) RETURNING id",
        pq.table()
    ))
    .bind(task)
    .bind(data)
    .fetch_one(&mut direct().await)
    .await
    .map(JobId)
}

#[tokio::test]
async fn a_transactional_job_is_kept_done_when_the_worker_keeps_completed_jobs() {
    let db = TestDb::new().await;
    let effects = effects_table(&db).await;
    let id = record_in_transaction(effects.clone())
        .enqueue(&db.pq)
        .await
        .unwrap();

    burst(Worker::new(db.pq.clone()).keep_completed(true), "faults").await;

    assert_eq!(effects_of(&db, &effects, id).await.len(), 1);
    let (state, attempts, _) = state(&db.pq, id).await.expect("kept, not deleted");
    assert_eq!((state.as_str(), attempts), ("done", 1));
}

#[tokio::test]
async fn an_error_message_with_a_nul_is_recorded_and_the_worker_carries_on() {
    let db = TestDb::new().await;
    let effects = effects_table(&db).await;
    let failing = fail_with("before \0 after".into())
        .enqueue(&db.pq)
        .await
        .unwrap();
    let ok = record_in_transaction(effects.clone())
        .enqueue(&db.pq)
        .await
        .unwrap();

    burst(Worker::new(db.pq.clone()), "faults").await;

    let (state, _, error) = state(&db.pq, failing).await.unwrap();
    assert_eq!(state, "failed");
    let error = error.unwrap();
    assert!(
        error.starts_with("before ") && error.ends_with(" after"),
        "{error:?}"
    );
    assert_eq!(effects_of(&db, &effects, ok).await.len(), 1);
}

#[tokio::test]
async fn a_retry_centuries_away_is_put_off_and_blocks_nothing() {
    let db = TestDb::new().await;
    let effects = effects_table(&db).await;
    let far = retry_in_centuries().enqueue(&db.pq).await.unwrap();
    let ok = record_in_transaction(effects.clone())
        .enqueue(&db.pq)
        .await
        .unwrap();

    burst(Worker::new(db.pq.clone()), "faults").await;

    let (state, attempts, _) = state(&db.pq, far).await.unwrap();
    assert_eq!(
        (state.as_str(), attempts),
        ("queued", 1),
        "waits for its retry"
    );
    assert_eq!(effects_of(&db, &effects, ok).await.len(), 1);
}

#[tokio::test]
async fn an_absurd_lease_still_runs_jobs() {
    let db = TestDb::new().await;
    let effects = effects_table(&db).await;
    let id = record_in_transaction(effects.clone())
        .enqueue(&db.pq)
        .await
        .unwrap();

    burst(Worker::new(db.pq.clone()).lease(Duration::MAX), "faults").await;

    assert_eq!(effects_of(&db, &effects, id).await.len(), 1);
}

#[tokio::test]
async fn absurd_and_negative_times_are_refused_and_write_nothing() {
    let db = TestDb::new().await;
    let call = || fail_with(String::new());
    let refused = [
        call().schedule_at("-5s").enqueue(&db.pq).await,
        call()
            .schedule_at(chrono::Duration::seconds(-1))
            .enqueue(&db.pq)
            .await,
        call()
            .schedule_at("99999999999999999999y")
            .enqueue(&db.pq)
            .await,
        call().schedule_at(Duration::MAX).enqueue(&db.pq).await,
        call()
            .expected_at(Duration::from_secs(300_000 * 365 * 86_400))
            .enqueue(&db.pq)
            .await,
    ];
    for result in refused {
        assert!(
            matches!(result, Err(pq::Error::InvalidTime { .. })),
            "{result:?}"
        );
    }
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", db.pq.table()))
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn malformed_json_never_becomes_a_job() {
    let db = TestDb::new().await;
    for bad in [r#"{"effects": "#, "{'a': 1}", "NaN", ""] {
        let error = insert(&db.pq, "anything", bad).await.unwrap_err();
        let code = error.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("22P02"), "{bad:?}: {error}");
    }
    let through_pq = (&db.pq)
        .enqueue(NewJob::from_json("faults", "{not json".into()).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&through_pq, pq::Error::Database(e) if e.as_database_error().is_some()),
        "{through_pq}"
    );
}

#[tokio::test]
async fn json_that_is_not_the_tasks_arguments_fails_at_once_naming_task_and_reason() {
    let db = TestDb::new().await;
    let effects = effects_table(&db).await;
    let task = <record_length as pq::Task>::NAME;
    let bad = [
        ("42", "invalid type: integer `42`"),
        ("null", "invalid type: null"),
        (r#""text""#, "invalid type: string"),
        (r#"{"effects": "x"}"#, "missing field `text`"),
        (
            r#"{"effects": "x", "text": 7}"#,
            "invalid type: integer `7`",
        ),
        // PostgreSQL's `json` keeps a lone surrogate escape as written; serde refuses it.
        (r#"{"effects": "x", "text": "\ud800"}"#, "hex escape"),
    ];
    let mut ids = Vec::new();
    for (data, reason) in bad {
        ids.push((insert(&db.pq, task, data).await.unwrap(), reason));
    }
    let ok = record_length(effects.clone(), "fine".into())
        .enqueue(&db.pq)
        .await
        .unwrap();

    burst(Worker::new(db.pq.clone()), "faults").await;

    for (id, reason) in ids {
        let (state, attempts, error) = state(&db.pq, id).await.unwrap();
        let error = error.unwrap();
        assert_eq!((state.as_str(), attempts), ("failed", 1), "{error}");
        assert!(error.contains(task) && error.contains(reason), "{error}");
    }
    assert_eq!(effects_of(&db, &effects, ok).await, [Some(4)]);
}

#[tokio::test]
async fn a_ten_megabyte_argument_and_nul_characters_reach_the_task_whole() {
    let db = TestDb::new().await;
    let effects = effects_table(&db).await;
    let big = record_length(effects.clone(), "pq".repeat(5 << 20))
        .enqueue(&db.pq)
        .await
        .unwrap();
    let nul = record_length(effects.clone(), "a\0b".into())
        .enqueue(&db.pq)
        .await
        .unwrap();
    let nul_by_sql = insert(
        &db.pq,
        <record_length as pq::Task>::NAME,
        &format!(r#"{{"effects": {effects:?}, "text": "a\u0000b"}}"#),
    )
    .await
    .unwrap();

    burst(Worker::new(db.pq.clone()), "faults").await;

    assert_eq!(effects_of(&db, &effects, big).await, [Some(10 << 20)]);
    assert_eq!(effects_of(&db, &effects, nul).await, [Some(3)]);
    assert_eq!(effects_of(&db, &effects, nul_by_sql).await, [Some(3)]);
}
