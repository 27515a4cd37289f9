//! The admin API: counts, listing, inspecting, re-queueing, cancelling, deleting, pruning.

use std::time::Duration;

use pq::protocol::{Claim, Failure};
use pq::{Enqueue, JobFilter, JobId, JobState, NewJob, Pq};
use serde_json::json;

use crate::support::{complete, direct, failed, Claimer, TestDb};

/// Puts a job of `task` on `queue`.
async fn put_task(pq: &Pq, queue: &str, task: &str, args: serde_json::Value) -> JobId {
    let job = NewJob::new(queue, &args).unwrap().task(task);
    pq.enqueue(job).await.unwrap().id()
}

/// Claims the next job of `queue`, which must be `id`.
async fn claim(pq: &Pq, queue: &str, id: JobId) -> Claim {
    Claimer::new(pq, &[queue]).await.claim_one(id).await
}

/// A job of `queue` that ran and gave up with `error`.
async fn failed_job(pq: &Pq, queue: &str, error: &str) -> JobId {
    let id = pq.queue(queue).put(&json!({"n": 1})).await.unwrap();
    let claim = claim(pq, queue, id).await;
    let failure = failed(claim, error, Failure::GiveUp);
    assert_eq!(pq.fail(&[failure]).await.unwrap(), [id]);
    id
}

/// A job of `queue` that ran and is kept done.
async fn done_job(pq: &Pq, queue: &str) -> JobId {
    let id = pq.queue(queue).put(&json!({"n": 1})).await.unwrap();
    let claim = claim(pq, queue, id).await;
    assert_eq!(complete(pq, &[claim], true).await, [id]);
    id
}

/// Moves a finished job's `finished_at` back by `age`.
async fn finished_ago(pq: &Pq, id: JobId, age: &str) {
    sqlx::query(&format!(
        "UPDATE {} SET finished_at = now() - $2::interval WHERE id = $1",
        pq.table()
    ))
    .bind(id.0)
    .bind(age)
    .execute(&mut direct().await)
    .await
    .unwrap();
}

async fn state_of(pq: &Pq, id: JobId) -> Option<JobState> {
    pq.admin().job(id).await.unwrap().map(|job| job.state)
}

#[tokio::test]
async fn stats_count_every_queue_by_state_with_the_age_of_its_oldest_ready_job() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    failed_job(pq, "apples", "boom").await;
    let apples = pq.queue("apples");
    apples.put(&1).await.unwrap();
    apples.put(&2).await.unwrap();
    apples.put(&3).schedule_at("1h").await.unwrap();
    done_job(pq, "pears").await;
    let running = pq.queue("pears").put(&4).await.unwrap();
    claim(pq, "pears", running).await;
    let cancelled = pq.queue("pears").put(&5).await.unwrap();
    assert!(pq.admin().cancel(cancelled).await.unwrap());
    sqlx::query(&format!(
        "UPDATE {} SET enqueued_at = now() - interval '90 seconds' WHERE q_name = 'apples'",
        pq.table()
    ))
    .execute(&mut direct().await)
    .await
    .unwrap();

    let stats = pq.admin().stats().await.unwrap();

    assert_eq!(stats.len(), 2);
    let (apples, pears) = (&stats[0], &stats[1]);
    assert_eq!(apples.queue, "apples");
    assert_eq!(
        (
            apples.ready,
            apples.scheduled,
            apples.running,
            apples.done,
            apples.failed
        ),
        (2, 1, 0, 0, 1)
    );
    let age = apples.oldest_ready.expect("ready jobs have an age");
    assert!((89..120).contains(&age.as_secs()), "{age:?}");
    assert_eq!(pears.queue, "pears");
    assert_eq!(
        (pears.ready, pears.running, pears.done, pears.cancelled),
        (0, 1, 1, 1)
    );
    assert_eq!(pears.oldest_ready, None);
}

