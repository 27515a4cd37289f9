//! Durable steps: `ctx.step(name, ..)` runs once per job, whatever runs the job takes; its
//! writes in the job's transaction commit with its record.

use std::time::Duration;

use pq::{Error, JobState, TaskContext, Worker};

use crate::support::{burst, eventually, result_of, Running, TestDb};

/// Notes that step `step` of job `key` ran, with a statement of its own: how often a body ran.
async fn note(ctx: &TaskContext, schema: &str, key: &str, step: &str) -> anyhow::Result<()> {
    // In a transaction of its own: a transaction pooler needs one around a statement that
    // sqlx sends in two exchanges.
    let mut tx = ctx.pq().pool().begin().await?;
    sqlx::query(&format!(
        "INSERT INTO {schema}.ran (key, step, attempt) VALUES ($1, $2, $3)"
    ))
    .persistent(false)
    .bind(key)
    .bind(step)
    .bind(ctx.attempt() as i32)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Two steps; the second fails on the first run. Returns what both steps returned.
#[pq::task(queue = "steps", max_retries = 2, retry_in = "0s")]
async fn two_steps(ctx: TaskContext, schema: String, key: String) -> anyhow::Result<(u32, u32)> {
    let first = ctx
        .step("first", || async {
            note(&ctx, &schema, &key, "first").await?;
            anyhow::Ok(ctx.attempt())
        })
        .await?;
    let second = ctx
        .step("second", || async {
            note(&ctx, &schema, &key, "second").await?;
            anyhow::ensure!(ctx.attempt() > 1, "the first run fails here");
            Ok(ctx.attempt())
        })
        .await?;
    Ok((first, second))
}

/// A step that writes in the job's transaction, then a step that fails on the first run.
#[pq::task(queue = "steps", max_retries = 2, retry_in = "0s")]
async fn write_then_fail(ctx: TaskContext, schema: String, key: String) -> anyhow::Result<()> {
    ctx.step("write", || async {
        note(&ctx, &schema, &key, "write").await?;
        let mut tx = ctx.transaction().await?;
        sqlx::query(&format!("INSERT INTO {schema}.written (key) VALUES ($1)"))
            .persistent(false)
            .bind(&key)
            .execute(&mut *tx)
            .await?;
        anyhow::Ok(())
    })
    .await?;
    ctx.step("fail once", || async {
        anyhow::ensure!(ctx.attempt() > 1, "the first run fails here");
        Ok(())
    })
    .await
}

/// Runs its steps in one order on the first run, the other on the next.
#[pq::task(queue = "steps", max_retries = 1, retry_in = "0s")]
async fn reordered(ctx: TaskContext) -> anyhow::Result<(String, String)> {
    let a = || async { anyhow::Ok("a".to_owned()) };
    let b = || async { anyhow::Ok("b".to_owned()) };
    if ctx.attempt() == 1 {
        ctx.step("a", a).await?;
        ctx.step("b", b).await?;
        anyhow::bail!("the first run fails after both steps");
    }
    let b = ctx
        .step("b", || async { anyhow::Ok("b again".to_owned()) })
        .await?;
    let a = ctx
        .step("a", || async { anyhow::Ok("a again".to_owned()) })
        .await?;
    Ok((a, b))
}

#[pq::task(queue = "steps", max_retries = 3, retry_in = "0s")]
async fn steps_side_by_side(ctx: TaskContext) -> anyhow::Result<()> {
    let slow = || async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        anyhow::Ok(())
    };
    let (a, b) = tokio::join!(ctx.step("a", slow), ctx.step("b", slow));
    a?;
    b
}

#[pq::task(queue = "steps", max_retries = 3, retry_in = "0s")]
async fn step_holding_the_transaction(ctx: TaskContext) -> anyhow::Result<()> {
    let _tx = ctx.transaction().await?;
    ctx.step("inside", || async { anyhow::Ok(()) }).await
}

