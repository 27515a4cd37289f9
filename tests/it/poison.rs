//! Rows that another program wrote, which pq's own writes would never produce: each fails alone
//! (failed with a clear reason, or reported and skipped), and never panics a worker or the
//! admin API, nor stops the jobs beside it.

use std::time::Duration;

use pq::{JobFilter, JobId, Pq, TaskContext, Worker};

use crate::support::{database_url, direct, record_run, runs_of, TestDb};

#[pq::task(queue = "poison")]
async fn harmless(ctx: TaskContext) {
    record_run(&ctx);
}

#[pq::task(queue = "poison", max_retries = 1, retry_in = "0s")]
async fn fails_once(ctx: TaskContext) -> Result<(), String> {
    match record_run(&ctx) {
        1 => Err("the first run fails".into()),
        _ => Ok(()),
    }
}

/// Inserts a job of `task` on queue `poison` with `{}` for data, whose `column` is then set to
/// `value`, as other SQL might.
async fn insert(pq: &Pq, task: &str, column: &str, value: &str) -> JobId {
    let id: i64 = sqlx::query_scalar(&format!(
        "INSERT INTO {} (q_name, task, data) VALUES ('poison', $1, '{{}}') RETURNING id",
        pq.table()
    ))
    .bind(task)
    .fetch_one(&mut direct().await)
    .await
    .unwrap();
    sqlx::query(&format!(
        "UPDATE {} SET {column} = {value} WHERE id = $1",
        pq.table()
    ))
    .bind(id)
    .execute(&mut direct().await)
    .await
    .unwrap();
    JobId(id)
}

async fn state_and_error(pq: &Pq, id: JobId) -> Option<(String, Option<String>)> {
    sqlx::query_as(&format!(
        "SELECT state, last_error FROM {} WHERE id = $1",
        pq.table()
    ))
    .bind(id.0)
    .fetch_optional(&mut direct().await)
    .await
    .unwrap()
}

const HARMLESS: &str = <harmless as pq::Task>::NAME;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_by_other_sql_fail_alone_and_never_stop_the_worker() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let mut good = Vec::new();
    for _ in 0..10 {
        good.push(harmless().enqueue(pq).await.unwrap());
    }
    let never_expected = insert(pq, HARMLESS, "expected_at", "'infinity'").await;
    let far_expected = insert(pq, HARMLESS, "expected_at", "'294000-01-01'").await;
    let never_enqueued = insert(pq, HARMLESS, "enqueued_at", "'-infinity'").await;
    // Ready at infinity: never due, like a job scheduled at infinity.
    let never_ready = insert(pq, HARMLESS, "enqueued_at", "'infinity'").await;
    let negative = insert(pq, HARMLESS, "attempts", "-3").await;
    let scalar_errors = insert(
        pq,
        <fails_once as pq::Task>::NAME,
        "errors",
        "'\"not an array\"'",
    )
    .await;
    let unknown_state = insert(pq, HARMLESS, "state", "'bogus'").await;
    for _ in 0..10 {
        good.push(harmless().enqueue(pq).await.unwrap());
    }

    tokio::time::timeout(
        Duration::from_secs(60),
        Worker::new(pq.clone()).queues(["poison"]).burst().run(),
    )
    .await
    .expect("the worker returns once nothing it can run is left")
    .unwrap();

    for id in &good {
        assert_eq!(runs_of(pq, *id), 1, "good job {id}");
    }
    // Expected at no time is the same as expected at none: it runs.
    assert_eq!(runs_of(pq, never_expected), 1);
    // A negative attempt count is not a reason to run a succeeding job again.
    assert_eq!(runs_of(pq, negative), 1);
    assert_eq!(state_and_error(pq, negative).await, None, "completed");
    // A history that is not a list does not stop the retry from being recorded.
    assert_eq!(runs_of(pq, scalar_errors), 2);
    // Times pq cannot represent fail the job, saying why.
    for (id, column) in [
        (far_expected, "expected_at"),
        (never_enqueued, "enqueued_at"),
    ] {
        let (state, error) = state_and_error(pq, id).await.unwrap();
        assert_eq!(state, "failed", "job {id}");
        let error = error.unwrap();
        assert!(error.contains(column), "job {id}: {error}");
        assert_eq!(runs_of(pq, id), 0);
    }
    assert_eq!(state_and_error(pq, never_ready).await.unwrap().0, "queued");
    // A state pq does not know is not claimed.
    assert_eq!(state_and_error(pq, unknown_state).await.unwrap().0, "bogus");
}

