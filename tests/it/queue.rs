//! The queue core: put, get, scheduling, priority, blocking, transactions, names, schemas.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::support::{channel_of, database_url, unique_schema, Claimer, TestDb};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Apple {
    kind: String,
}

fn apple(kind: &str) -> Apple {
    Apple { kind: kind.into() }
}

#[tokio::test]
async fn a_put_job_is_got_back_with_its_data_and_metadata() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("apples");

    let id = queue.put(&apple("Cox")).await.unwrap();
    let job = queue.get().await.unwrap().expect("a job");

    assert_eq!(job.id(), id);
    assert_eq!(job.queue(), "apples");
    assert_eq!(job.data::<Apple>().unwrap(), apple("Cox"));
    assert_eq!(job.raw_data(), r#"{"kind":"Cox"}"#);
    assert_eq!(job.size(), 14);
    assert_eq!(job.schedule_at(), None);
    assert_eq!(job.expected_at(), None);
    assert!((Utc::now() - job.enqueued_at()).num_seconds().abs() < 60);
    let shown = job.to_string();
    assert!(
        shown.starts_with(&format!("<pq.Job id={id} size=14 enqueued_at=\"")),
        "{shown}"
    );
    assert!(
        shown.ends_with("Z\" schedule_at=None expected_at=None>"),
        "{shown}"
    );
    // Taken: not handed out again.
    assert!(queue.try_get().await.unwrap().is_none());
}

#[tokio::test]
async fn jobs_come_out_by_expected_time_with_unset_ones_last() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("apples");
    let no_priority_first = queue.put(&"none-1").await.unwrap();
    let late = queue.put(&"late").expected_at("2h").await.unwrap();
    let early = queue.put(&"early").expected_at("1m").await.unwrap();
    let absolute = queue
        .put(&"absolute")
        .expected_at(Utc::now() + chrono::Duration::minutes(30))
        .await
        .unwrap();
    let no_priority_second = queue.put(&"none-2").await.unwrap();

    let mut order = Vec::new();
    while let Some(job) = queue.try_get().await.unwrap() {
        order.push(job.id());
    }

    assert_eq!(
        order,
        [early, absolute, late, no_priority_first, no_priority_second]
    );
}

#[tokio::test]
async fn without_priorities_jobs_come_out_first_in_first_out() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("fifo");
    let ids = queue.put_many(&[1, 2, 3, 4, 5]).await.unwrap();
    let mut got = Vec::new();
    while let Some(job) = queue.try_get().await.unwrap() {
        got.push(job.id());
    }
    assert_eq!(got, ids);
}

#[tokio::test]
async fn scheduled_jobs_are_invisible_until_due_then_wake_a_blocked_get() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("later");
    let id = queue
        .put(&apple("Cox"))
        .schedule_at("1500ms")
        .await
        .unwrap();
    queue.put(&apple("far")).schedule_at("1h").await.unwrap();

    assert_eq!(queue.len().await.unwrap(), 0);
    assert!(queue.try_get().await.unwrap().is_none());

    let start = Instant::now();
    let job = queue
        .get_timeout(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the scheduled job, once due");
    let waited = start.elapsed();

    assert_eq!(job.id(), id);
    assert!(job.schedule_at().is_some());
    // Woken by its due time, not by the 30 s timeout; generous bounds for a busy machine.
    assert!(waited >= Duration::from_millis(1000), "{waited:?}");
    assert!(waited < Duration::from_secs(20), "{waited:?}");
    assert_eq!(
        queue.len().await.unwrap(),
        0,
        "the other job is still scheduled"
    );
}