#[tokio::test]
async fn oldest_ready_counts_from_when_a_job_became_ready_not_when_it_was_put() {
    let db = TestDb::new().await;
    let admin = db.pq.admin();
    assert_eq!(admin.oldest_ready("apples").await.unwrap(), None);

    let id = db.pq.queue("apples").put(&1).await.unwrap();
    sqlx::query(&format!(
        "UPDATE {} SET enqueued_at = now() - interval '1 hour', \
           schedule_at = now() - interval '10 minutes' WHERE id = $1",
        db.pq.table()
    ))
    .bind(id.0)
    .execute(db.pool())
    .await
    .unwrap();

    let age = admin
        .oldest_ready("apples")
        .await
        .unwrap()
        .expect("one ready");
    assert!((600..660).contains(&age.as_secs()), "{age:?}");
    assert_eq!(admin.oldest_ready("pears").await.unwrap(), None);
}

#[tokio::test]
async fn a_job_shows_every_column_with_its_error_history() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let id = put_task(pq, "mail", "app::send", json!({"to": "a@b.c"})).await;
    let first = claim(pq, "mail", id).await;
    pq.fail(&[failed(first, "timeout", Failure::RetryIn(Duration::ZERO))])
        .await
        .unwrap();
    let second = claim(pq, "mail", id).await;
    pq.fail(&[failed(second, "refused", Failure::GiveUp)])
        .await
        .unwrap();

    let job = pq.admin().job(id).await.unwrap().expect("the job");

    assert_eq!(job.id, id);
    assert_eq!(job.queue, "mail");
    assert_eq!(job.task.as_deref(), Some("app::send"));
    assert_eq!(job.data, json!({"to": "a@b.c"}));
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 2);
    assert_eq!(job.last_error.as_deref(), Some("refused"));
    let history: Vec<_> = job
        .errors
        .iter()
        .map(|e| (e.attempt, e.error.as_str()))
        .collect();
    assert_eq!(history, [(1, "timeout"), (2, "refused")]);
    assert!(job.errors[0].at <= job.errors[1].at);
    assert!(job.dequeued_at.is_some());
    assert!(job.finished_at.is_some());
    assert_eq!(job.locked_until, None);
    assert!(job.schedule_at.is_some(), "the retry scheduled it");
    assert_eq!(job.expected_at, None);
    let json = serde_json::to_value(&job).unwrap();
    assert_eq!(json["state"], "failed");
    assert_eq!(json["errors"][1]["attempt"], 2);
}

#[tokio::test]
async fn an_unknown_job_id_is_none_or_false_and_changes_nothing() {
    let db = TestDb::new().await;
    let admin = db.pq.admin();
    let kept = db.pq.queue("apples").put(&1).await.unwrap();
    let unknown = JobId(kept.0 + 1000);

    assert!(admin.job(unknown).await.unwrap().is_none());
    assert!(!admin.retry(unknown).await.unwrap());
    assert!(!admin.cancel(unknown).await.unwrap());
    assert!(!admin.delete(unknown).await.unwrap());

    assert_eq!(state_of(&db.pq, kept).await, Some(JobState::Ready));
}

#[tokio::test]
async fn list_filters_by_queue_state_and_task() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let failed = failed_job(pq, "mail", "boom").await;
    let send = put_task(pq, "mail", "app::send", json!({})).await;
    let later = pq.queue("mail").put(&1).schedule_at("1h").await.unwrap();
    let other_task = put_task(pq, "mail", "app::bounce", json!({})).await;
    let other_queue = put_task(pq, "sms", "app::send", json!({})).await;
    let admin = pq.admin();
    let ids = |filter: JobFilter| {
        let admin = admin.clone();
        async move {
            let page = admin.list(&filter, None, 100).await.unwrap();
            page.jobs.iter().map(|j| j.id).collect::<Vec<_>>()
        }
    };

    assert_eq!(
        ids(JobFilter::new()).await,
        [failed, send, later, other_task, other_queue]
    );
    assert_eq!(
        ids(JobFilter::new().queue("mail")).await,
        [failed, send, later, other_task]
    );
    assert_eq!(
        ids(JobFilter::new().task("app::send")).await,
        [send, other_queue]
    );
    assert_eq!(
        ids(JobFilter::new().state(JobState::Ready)).await,
        [send, other_task, other_queue]
    );
    assert_eq!(
        ids(JobFilter::new().state(JobState::Scheduled)).await,
        [later]
    );
    assert_eq!(
        ids(JobFilter::new().state(JobState::Failed)).await,
        [failed]
    );
    assert_eq!(
        ids(JobFilter::new()
            .queue("mail")
            .task("app::send")
            .state(JobState::Ready))
        .await,
        [send]
    );
    assert!(ids(JobFilter::new().queue("none")).await.is_empty());
}