async fn tables(db: &TestDb) {
    for table in [
        "ran (key text, step text, attempt int)",
        "written (key text)",
    ] {
        sqlx::query(&format!("CREATE TABLE {}.{table}", db.schema))
            .execute(db.pool())
            .await
            .unwrap();
    }
}

async fn runs(db: &TestDb, key: &str) -> Vec<(String, i32)> {
    let ran = format!("{}.ran", db.schema);
    sqlx::query_as(&format!(
        "SELECT step, attempt FROM {ran} WHERE key = $1 ORDER BY attempt, step"
    ))
    .bind(key)
    .fetch_all(db.pool())
    .await
    .unwrap()
}

fn worker(db: &TestDb) -> Worker {
    Worker::new(db.pq.clone()).queues(["steps"])
}

#[tokio::test]
async fn a_retried_job_skips_the_steps_it_completed() {
    let db = TestDb::new().await;
    tables(&db).await;
    let handle = two_steps(db.schema.clone(), "k".into())
        .enqueue(&db.pq)
        .await
        .unwrap();
    let running = Running::start(worker(&db));
    let result = result_of(&db, handle).await.unwrap();
    running.stop().await.unwrap().unwrap();
    assert_eq!(result, (1, 2), "the first step's output is the first run's");
    assert_eq!(
        runs(&db, "k").await,
        [
            ("first".into(), 1),
            ("second".into(), 1),
            ("second".into(), 2)
        ],
        "the first step ran once, the second on each run"
    );
}

#[tokio::test]
async fn a_steps_writes_commit_with_its_record_even_when_a_later_step_fails() {
    let db = TestDb::new().await;
    tables(&db).await;
    let id = write_then_fail(db.schema.clone(), "w".into())
        .enqueue(&db.pq)
        .await
        .unwrap();
    burst(worker(&db), "steps").await;
    let written = format!("SELECT count(*) FROM {}.written WHERE key = 'w'", db.schema);
    let written: i64 = sqlx::query_scalar(&written)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(written, 1, "kept after the failed run, and not made again");
    assert_eq!(
        runs(&db, "w").await,
        [("write".into(), 1)],
        "committed with the step, not with the job: the second run skips it"
    );
    assert_eq!(db.state_of(id).await, None, "the second run succeeded");
}

#[tokio::test]
async fn steps_are_known_by_name_not_by_position() {
    let db = TestDb::new().await;
    let handle = reordered().enqueue(&db.pq).await.unwrap();
    let running = Running::start(worker(&db));
    let result = result_of(&db, handle).await.unwrap();
    running.stop().await.unwrap().unwrap();
    assert_eq!(result, ("a".to_owned(), "b".to_owned()));
}

#[tokio::test]
async fn steps_side_by_side_fail_for_good_saying_why() {
    let db = TestDb::new().await;
    let id = steps_side_by_side().enqueue(&db.pq).await.unwrap();
    burst(worker(&db).keep_completed(true), "steps").await;
    let job = db.pq.admin().job(id).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Failed, 1), "no retry");
    let error = job.last_error.unwrap();
    assert!(
        error.contains("steps of one job run one at a time"),
        "{error}"
    );
}

#[tokio::test]
async fn a_step_while_the_handler_holds_the_transaction_fails_saying_why() {
    let db = TestDb::new().await;
    let id = step_holding_the_transaction()
        .enqueue(&db.pq)
        .await
        .unwrap();
    burst(worker(&db).keep_completed(true), "steps").await;
    let job = db.pq.admin().job(id).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Failed, 1), "no retry");
    let error = job.last_error.unwrap();
    assert!(
        error.contains("cannot run while the handler holds the job's transaction"),
        "{error}"
    );
}