#[tokio::test]
async fn scheduling_accepts_times_and_durations_of_every_kind() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("kinds");
    let at = Utc::now() + chrono::Duration::hours(3);
    queue.put(&1).schedule_at(at).await.unwrap();
    queue
        .put(&2)
        .schedule_at(Duration::from_secs(3600))
        .await
        .unwrap();
    queue
        .put(&3)
        .schedule_at(chrono::Duration::minutes(5))
        .await
        .unwrap();
    queue.put(&4).schedule_at("1h30m").await.unwrap();
    queue.put(&5).schedule_at(String::from("2d")).await.unwrap();
    assert_eq!(queue.len().await.unwrap(), 0);

    let stored: Vec<(i64, f64)> = sqlx::query_as(&format!(
        "SELECT (data::text)::int8, EXTRACT(EPOCH FROM schedule_at - enqueued_at)::float8 \
         FROM {} ORDER BY id",
        db.pq.table()
    ))
    .fetch_all(db.pool())
    .await
    .unwrap();
    let delays: Vec<f64> = stored.iter().map(|(_, d)| *d).collect();
    assert!((delays[0] - 3.0 * 3600.0).abs() < 60.0, "{delays:?}");
    assert!((delays[1] - 3600.0).abs() < 1.0, "{delays:?}");
    assert!((delays[2] - 300.0).abs() < 1.0, "{delays:?}");
    assert!((delays[3] - 5400.0).abs() < 1.0, "{delays:?}");
    assert!((delays[4] - 172_800.0).abs() < 1.0, "{delays:?}");
}

#[tokio::test]
async fn a_bad_time_is_a_clear_error_and_writes_nothing() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("bad");
    for bad in ["10x", "-5s", "", "soon"] {
        let err = queue.put(&1).schedule_at(bad).await.unwrap_err();
        assert!(matches!(err, pq::Error::InvalidTime { .. }), "{err}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    let err = queue
        .put(&1)
        .expected_at(chrono::Duration::seconds(-3))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("negative"), "{err}");
    assert_eq!(count_rows(&db).await, 0);
}