#[tokio::test]
async fn list_pages_by_id_without_gaps_or_repeats() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("apples");
    let all = queue.put_many(&(0..25).collect::<Vec<_>>()).await.unwrap();
    let admin = db.pq.admin();

    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = admin.list(&JobFilter::new(), after, 10).await.unwrap();
        pages += 1;
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }

    assert_eq!(seen, all);
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn retry_queues_a_failed_job_to_start_over_keeping_its_history_and_wakes_workers() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let id = failed_job(pq, "apples", "boom").await;
    let wake = pq.subscribe(&["apples"]).await.unwrap();
    let notified = wake.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();

    assert!(pq.admin().retry(id).await.unwrap());

    tokio::time::timeout(Duration::from_secs(5), notified)
        .await
        .expect("workers of the queue are woken");
    let job = pq.admin().job(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Ready);
    // Ready from now on, behind the jobs ready before it.
    assert!(job.schedule_at.is_some_and(|at| at > job.enqueued_at));
    assert_eq!(job.finished_at, None);
    assert_eq!(job.attempts, 0, "it starts over, with all its retries");
    assert_eq!(job.last_error.as_deref(), Some("boom"));
    assert_eq!(job.errors.len(), 1);
    let mut claimer = Claimer::new(pq, &["apples"]).await;
    let again = claimer.claim(1).await;
    assert_eq!(again[0].attempts(), 1);
}

#[tokio::test]
async fn retry_leaves_jobs_that_are_not_failed_alone() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let done = done_job(pq, "apples").await;
    let ready = pq.queue("apples").put(&1).await.unwrap();
    let admin = pq.admin();

    assert!(!admin.retry(ready).await.unwrap());
    assert!(!admin.retry(done).await.unwrap());

    assert_eq!(state_of(pq, ready).await, Some(JobState::Ready));
    assert_eq!(state_of(pq, done).await, Some(JobState::Done));
}

#[tokio::test]
async fn retry_failed_queues_every_matching_failed_job_in_batches() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let mut mail = Vec::new();
    for _ in 0..7 {
        mail.push(failed_job(pq, "mail", "boom").await);
    }
    let sms = failed_job(pq, "sms", "boom").await;
    let ready = pq.queue("mail").put(&1).await.unwrap();
    let admin = pq.admin();
    let filter = JobFilter::new().queue("mail");

    let first = admin.retry_failed_batch(&filter, None, 3).await.unwrap();
    assert_eq!(first.count, 3);
    assert_eq!(first.last, Some(mail[2]));
    let rest = admin.retry_failed(&filter).await.unwrap();

    assert_eq!(rest, 4);
    for id in &mail {
        assert_eq!(state_of(pq, *id).await, Some(JobState::Ready));
    }
    assert_eq!(state_of(pq, sms).await, Some(JobState::Failed));
    assert_eq!(state_of(pq, ready).await, Some(JobState::Ready));
    let none_left = admin.retry_failed_batch(&filter, None, 3).await.unwrap();
    assert_eq!(none_left.count, 0);
    assert_eq!(none_left.last, None);
}

#[tokio::test]
async fn retry_failed_filters_by_task_too() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let send = put_task(pq, "mail", "app::send", json!({})).await;
    let bounce = put_task(pq, "mail", "app::bounce", json!({})).await;
    for job in Claimer::new(pq, &["mail"]).await.claim(2).await {
        let claim = job.claim().unwrap();
        pq.fail(&[failed(claim, "boom", Failure::GiveUp)])
            .await
            .unwrap();
    }

    let count = pq
        .admin()
        .retry_failed(&JobFilter::new().task("app::send"))
        .await
        .unwrap();

    assert_eq!(count, 1);
    assert_eq!(state_of(pq, send).await, Some(JobState::Ready));
    assert_eq!(state_of(pq, bounce).await, Some(JobState::Failed));
}

