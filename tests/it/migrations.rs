//! Migrations and function definitions: applied online, each function from its one current
//! definition whenever that changed, and never by a pq older than the table.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pq::Worker;

use crate::support::{derived, direct, TestDb};

async fn execute(sql: &str) {
    sqlx::raw_sql(sql)
        .execute(&mut direct().await)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_table_migrated_by_a_newer_pq_is_not_touched_by_this_one() {
    let db = TestDb::new().await;
    let migrations = derived(&db.pq, "migrations");
    execute(&format!(
        "INSERT INTO {migrations} (version, name) VALUES (999, 'from the future')"
    ))
    .await;
    let err = db.pq.create().await.unwrap_err();
    assert!(
        matches!(err, pq::Error::SchemaTooNew { applied: 999, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade"), "{err}");
    // Working it stays possible: migrations only add to what older pqs use.
    db.pq.check_schema().await.unwrap();
}

#[tokio::test]
async fn a_worker_refuses_a_table_that_lacks_this_pqs_migrations() {
    let db = TestDb::new().await;
    let migrations = derived(&db.pq, "migrations");
    execute(&format!(
        "DELETE FROM {migrations} WHERE version = {}",
        pq::LATEST
    ))
    .await;
    let err = Worker::new(db.pq.clone())
        .queues(["q"])
        .burst()
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(err, pq::WorkerError::Setup(pq::Error::SchemaTooOld { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("pq migrate"), "{err}");
}

#[tokio::test]
async fn a_function_whose_definition_changed_is_defined_again_and_the_others_are_not() {
    let db = TestDb::new().await;
    let functions = derived(&db.pq, "functions");
    let applied = async || {
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT name, applied_at::text FROM {functions} ORDER BY name"
        ))
        .fetch_all(&mut direct().await)
        .await
        .unwrap();
        rows.into_iter().collect::<BTreeMap<_, _>>()
    };
    let before = applied().await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        [
            "functions/claim.sql",
            "functions/claim_limited.sql",
            "functions/notify.sql",
            "functions/settle.sql",
            "functions/wait.sql"
        ]
    );
    // As if an older pq had defined the claim: another text, and another function.
    execute(&format!(
        "UPDATE {functions} SET checksum = 'older' WHERE name = 'functions/claim.sql'; \
             DROP FUNCTION {}(int8, text[], int4, timestamptz[], timestamptz[], int8[], bool)",
        derived(&db.pq, "claim")
    ))
    .await;
    db.pq.create().await.unwrap();
    let after = applied().await;
    assert_ne!(after["functions/claim.sql"], before["functions/claim.sql"]);
    assert_eq!(after["functions/wait.sql"], before["functions/wait.sql"]);
    // The claim works again.
    let id = db.pq.queue("q").put(&1).await.unwrap();
    let mut claimer = crate::support::Claimer::new(&db.pq, &["q"]).await;
    assert_eq!(claimer.claim_one(id).await.id, id);
}

/// Takes the table back to what migration 9 left, so that this pq's later migrations run on
/// `rows` jobs.
async fn back_to_migration_9(db: &TestDb, rows: i64) {
    let pq = &db.pq;
    let t = pq.table();
    let name = |suffix| derived(pq, suffix);
    execute(&format!(
            "DROP FUNCTION {noted}() CASCADE; DROP FUNCTION {settled}() CASCADE; \
             DROP TABLE {after}; DROP SEQUENCE {workflows}; \
             DROP INDEX {ready}; \
             CREATE INDEX queue_dequeue_idx ON {t} \
               (q_name, schedule_at, COALESCE(expected_at, 'infinity'), id) WHERE state = 'queued'; \
             ALTER TABLE {t} DROP COLUMN claim_id, DROP COLUMN worker_id, DROP COLUMN rescues, \
               DROP COLUMN timeout, DROP COLUMN snoozes, DROP COLUMN meta, DROP COLUMN unique_key, \
               DROP COLUMN flow, DROP COLUMN result, DROP COLUMN expires_at, \
               DROP COLUMN waits, DROP COLUMN releases; \
             DROP TABLE {workers}; DROP TABLE {queues}; DROP TABLE {schedules}; DROP TABLE {flows}; DROP TABLE {key_rates}; DROP TABLE {steps}; \
             DROP SEQUENCE {claims}; \
             DELETE FROM {migrations} WHERE version >= 10; DELETE FROM {functions}; \
             INSERT INTO {t} (q_name, data) SELECT 'big', '1' FROM generate_series(1, {rows});",
            ready = name("ready_idx"),
            workers = name("workers"),
            queues = name("queues"),
            schedules = name("schedules"),
            flows = name("flows"),
            key_rates = name("key_rates"),
            steps = name("steps"),
            noted = name("note_ended"),
            settled = name("settle_noted"),
            after = name("after"),
            workflows = name("workflows"),
            claims = name("claims"),
            migrations = name("migrations"),
            functions = name("functions"),
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_a_large_table_never_holds_a_lock_that_puts_wait_for() {
    let db = TestDb::new().await;
    back_to_migration_9(&db, 500_000).await;
    // Another session watches the table's locks: any mode that conflicts with a put's
    // ROW EXCLUSIVE, and for how long it was seen held.
    let watcher = {
        let pq = db.pq.clone();
        tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            let mut since: Option<Instant> = None;
            for _ in 0..100_000 {
                let blocking: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT FROM pg_locks \
                       WHERE relation = $1::regclass AND granted \
                         AND mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', \
                                      'AccessExclusiveLock'))",
                )
                .bind(pq.table())
                .fetch_one(pq.pool())
                .await
                .unwrap_or(false);
                match (blocking, since) {
                    (true, None) => since = Some(Instant::now()),
                    (false, Some(start)) => {
                        longest = longest.max(start.elapsed());
                        since = None;
                    }
                    _ => {}
                }
                if pq.schema_version().await.unwrap_or(0) >= pq::LATEST {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            longest
        })
    };
    let other = db.another_handle().await;
    let started = Instant::now();
    other.create().await.unwrap();
    let migrated = started.elapsed();
    let longest = watcher.await.unwrap();
    assert!(
        longest < Duration::from_millis(200),
        "a lock that blocks puts was held for {longest:?} of a {migrated:?} migration"
    );
    // And the table is the new one.
    let ready: i64 = db.pq.queue("big").len().await.unwrap() as i64;
    assert_eq!(ready, 500_000);
}