#[tokio::test]
async fn a_blocked_get_returns_as_soon_as_another_task_puts() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("wake");
    let producer = {
        let queue = queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            queue.put(&apple("Cox")).await.unwrap()
        })
    };
    let start = Instant::now();
    let job = queue
        .get_timeout(Duration::from_secs(60))
        .await
        .unwrap()
        .expect("woken by the put");
    assert_eq!(job.id(), producer.await.unwrap());
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_get_that_times_out_returns_none() {
    let db = TestDb::new().await;
    let start = Instant::now();
    let job = db
        .pq
        .queue("empty")
        .get_timeout(Duration::from_millis(200))
        .await
        .unwrap();
    assert!(job.is_none());
    assert!(start.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn a_put_on_another_queue_does_not_satisfy_a_get() {
    let db = TestDb::new().await;
    db.pq.queue("pears").put(&1).await.unwrap();
    let got = db
        .pq
        .queue("apples")
        .get_timeout(Duration::from_millis(300))
        .await
        .unwrap();
    assert!(got.is_none());
    assert_eq!(db.pq.queue("pears").len().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_producers_and_eight_consumers_hand_out_every_job_exactly_once() {
    const PRODUCERS: usize = 8;
    const PER_PRODUCER: usize = 1250;
    let db = TestDb::new().await;
    let queue = db.pq.queue("busy");

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let queue = queue.clone();
            tokio::spawn(async move {
                for i in 0..PER_PRODUCER {
                    queue.put(&(p * PER_PRODUCER + i)).await.unwrap();
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..8)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                // Ends once the queue stays empty for a whole second after the producers.
                while let Some(job) = queue.get_timeout(Duration::from_secs(3)).await.unwrap() {
                    got.push(job.data::<usize>().unwrap());
                }
                got
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
    let mut all = Vec::new();
    for consumer in consumers {
        all.extend(consumer.await.unwrap());
    }

    let distinct: HashSet<usize> = all.iter().copied().collect();
    assert_eq!(all.len(), PRODUCERS * PER_PRODUCER, "every job once");
    assert_eq!(distinct.len(), PRODUCERS * PER_PRODUCER, "no job twice");
}

#[tokio::test]
async fn a_rolled_back_transaction_returns_its_job_and_discards_its_puts() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("tx");
    let id = queue.put(&apple("Cox")).await.unwrap();

    let mut tx = queue.begin().await.unwrap();
    let job = tx.get().await.unwrap().expect("the job");
    assert_eq!(job.id(), id);
    tx.put(&apple("core")).await.unwrap();
    assert!(
        queue.try_get().await.unwrap().is_none(),
        "locked by the transaction, invisible to others"
    );
    tx.rollback().await.unwrap();

    let again = queue.try_get().await.unwrap().expect("back in the queue");
    assert_eq!(again.id(), id);
    assert!(queue.try_get().await.unwrap().is_none(), "the put vanished");
}

#[tokio::test]
async fn a_dropped_transaction_returns_its_job() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("tx");
    let id = queue.put(&1).await.unwrap();
    {
        let mut tx = queue.begin().await.unwrap();
        assert!(tx.try_get().await.unwrap().is_some());
    }
    let again = queue
        .get_timeout(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("back once the rollback ran");
    assert_eq!(again.id(), id);
}

#[tokio::test]
async fn a_committed_transaction_keeps_the_get_the_puts_and_the_callers_own_sql() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("tx");
    queue.put(&apple("Cox")).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE TABLE \"{}\".eaten (job bigint, kind text)",
        db.schema
    ))
    .execute(db.pool())
    .await
    .unwrap();

    let mut tx = queue.begin().await.unwrap();
    let job = tx.get().await.unwrap().unwrap();
    sqlx::query(&format!(
        "INSERT INTO \"{}\".eaten VALUES ($1, $2)",
        db.schema
    ))
    .bind(job.id().0)
    .bind(job.data::<Apple>().unwrap().kind)
    .execute(&mut *tx)
    .await
    .unwrap();
    let follow_up = tx.put(&apple("core")).await.unwrap();
    tx.commit().await.unwrap();

    let eaten: (i64, String) = sqlx::query_as(&format!("SELECT * FROM \"{}\".eaten", db.schema))
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(eaten, (job.id().0, "Cox".to_owned()));
    assert_eq!(queue.try_get().await.unwrap().unwrap().id(), follow_up);
    assert!(queue.try_get().await.unwrap().is_none());
}

#[tokio::test]
async fn put_joins_the_callers_own_sqlx_transaction() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("outbox");

    let mut tx = db.pool().begin().await.unwrap();
    queue.put(&1).execute(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(queue.len().await.unwrap(), 0);

    let mut tx = db.pool().begin().await.unwrap();
    let id = queue.put(&2).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(queue.try_get().await.unwrap().unwrap().id(), id);

    let mut conn = db.pool().acquire().await.unwrap();
    queue.put(&3).execute(&mut *conn).await.unwrap();
    queue.put(&4).execute(db.pool()).await.unwrap();
    assert_eq!(queue.len().await.unwrap(), 2);
}

#[tokio::test]
async fn queue_names_may_hold_spaces_quotes_unicode_and_more_than_63_bytes() {
    let db = TestDb::new().await;
    let long = "ä".repeat(100); // 200 bytes, over LISTEN's 63-byte identifiers
    for name in [
        "with spaces",
        "quotes ' \" `",
        "semi; DROP TABLE queue; --",
        "pommes 🍎",
        long.as_str(),
    ] {
        let queue = db.pq.queue(name);
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.get_timeout(Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let id = queue.put(&name).await.unwrap();
        let job = waiter.await.unwrap().unwrap().expect("woken");
        assert_eq!(job.id(), id);
        assert_eq!(job.queue(), name);
        assert_eq!(job.data::<String>().unwrap(), name);
    }
}

#[tokio::test]
async fn empty_and_nul_queue_names_are_refused() {
    let db = TestDb::new().await;
    for (name, reason) in [("", "empty"), ("a\0b", "NUL")] {
        let err = db.pq.queue(name).put(&1).await.unwrap_err();
        assert!(matches!(err, pq::Error::InvalidQueueName { .. }), "{err}");
        assert!(err.to_string().contains(reason), "{err}");
        assert!(db.pq.queue(name).try_get().await.is_err());
    }
    assert_eq!(count_rows(&db).await, 0);
}

#[tokio::test]
async fn any_json_value_round_trips_exactly() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("json");
    let values = [
        json!(null),
        json!(true),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.1),
        json!(1e300),
        json!("NUL \u{0} inside"),
        json!("ünïcødé 🍎 \u{7f} \\ \" \n"),
        json!({"nested": {"list": [1, "two", null, {"three": 3.5}]}, "": ""}),
        json!([]),
        json!({}),
    ];
    for value in &values {
        queue.put(value).await.unwrap();
        let job = queue.try_get().await.unwrap().unwrap();
        assert_eq!(&job.json().unwrap(), value);
        assert_eq!(job.raw_data(), serde_json::to_string(value).unwrap());
    }
}

#[tokio::test]
async fn data_that_is_not_json_is_refused_with_the_encoder_error() {
    let db = TestDb::new().await;
    let mut map = std::collections::HashMap::new();
    map.insert((1, 2), "tuple keys");
    let err = db.pq.queue("bad").put(&map).await.unwrap_err();
    assert!(matches!(err, pq::Error::Encode(_)), "{err}");
    assert_eq!(count_rows(&db).await, 0);
}

#[tokio::test]
async fn put_many_writes_a_batch_with_shared_times() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("batch");
    let items: Vec<Apple> = (0..1000).map(|i| apple(&format!("apple {i}"))).collect();
    let ids = queue.put_many(&items).await.unwrap();
    assert_eq!(ids.len(), 1000);
    assert_eq!(queue.len().await.unwrap(), 1000);
    assert_eq!(
        queue
            .try_get()
            .await
            .unwrap()
            .unwrap()
            .data::<Apple>()
            .unwrap(),
        items[0]
    );

    let later = queue.put_many(&[1, 2]).schedule_at("1h").await.unwrap();
    assert_eq!(later.len(), 2);
    assert_eq!(queue.len().await.unwrap(), 999);
    assert!(queue.put_many(&Vec::<i32>::new()).await.unwrap().is_empty());
}