#[tokio::test]
async fn the_admin_api_reads_around_rows_it_cannot_decode() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let good = harmless().enqueue(pq).await.unwrap();
    let bad = [
        insert(pq, HARMLESS, "expected_at", "'infinity'").await,
        insert(pq, HARMLESS, "expected_at", "'294000-01-01'").await,
        insert(pq, HARMLESS, "enqueued_at", "'-infinity'").await,
        insert(pq, HARMLESS, "schedule_at", "'infinity'").await,
        insert(pq, HARMLESS, "state", "'bogus'").await,
        insert(pq, HARMLESS, "attempts", "-3").await,
        insert(pq, HARMLESS, "errors", "'{\"not\": \"a list\"}'").await,
        insert(pq, HARMLESS, "data", "'\"\\ud800\"'").await,
    ];
    let admin = pq.admin();
    let page = admin.list(&JobFilter::new(), None, 100).await.unwrap();
    let listed: Vec<JobId> = page.jobs.iter().map(|job| job.id).collect();
    let unreadable: Vec<JobId> = page.unreadable.iter().map(|(id, _)| *id).collect();
    assert!(listed.contains(&good));
    for id in bad {
        assert!(
            listed.contains(&id) ^ unreadable.contains(&id),
            "job {id} is listed or reported, once"
        );
        match admin.job(id).await {
            Ok(info) => assert_eq!(info.map(|job| job.id), Some(id)),
            Err(error) => assert!(error.to_string().contains(&id.to_string()), "{error}"),
        }
    }
    admin.stats().await.unwrap();
    admin.oldest_ready("poison").await.unwrap();
}

#[tokio::test]
async fn a_queue_with_a_job_scheduled_at_infinity_still_blocks_and_wakes() {
    let db = TestDb::new().await;
    insert(&db.pq, HARMLESS, "schedule_at", "'infinity'").await;
    let queue = db.pq.queue("poison");
    assert!(queue
        .get_timeout(Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
    let putter = {
        let queue = queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            queue.put(&"now").await.unwrap()
        })
    };
    let job = queue.get_timeout(Duration::from_secs(5)).await.unwrap();
    assert_eq!(job.map(|job| job.id()), Some(putter.await.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_fails_its_job_alone() {
    // Only a database that does not check encodings can hold such text.
    let admin = TestDb::new().await;
    let database = format!("pq_test_ascii_{}", std::process::id());
    let create = format!(
        "CREATE DATABASE {database} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    );
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {database}"))
        .execute(admin.pool())
        .await
        .unwrap();
    sqlx::raw_sql(&create).execute(admin.pool()).await.unwrap();
    let url = {
        let url = database_url();
        let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
        format!("{base}/{database}")
    };
    let outcome = async {
        let pq = Pq::connect(&url).await.unwrap();
        pq.create().await.unwrap();
        let good = harmless().enqueue(&pq).await.unwrap();
        let id: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO {} (q_name, task, data) VALUES ('poison', $1, ('\"' || E'\\xff' || '\"')::json) \
             RETURNING id",
            pq.table()
        ))
        .bind(HARMLESS)
        .fetch_one(pq.pool())
        .await
        .unwrap();
        let broken = JobId(id);
        let after = harmless().enqueue(&pq).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(60),
            Worker::new(pq.clone()).queues(["poison"]).burst().run(),
        )
        .await
        .expect("the worker returns")
        .unwrap();
        let states: Vec<(i64, String, Option<String>)> =
            sqlx::query_as(&format!("SELECT id, state, last_error FROM {}", pq.table()))
                .fetch_all(pq.pool())
                .await
                .unwrap();
        pq.pool().close().await;
        (good, after, broken, pq, states)
    }
    .await;
    let (good, after, broken, pq, states) = outcome;
    sqlx::raw_sql(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .execute(admin.pool())
        .await
        .unwrap();
    assert_eq!(runs_of(&pq, good), 1);
    assert_eq!(runs_of(&pq, after), 1);
    assert_eq!(states.len(), 1, "{states:?}");
    let (id, state, error) = &states[0];
    assert_eq!((*id, state.as_str()), (broken.0, "failed"));
    assert!(
        error.as_deref().unwrap_or("").contains("UTF-8"),
        "{error:?}"
    );
}