/// A step whose run loses its job while the step works (another claim takes it, as a rescue
/// would after its lease ran out): its write must not stay, nor its record.
#[pq::task(queue = "steps")]
async fn step_losing_its_job(ctx: TaskContext, schema: String) -> anyhow::Result<()> {
    ctx.step("late", || async {
        let mut tx = ctx.transaction().await?;
        sqlx::query(&format!(
            "INSERT INTO {schema}.written (key) VALUES ('late')"
        ))
        .persistent(false)
        .execute(&mut *tx)
        .await?;
        drop(tx);
        let mut other = ctx.pq().pool().begin().await?;
        sqlx::query(&format!(
            "UPDATE {schema}.queue SET claim_id = -1 WHERE id = $1"
        ))
        .persistent(false)
        .bind(ctx.job_id().0)
        .execute(&mut *other)
        .await?;
        other.commit().await?;
        anyhow::Ok(())
    })
    .await
}

#[tokio::test]
async fn a_step_that_completes_after_its_run_lost_the_job_records_and_keeps_nothing() {
    let db = TestDb::new().await;
    tables(&db).await;
    let id = step_losing_its_job(db.schema.clone())
        .enqueue(&db.pq)
        .await
        .unwrap();
    let running = Running::start(worker(&db));
    let schema = db.schema.clone();
    eventually(|| async {
        let claim: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT claim_id FROM {schema}.queue WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_one(db.pool())
        .await
        .unwrap();
        claim == Some(-1)
    })
    .await;
    running.stop().await.unwrap().unwrap();
    let count = |table: &str| format!("SELECT count(*) FROM {}.{table}", db.schema);
    let written: i64 = sqlx::query_scalar(&count("written"))
        .fetch_one(db.pool())
        .await
        .unwrap();
    let records: i64 = sqlx::query_scalar(&count("queue_steps"))
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!((written, records), (0, 0), "rolled back, not recorded");
}

/// Records a step, then fails: for good without retries, else to be retried in an hour.
#[pq::task(queue = "steps", retry_in = "1h")]
async fn step_then_fail(ctx: TaskContext) -> anyhow::Result<()> {
    ctx.step("kept", || async { anyhow::Ok(()) }).await?;
    anyhow::bail!("failing after the step")
}

#[pq::task(queue = "steps", max_retries = 1, retry_in = "1h")]
async fn step_then_retry(ctx: TaskContext) -> anyhow::Result<()> {
    ctx.step("kept", || async { anyhow::Ok(()) }).await?;
    anyhow::bail!("failing after the step")
}

#[tokio::test]
async fn the_records_of_a_job_go_once_it_is_done_and_stay_while_it_may_run_again() {
    let db = TestDb::new().await;
    tables(&db).await;
    let done = two_steps(db.schema.clone(), "gone".into())
        .enqueue(&db.pq)
        .await
        .unwrap();
    let failed = step_then_fail().enqueue(&db.pq).await.unwrap();
    let retried = step_then_retry().enqueue(&db.pq).await.unwrap();
    let records = |id: pq::JobId| {
        let sql = format!(
            "SELECT count(*) FROM {}.queue_steps WHERE job = $1",
            db.schema
        );
        let pool = db.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(&sql)
                .bind(id.0)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // A long lease: its maintenance runs as it starts, then not for 15 s.
    burst(worker(&db), "steps").await;
    assert_eq!(
        records(done.id()).await,
        2,
        "recorded as each step completed"
    );
    assert_eq!(db.state_of(failed).await.as_deref(), Some("failed"));
    assert_eq!(db.state_of(retried).await.as_deref(), Some("queued"));

    // A short lease: its maintenance runs every second.
    let running = Running::start(worker(&db).lease(Duration::from_secs(2)));
    eventually(|| async { records(done.id()).await == 0 }).await;
    running.stop().await.unwrap().unwrap();
    assert_eq!(records(failed).await, 1, "kept for an operator's retry");
    assert_eq!(records(retried).await, 1, "kept for the retry");
    assert!(matches!(
        done.status(&db.pq).await,
        Ok(JobState::Done) | Err(Error::NoSuchJob { .. })
    ));
}