#[tokio::test]
async fn bulk_operations_skip_jobs_locked_by_others_instead_of_waiting() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let locked = failed_job(pq, "apples", "boom").await;
    let free = failed_job(pq, "apples", "boom").await;
    finished_ago(pq, locked, "8 days").await;
    finished_ago(pq, free, "8 days").await;
    let mut holder = direct().await;
    let mut tx = sqlx::Connection::begin(&mut holder).await.unwrap();
    sqlx::query(&format!(
        "SELECT id FROM {} WHERE id = $1 FOR UPDATE",
        pq.table()
    ))
    .bind(locked.0)
    .execute(&mut *tx)
    .await
    .unwrap();
    let admin = pq.admin();

    let retried = tokio::time::timeout(
        Duration::from_secs(5),
        admin.retry_failed(&JobFilter::new()),
    )
    .await
    .expect("does not wait for the lock")
    .unwrap();
    assert_eq!(retried, 1);
    assert_eq!(state_of(pq, free).await, Some(JobState::Ready));

    let pruned = tokio::time::timeout(
        Duration::from_secs(5),
        admin.prune(Duration::from_secs(7 * 24 * 3600)),
    )
    .await
    .expect("does not wait for the lock")
    .unwrap();
    assert_eq!(pruned, 0);
    tx.rollback().await.unwrap();
    assert_eq!(state_of(pq, locked).await, Some(JobState::Failed));
}

#[tokio::test]
async fn cancel_stops_a_ready_or_scheduled_job_and_asks_for_a_running_one() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let ready = pq.queue("apples").put(&1).await.unwrap();
    let scheduled = pq.queue("apples").put(&2).schedule_at("1h").await.unwrap();
    let running = pq.queue("pears").put(&3).await.unwrap();
    claim(pq, "pears", running).await;
    let admin = pq.admin();

    assert!(admin.cancel(ready).await.unwrap());
    assert!(admin.cancel(scheduled).await.unwrap());
    assert!(admin.cancel(running).await.unwrap(), "asked of its worker");
    assert!(!admin.cancel(ready).await.unwrap(), "already cancelled");

    let job = admin.job(ready).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert!(job.finished_at.is_some());
    assert_eq!(state_of(pq, scheduled).await, Some(JobState::Cancelled));
    assert_eq!(state_of(pq, running).await, Some(JobState::Running));
    assert!(pq.queue("apples").try_get().await.unwrap().is_none());
}

#[tokio::test]
async fn delete_removes_a_job_unless_it_is_running() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let failed = failed_job(pq, "apples", "boom").await;
    let ready = pq.queue("apples").put(&1).await.unwrap();
    let running = pq.queue("pears").put(&3).await.unwrap();
    claim(pq, "pears", running).await;
    let admin = pq.admin();

    assert!(admin.delete(ready).await.unwrap());
    assert!(admin.delete(failed).await.unwrap());
    assert!(!admin.delete(running).await.unwrap());

    assert_eq!(state_of(pq, ready).await, None);
    assert_eq!(state_of(pq, failed).await, None);
    assert_eq!(state_of(pq, running).await, Some(JobState::Running));
}

#[tokio::test]
async fn prune_deletes_finished_jobs_older_than_the_age_and_nothing_else() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let old_done = done_job(pq, "apples").await;
    let old_failed = failed_job(pq, "apples", "boom").await;
    let old_cancelled = pq.queue("apples").put(&1).await.unwrap();
    assert!(pq.admin().cancel(old_cancelled).await.unwrap());
    let recent_done = done_job(pq, "apples").await;
    let old_ready = pq.queue("apples").put(&2).await.unwrap();
    for id in [old_done, old_failed, old_cancelled] {
        finished_ago(pq, id, "8 days").await;
    }
    sqlx::query(&format!(
        "UPDATE {} SET enqueued_at = now() - interval '30 days' WHERE id = $1",
        pq.table()
    ))
    .bind(old_ready.0)
    .execute(&mut direct().await)
    .await
    .unwrap();
    let week = Duration::from_secs(7 * 24 * 3600);
    let admin = pq.admin();

    assert_eq!(admin.prune_batch(week, 2).await.unwrap(), 2);
    assert_eq!(admin.prune(week).await.unwrap(), 1);
    assert_eq!(admin.prune(week).await.unwrap(), 0);

    for id in [old_done, old_failed, old_cancelled] {
        assert_eq!(state_of(pq, id).await, None);
    }
    assert_eq!(state_of(pq, recent_done).await, Some(JobState::Done));
    assert_eq!(state_of(pq, old_ready).await, Some(JobState::Ready));
}