#[tokio::test]
async fn len_counts_ready_jobs_and_clear_removes_a_queues_jobs_only() {
    let db = TestDb::new().await;
    let apples = db.pq.queue("apples");
    let pears = db.pq.queue("pears");
    apples.put_many(&[1, 2, 3]).await.unwrap();
    apples.put(&4).schedule_at("1h").await.unwrap();
    pears.put(&5).await.unwrap();

    assert_eq!(apples.len().await.unwrap(), 3);
    assert!(!apples.is_empty().await.unwrap());
    assert_eq!(apples.clear().await.unwrap(), 4);
    assert!(apples.is_empty().await.unwrap());
    assert_eq!(pears.len().await.unwrap(), 1);
}

#[tokio::test]
async fn a_job_can_be_updated_in_place() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("update");
    queue.put(&apple("Cox")).await.unwrap();
    let mut job = queue.try_get().await.unwrap().unwrap();

    job.update(db.pool(), &json!({"kind": "Cox", "eaten": true}))
        .await
        .unwrap();

    assert_eq!(job.size(), r#"{"eaten":true,"kind":"Cox"}"#.len());
    let stored: String = sqlx::query_scalar(&format!(
        "SELECT data::text FROM {} WHERE id = $1",
        db.pq.table()
    ))
    .bind(job.id().0)
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(stored, job.raw_data());
}

#[tokio::test]
async fn a_stream_yields_jobs_as_they_arrive() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("stream");
    queue.put_many(&[1, 2]).await.unwrap();
    let producer = {
        let queue = queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            queue.put(&3).await.unwrap();
        })
    };
    let jobs: Vec<i32> = queue
        .stream()
        .take(3)
        .map(|job| job.unwrap().data::<i32>().unwrap())
        .collect()
        .await;
    producer.await.unwrap();
    assert_eq!(jobs, [1, 2, 3]);
}