#[tokio::test]
async fn bad_input_is_a_typed_error() {
    let db = TestDb::new().await;
    let admin = db.pq.admin();

    let err = admin
        .list(&JobFilter::new().queue(""), None, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, pq::Error::InvalidQueueName { .. }), "{err}");
    let err = admin
        .retry_failed(&JobFilter::new().queue("a\0b"))
        .await
        .unwrap_err();
    assert!(matches!(err, pq::Error::InvalidQueueName { .. }), "{err}");
    let err = admin.oldest_ready("").await.unwrap_err();
    assert!(matches!(err, pq::Error::InvalidQueueName { .. }), "{err}");
    let err = admin.prune(Duration::MAX).await.unwrap_err();
    assert!(matches!(err, pq::Error::InvalidTime { .. }), "{err}");
}

/// How many rows and index entries the table's scans have read, as PostgreSQL counts them, on
/// a handle of one connection: the statements it ran flush their counts first.
async fn rows_read(pq: &Pq) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(pq.pool())
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT (COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0) \
           + (SELECT COALESCE(sum(idx_tup_read), 0) FROM pg_stat_user_indexes AS i \
              WHERE i.relid = t.relid))::int8 \
         FROM pg_stat_user_tables AS t WHERE t.relid = $1::regclass",
    )
    .bind(pq.table())
    .fetch_one(pq.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn the_oldest_ready_job_is_found_without_reading_the_backlog() {
    let db = TestDb::new().await;
    sqlx::query(&format!(
        "INSERT INTO {} (q_name, data) SELECT 'deep', '1' FROM generate_series(1, 50000)",
        db.pq.table()
    ))
    .execute(db.pool())
    .await
    .unwrap();
    sqlx::query(&format!("ANALYZE {}", db.pq.table()))
        .execute(db.pool())
        .await
        .unwrap();
    let one = Pq::builder()
        .schema(&db.schema)
        .max_connections(1)
        .connect(&crate::support::database_url())
        .await
        .unwrap();
    let before = rows_read(&one).await;
    let age = one.admin().oldest_ready("deep").await.unwrap();
    let read = rows_read(&one).await - before;
    assert!(age.is_some());
    assert!(
        read < 100,
        "{read} rows read for the oldest of 50,000 ready jobs"
    );
}

async fn explain(conn: &mut sqlx::PgConnection, sql: &str) -> String {
    let rows: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
        .fetch_all(conn)
        .await
        .unwrap();
    rows.join("\n")
}

#[tokio::test]
async fn admin_and_rescue_statements_read_the_index_of_jobs_out_of_the_queue() {
    let db = TestDb::new().await;
    let t = db.pq.table();
    let mut conn = db.pool().acquire().await.unwrap();
    // The table is empty: make the planner show which index it can use at all.
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();

    let failed = explain(
        &mut conn,
        &format!("SELECT id FROM {t} WHERE id > 0 AND state = 'failed' ORDER BY id LIMIT 10"),
    )
    .await;
    let prunable_sql = format!(
        "SELECT id FROM {t} WHERE state IN ('done', 'failed', 'cancelled') \
         AND finished_at < now() - interval '7 days' ORDER BY state, id LIMIT 10"
    );
    let prunable = explain(&mut conn, &prunable_sql).await;
    let lost = explain(
        &mut conn,
        &format!(
            "SELECT id FROM {t} AS j WHERE state = 'running' \
             AND NOT EXISTS (SELECT FROM {workers} AS w WHERE w.id = j.worker_id) \
             ORDER BY id LIMIT 10",
            workers = crate::support::derived(&db.pq, "workers"),
        ),
    )
    .await;

    for plan in [&failed, &prunable, &lost] {
        assert!(plan.contains("queue_out_idx"), "{plan}");
    }
    // The index can give prune its order, so that a batch can stop once it has its jobs.
    sqlx::query("SET enable_sort = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let in_order = explain(&mut conn, &prunable_sql).await;
    assert!(!in_order.contains("Sort"), "{in_order}");
}