#[tokio::test]
async fn a_custom_schema_and_table_are_separate_queues() {
    let db = TestDb::with_table("my jobs \"v2\"").await;
    let other = TestDb::with_table("queue").await;
    db.pq.queue("q").put(&1).await.unwrap();
    assert!(db.pq.table().contains("\"my jobs \"\"v2\"\"\""));
    assert_eq!(other.pq.queue("q").len().await.unwrap(), 0);
    assert_eq!(db.pq.queue("q").len().await.unwrap(), 1);
}

#[tokio::test]
async fn identifiers_crafted_for_injection_are_quoted() {
    let schema = unique_schema("inj\"; DROP SCHEMA public; --");
    let pq = pq::Pq::builder()
        .schema(&schema)
        .table("q\"; DROP TABLE x; --")
        .connect(&database_url())
        .await
        .unwrap();
    pq.create().await.unwrap();
    pq.queue("a").put(&1).await.unwrap();
    assert_eq!(pq.queue("a").len().await.unwrap(), 1);
    let exists: bool =
        sqlx::query_scalar("SELECT count(*) = 1 FROM pg_namespace WHERE nspname = $1")
            .bind(&schema)
            .fetch_one(pq.pool())
            .await
            .unwrap();
    assert!(exists);
    sqlx::raw_sql(&format!(
        "DROP SCHEMA \"{}\" CASCADE",
        schema.replace('"', "\"\"")
    ))
    .execute(pq.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn invalid_identifiers_are_refused_before_any_sql() {
    for (schema, table) in [(None, ""), (Some(""), "queue"), (None, "x\0y")] {
        let mut builder = pq::Pq::builder().table(table);
        if let Some(schema) = schema {
            builder = builder.schema(schema);
        }
        let err = builder.connect_lazy(&database_url()).unwrap_err();
        assert!(matches!(err, pq::Error::InvalidIdentifier { .. }), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_and_safe_from_concurrent_processes() {
    let db = TestDb::new().await;
    db.pq.create().await.unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let schema = unique_schema("mig");
            tokio::spawn(async move {
                let mut created = Vec::new();
                for _ in 0..2 {
                    let pq = pq::Pq::builder()
                        .schema(&schema)
                        .connect(&database_url())
                        .await
                        .unwrap();
                    created.push(tokio::spawn(async move { pq.create().await }));
                }
                for c in created {
                    c.await.unwrap().unwrap();
                }
                schema
            })
        })
        .collect();
    let admin = db.pool();
    for handle in handles {
        let schema = handle.await.unwrap();
        let applied: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{schema}\".queue_migrations"
        ))
        .fetch_one(admin)
        .await
        .unwrap();
        assert_eq!(applied, pq::MIGRATIONS.len() as i64);
        sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(admin)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn another_process_sees_the_same_queue_and_wakes_on_its_puts() {
    let db = TestDb::new().await;
    let other = db.another_handle().await;
    let waiter = {
        let queue = db.pq.queue("shared");
        tokio::spawn(async move { queue.get_timeout(Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = other.queue("shared").put(&1).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap().unwrap().id(), id);
}

#[tokio::test]
async fn many_waiters_share_one_listen_connection() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("shared");
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.get_timeout(Duration::from_secs(30)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listening: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND query LIKE $1",
    )
    .bind(format!("%{}%", channel_of(&db).await))
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(listening, 1);
    // Waiting pins no pooled connection: the pool (12) still serves 20 puts at once.
    let idle = Arc::new(queue.clone());
    let puts: Vec<_> = (0..20)
        .map(|i| {
            let q = Arc::clone(&idle);
            tokio::spawn(async move { q.put(&i).await })
        })
        .collect();
    for put in puts {
        put.await.unwrap().unwrap();
    }
    for waiter in waiters {
        assert!(waiter.await.unwrap().unwrap().is_some());
    }
}

#[tokio::test]
async fn puts_notify_only_queues_with_a_waiting_consumer() {
    let db = TestDb::new().await;
    // Two queues in different registration buckets (32, by a hash of the name).
    let mut names = ["apples", "pears", "plums", "figs", "quinces"].into_iter();
    let waited = names.next().unwrap();
    let mut other = None;
    for name in names {
        let (a, b): (i32, i32) = sqlx::query_as("SELECT hashtext($1) & 31, hashtext($2) & 31")
            .bind(waited)
            .bind(name)
            .fetch_one(db.pool())
            .await
            .unwrap();
        if a != b {
            other = Some(name);
            break;
        }
    }
    let other = other.expect("a queue in another bucket");

    let mut listener = sqlx::postgres::PgListener::connect(&database_url())
        .await
        .unwrap();
    listener.listen(&channel_of(&db).await).await.unwrap();
    let waiter = {
        let queue = db.pq.queue(waited);
        tokio::spawn(async move { queue.get_timeout(Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // registered and waiting

    db.pq.queue(other).put(&1).await.unwrap();
    db.pq.queue(other).put_many(&[1, 2]).await.unwrap();
    let silence = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(silence.is_err(), "a put on {other} notified: {silence:?}");

    let id = db.pq.queue(waited).put(&2).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a put on the waited queue notifies")
        .unwrap();
    assert_eq!(heard.payload(), waited);
    assert_eq!(waiter.await.unwrap().unwrap().unwrap().id(), id);

    // The registration outlives the get: a batch on the waited queue notifies too.
    db.pq.queue(waited).put_many(&[3, 4]).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a batch on the waited queue notifies")
        .unwrap();
    assert_eq!(heard.payload(), waited);
}

#[tokio::test]
async fn a_job_inserted_by_sql_wakes_a_waiting_get_through_the_notify_function() {
    let db = TestDb::new().await;
    let waiter = {
        let queue = db.pq.queue("by sql");
        // Shorter than a waiting get's own look again (about 9 s): it must be woken.
        tokio::spawn(async move { queue.get_timeout(Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // registered and waiting

    let mut tx = db.pool().begin().await.unwrap();
    let id: i64 = sqlx::query_scalar(&format!(
        "INSERT INTO {} (q_name, data) VALUES ('by sql', '7') RETURNING id",
        db.pq.table()
    ))
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let notified: bool =
        sqlx::query_scalar(&format!("SELECT \"{}\".queue_notify('by sql')", db.schema))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert!(notified, "a consumer waits on the queue");
    tx.commit().await.unwrap();

    // Without the notification the get would find the job only when it gives up, at 5 s.
    let job = tokio::time::timeout(Duration::from_secs(4), waiter)
        .await
        .expect("woken by the notification")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(job.id().0, id);
}

async fn count_rows(db: &TestDb) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {}", db.pq.table()))
        .fetch_one(db.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_claimed_batch_comes_in_dequeue_order() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("claims");
    let plain = queue.put(&1).await.unwrap();
    let late = queue.put(&2).expected_at("2h").await.unwrap();
    let early = queue.put(&3).expected_at("1h").await.unwrap();
    let jobs = Claimer::new(&db.pq, &["claims"]).await.claim(10).await;
    let ids: Vec<_> = jobs.iter().map(|j| j.id()).collect();
    assert_eq!(ids, [early, late, plain]);
    assert!(jobs.iter().all(|j| j.attempts() == 1));
}

#[tokio::test]
async fn a_claim_of_no_jobs_or_of_no_queue_takes_nothing() {
    let db = TestDb::new().await;
    let id = db.pq.queue("claims").put(&1).await.unwrap();
    let mut claimer = Claimer::new(&db.pq, &["claims"]).await;
    assert!(claimer.claim(0).await.is_empty());
    for name in ["", "a\0b"] {
        let err = pq::protocol::ClaimQueues::new([name]).unwrap_err();
        assert!(matches!(err, pq::Error::InvalidQueueName { .. }), "{err}");
    }
    let none = pq::protocol::ClaimQueues::new(Vec::<String>::new()).unwrap();
    let claimed = db.pq.claim(claimer.worker, &none, 10).await.unwrap();
    assert!(claimed.jobs.is_empty());
    // Nothing was taken.
    let jobs = claimer.claim(1).await;
    assert_eq!(jobs.iter().map(|j| j.id()).collect::<Vec<_>>(), [id]);
}

#[tokio::test]
async fn an_absurd_delay_is_refused_before_it_reaches_the_database() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("absurd");
    let forever = Duration::from_secs(u64::MAX);
    for err in [
        queue.put(&1).schedule_at(forever).await.unwrap_err(),
        queue.put(&1).expected_at("2000y").await.unwrap_err(),
        queue
            .put_many(&[1, 2])
            .schedule_at(forever)
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(err, pq::Error::InvalidTime { .. }), "{err}");
        assert!(err.to_string().contains("thousand years"), "{err}");
    }
    assert_eq!(count_rows(&db).await, 0);
}

#[tokio::test]
async fn errors_say_whether_trying_again_may_help() {
    // No table: this fails the same way on every try.
    let pq = pq::Pq::builder()
        .schema(&unique_schema("missing"))
        .connect(&database_url())
        .await
        .unwrap();
    let missing = pq.queue("q").put(&1).await.unwrap_err();
    assert!(!missing.is_transient(), "{missing}");
    assert!(missing.to_string().contains("does not exist"), "{missing}");

    // No server: it may answer later.
    let down = pq::Pq::connect("postgres://postgres@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(down.is_transient(), "{down}");

    assert!(!pq::parse_duration("10x").unwrap_err().is_transient());
}

#[tokio::test]
async fn a_ready_job_held_by_another_transaction_does_not_make_waiters_spin() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("held");
    queue.put(&1).await.unwrap();
    let mut holder = queue.begin().await.unwrap();
    assert!(holder.try_get().await.unwrap().is_some());

    // The only ready job is locked: a waiter may sleep, not look again at once.
    let wait = db.pq.register_waiting(&["held"]).await.unwrap().unwrap();
    assert!(
        wait > Duration::from_secs(1),
        "told to look again after {wait:?}"
    );

    holder.rollback().await.unwrap();
}

/// The advisory lock that orders puts and waiting consumers (`TableName::wait_lock_key`).
fn wait_lock_key(db: &TestDb) -> i64 {
    let name = format!("pq wait \"{}\".\"queue\"", db.schema);
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_holding_the_wait_lock_does_not_hold_up_puts() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("locked");
    // A consumer waits, so that puts notify.
    let waiting = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.get_timeout(Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another session takes the lock's key for itself and keeps it.
    let mut other = db.pool().acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(wait_lock_key(&db))
        .execute(&mut *other)
        .await
        .unwrap();
    let put = tokio::time::timeout(Duration::from_secs(3), queue.put(&"through")).await;
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *other)
        .await
        .unwrap();
    let id = put.expect("the put does not wait for the lock").unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.map(|job| job.id()), Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_get_wakes_a_consumer_waiting_for_that_queue() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("back");
    let id = queue.put(&"once").await.unwrap();
    let mut first = queue.begin().await.unwrap();
    assert!(first.try_get().await.unwrap().is_some());
    let started = Instant::now();
    let waiting = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.get_timeout(Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.rollback().await.unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.map(|job| job.id()), Some(id));
    // Its registration holds for 10 s: without a notification it would look again after 9.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_table_named_with_quotes_and_backslashes_works_without_standard_conforming_strings() {
    let schema = unique_schema("scs");
    let url = {
        let url = database_url();
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}options=-c%20standard_conforming_strings%3Doff")
    };
    let pq = pq::Pq::builder()
        .schema(&schema)
        .table(r"back\slash'quote")
        .connect(&url)
        .await
        .unwrap();
    let off: String = sqlx::query_scalar("SHOW standard_conforming_strings")
        .fetch_one(pq.pool())
        .await
        .unwrap();
    assert_eq!(off, "off");
    let created = pq.create().await;
    let used = async {
        created?;
        let queue = pq.queue("q");
        let waiting = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.get_timeout(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        queue.put(&"x").await?;
        waiting.await.unwrap()
    }
    .await;
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(pq.pool())
        .await
        .unwrap();
    assert!(used.unwrap().is_some());
}

#[tokio::test]
async fn a_search_path_set_by_the_application_does_not_redirect_pqs_statements() {
    // pq without a schema: its connections' search path at connect time decides the table's
    // schema, once, not each connection's search path at each statement.
    let home = unique_schema("home");
    let url = {
        let url = database_url();
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}options=-c%20search_path%3D{home}")
    };
    let setup = pq::Pq::connect(&database_url()).await.unwrap();
    sqlx::raw_sql(&format!("CREATE SCHEMA \"{home}\""))
        .execute(setup.pool())
        .await
        .unwrap();
    let pq = pq::Pq::builder()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    pq.create().await.unwrap();
    let decoy = TestDb::new().await;
    // The application points its (and so the pool's only) connection at another tenant.
    sqlx::raw_sql(&format!("SET search_path = \"{}\"", decoy.schema))
        .execute(pq.pool())
        .await
        .unwrap();
    let put = pq.queue("tenant").put(&1).await;
    let in_decoy = decoy.pq.queue("tenant").len().await.unwrap();
    let at_home: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{home}\".queue"))
        .fetch_one(setup.pool())
        .await
        .unwrap();
    sqlx::raw_sql(&format!("DROP SCHEMA \"{home}\" CASCADE"))
        .execute(setup.pool())
        .await
        .unwrap();
    put.unwrap();
    assert_eq!(
        (in_decoy, at_home),
        (0, 1),
        "the job went to the table pq resolved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_job_wakes_a_consumer_waiting_for_its_queue() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("released");
    let id = queue.put(&"once").await.unwrap();
    let claim = Claimer::new(&db.pq, &["released"])
        .await
        .claim_one(id)
        .await;
    let started = Instant::now();
    let waiting = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.get_timeout(Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(db.pq.release(&[claim]).await.unwrap(), [id]);
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.map(|job| job.id()), Some(id));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_claim_of_large_jobs_writes_no_temporary_files() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("large");
    let payload = "x".repeat(8 << 20);
    for _ in 0..8 {
        queue.put(&payload).await.unwrap();
    }
    // One connection: the claim's counts are flushed by the statement after it.
    let one = pq::Pq::builder()
        .schema(&db.schema)
        .max_connections(1)
        .connect(&database_url())
        .await
        .unwrap();
    let temp_bytes = |pq: pq::Pq| async move {
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(pq.pool())
            .await
            .unwrap();
        let bytes: i64 = sqlx::query_scalar(
            "SELECT temp_bytes FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(pq.pool())
        .await
        .unwrap();
        bytes
    };
    let mut claimer = Claimer::new(&one, &["large"]).await;
    let before = temp_bytes(one.clone()).await;
    let jobs = claimer.claim(8).await;
    let written = temp_bytes(one.clone()).await - before;
    assert_eq!(jobs.len(), 8);
    assert!(jobs.iter().all(|job| job.size() == payload.len() + 2));
    assert!(
        written < 4 << 20,
        "a claim of 64 MB of jobs wrote {written} bytes of temporary files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_hands_out_every_job_it_takes_while_puts_commit_beside_it() {
    let db = TestDb::new().await;
    let putting = {
        let queue = db.pq.queue("busy");
        tokio::spawn(async move {
            for n in 0..3000 {
                queue.put(&n).await.unwrap();
            }
        })
    };
    let mut claimer = Claimer::new(&db.pq, &["busy"]).await;
    let mut handed_out = 0;
    while !putting.is_finished() {
        let jobs = claimer.claim(16).await;
        let Some(number) = jobs.first().and_then(|job| job.claim()).map(|c| c.number) else {
            continue;
        };
        let taken: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {} WHERE claim_id = $1",
            db.pq.table()
        ))
        .bind(number)
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(
            taken,
            jobs.len() as i64,
            "claim {number} took jobs it did not hand out"
        );
        handed_out += jobs.len();
    }
    putting.await.unwrap();
    assert!(handed_out > 0);
}
