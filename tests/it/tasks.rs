//! Task calls: what calling a `#[pq::task]` function writes when enqueued, and what the
//! registry holds.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pq::{Backoff, JobId, JobInfo, Pq, Registry, Task, TaskOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::support::TestDb;

#[pq::task(
    name = "it::tasks::eat",
    queue = "apples",
    schedule_at = "1h",
    expected_at = "2h",
    max_retries = 2,
    retry_in = "10s",
    backoff = "exponential",
    timeout = "5m"
)]
async fn eat(ctx: pq::TaskContext, kind: String, count: u32) {
    let _ = (ctx, kind, count);
}

#[pq::task]
fn tally(job_id: JobId, n: i64) {
    let _ = (job_id, n);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Apple {
    Cox,
    Gala { ripe: bool },
    Weighed(f64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Basket {
    owner: String,
    apples: Vec<Apple>,
    price: Option<BTreeMap<String, u32>>,
}

#[pq::task(queue = "baskets")]
async fn pack(
    basket: Basket,
    loose: Vec<Apple>,
    label: Option<String>,
    no_label: Option<String>,
    greeting: String,
    tags: Vec<String>,
) -> anyhow::Result<()> {
    let _ = (basket, loose, label, no_label, greeting, tags);
    Ok(())
}

/// The ids of a batch's jobs, in the order of its calls.
fn ids_of(written: Vec<pq::Enqueued>) -> Vec<JobId> {
    written.into_iter().map(pq::Enqueued::id).collect()
}

async fn stored(pq: &Pq, id: JobId) -> Option<JobInfo> {
    pq.admin().job(id).await.expect("read the job")
}

/// Asserts that `actual` is `expected` give or take half a minute, the slack between the
/// database's clock and the test's.
#[track_caller]
fn assert_about(actual: Option<DateTime<Utc>>, expected: DateTime<Utc>) {
    let actual = actual.expect("a time is stored");
    let off_by = (actual - expected).num_seconds().abs();
    assert!(off_by < 30, "stored {actual}, expected about {expected}");
}

fn from_now(duration: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(duration).expect("a small duration")
}

#[tokio::test]
async fn a_task_without_options_goes_to_the_default_queue_to_run_now() {
    let db = TestDb::new().await;

    let id = tally(5).enqueue(&db.pq).await.unwrap();

    let job = stored(&db.pq, id).await.expect("stored");
    assert_eq!(job.queue, "default");
    assert_eq!(job.task.as_deref(), Some(<tally as Task>::NAME));
    assert!(<tally as Task>::NAME.ends_with("::tasks::tally"));
    assert_eq!(job.data, json!({ "n": 5 }));
    assert_eq!(job.schedule_at, None);
    assert_eq!(job.expected_at, None);
}

#[tokio::test]
async fn a_task_call_stores_the_attributes_queue_name_and_times() {
    let db = TestDb::new().await;

    let id = eat("Cox".into(), 3).enqueue(&db.pq).await.unwrap();

    let job = stored(&db.pq, id).await.expect("stored");
    assert_eq!(job.queue, "apples");
    assert_eq!(job.task.as_deref(), Some("it::tasks::eat"));
    assert_eq!(job.data, json!({ "kind": "Cox", "count": 3 }));
    assert_about(job.schedule_at, from_now(Duration::from_secs(3600)));
    assert_about(job.expected_at, from_now(Duration::from_secs(7200)));
}

#[tokio::test]
async fn per_call_overrides_replace_the_attributes_defaults() {
    let db = TestDb::new().await;
    let tomorrow = Utc::now() + chrono::Duration::days(1);

    let id = eat("Cox".into(), 3)
        .schedule_at("1m")
        .expected_at(tomorrow)
        .queue("pears")
        .enqueue(&db.pq)
        .await
        .unwrap();

    let job = stored(&db.pq, id).await.expect("stored");
    assert_eq!(job.queue, "pears");
    assert_eq!(job.task.as_deref(), Some("it::tasks::eat"));
    assert_about(job.schedule_at, from_now(Duration::from_secs(60)));
    assert_about(job.expected_at, tomorrow);
}

#[tokio::test]
async fn a_bad_per_call_time_is_an_error_and_writes_nothing() {
    let db = TestDb::new().await;

    let enqueued = tally(1).schedule_at("soon").enqueue(&db.pq).await;

    assert!(enqueued.is_err(), "{enqueued:?}");
    assert_eq!(db.pq.queue("default").len().await.unwrap(), 0);
}

#[tokio::test]
async fn a_task_enqueued_in_a_rolled_back_transaction_leaves_no_job() {
    let db = TestDb::new().await;

    let mut tx = db.pool().begin().await.unwrap();
    let id = tally(1).enqueue(db.pq.on(&mut tx)).await.unwrap();
    assert!(stored(&db.pq, id).await.is_none(), "visible before commit");
    tx.rollback().await.unwrap();
    assert!(stored(&db.pq, id).await.is_none());

    let mut tx = db.pq.queue("default").begin().await.unwrap();
    let id = tally(2).enqueue(&mut tx).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(stored(&db.pq, id).await.is_none());
}

#[tokio::test]
async fn a_task_enqueued_in_a_committed_transaction_is_stored() {
    let db = TestDb::new().await;

    let mut tx = db.pool().begin().await.unwrap();
    let id = tally(3).enqueue(db.pq.on(&mut tx)).await.unwrap();
    tx.commit().await.unwrap();

    let job = stored(&db.pq, id).await.expect("stored");
    assert_eq!(job.data, json!({ "n": 3 }));
}

#[tokio::test]
async fn a_batch_of_calls_of_several_tasks_writes_each_with_its_own_options_in_order() {
    let db = TestDb::new().await;
    let mut batch: pq::TaskBatch = (0..500).map(tally).collect();
    batch.push(eat("Cox".into(), 3));
    batch.push(eat("Gala".into(), 1).queue("pears").schedule_at("1m"));
    batch.extend([tally(500).expected_at("2h")]);
    assert_eq!(batch.len(), 503);

    let ids = ids_of(batch.enqueue(&db.pq).await.unwrap());

    assert_eq!(ids.len(), 503);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in the order of the calls"
    );
    for (n, id) in ids[..500].iter().enumerate() {
        let job = stored(&db.pq, *id).await.expect("stored");
        assert_eq!(job.data, json!({ "n": n }));
        assert_eq!((job.queue.as_str(), job.schedule_at), ("default", None));
    }
    let cox = stored(&db.pq, ids[500]).await.unwrap();
    assert_eq!(
        (cox.queue.as_str(), cox.task.as_deref()),
        ("apples", Some("it::tasks::eat"))
    );
    assert_about(cox.schedule_at, from_now(Duration::from_secs(3600)));
    let gala = stored(&db.pq, ids[501]).await.unwrap();
    assert_eq!(gala.data, json!({ "kind": "Gala", "count": 1 }));
    assert_eq!(gala.queue, "pears");
    assert_about(gala.schedule_at, from_now(Duration::from_secs(60)));
    let last = stored(&db.pq, ids[502]).await.unwrap();
    assert_about(last.expected_at, from_now(Duration::from_secs(7200)));
}

#[tokio::test]
async fn a_batch_with_one_bad_call_writes_nothing_and_one_in_a_rolled_back_transaction_leaves_nothing(
) {
    let db = TestDb::new().await;
    let mut batch = pq::TaskBatch::new();
    batch.push(tally(1));
    batch.push(tally(2).schedule_at("soon"));
    batch.push(tally(3));
    let error = batch.enqueue(&db.pq).await.unwrap_err();
    assert!(error.to_string().contains("soon"), "{error}");
    assert_eq!(db.pq.queue("default").len().await.unwrap(), 0);

    let mut tx = db.pool().begin().await.unwrap();
    let batch: pq::TaskBatch = (0..3).map(tally).collect();
    let ids = ids_of(batch.enqueue(db.pq.on(&mut tx)).await.unwrap());
    tx.rollback().await.unwrap();
    assert!(stored(&db.pq, ids[0]).await.is_none());

    let mut tx = db.pq.queue("default").begin().await.unwrap();
    let batch: pq::TaskBatch = (0..3).map(tally).collect();
    batch.enqueue(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.pq.queue("default").len().await.unwrap(), 3);

    assert_eq!(pq::TaskBatch::new().enqueue(&db.pq).await.unwrap(), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_wakes_the_workers_of_each_of_its_queues() {
    let db = TestDb::new().await;
    // A worker that would look by itself only after a minute: only a notification wakes it.
    let worker = crate::support::Running::start(
        pq::Worker::new(db.pq.clone())
            .queues(["apples", "pears"])
            .poll_interval(Duration::from_secs(60)),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut batch = pq::TaskBatch::new();
    batch.push(eat("Cox".into(), 1).schedule_at("0s"));
    batch.push(eat("Gala".into(), 1).schedule_at("0s").queue("pears"));
    let ids = ids_of(batch.enqueue(&db.pq).await.unwrap());
    let enqueued = std::time::Instant::now();
    crate::support::eventually(|| async {
        stored(&db.pq, ids[0]).await.is_none() && stored(&db.pq, ids[1]).await.is_none()
    })
    .await;
    // Woken, both ran at once; unwoken, the worker finds them at its heartbeat (10 s).
    assert!(
        enqueued.elapsed() < Duration::from_secs(5),
        "{:?}",
        enqueued.elapsed()
    );
    worker.stop().await.unwrap().unwrap();
}

#[tokio::test]
async fn arguments_round_trip_through_the_stored_job() {
    let db = TestDb::new().await;
    let basket = Basket {
        owner: "Zoë Ångström 林檎 🍎".into(),
        apples: vec![
            Apple::Cox,
            Apple::Gala { ripe: true },
            Apple::Weighed(0.215),
        ],
        price: Some(BTreeMap::from([("€".to_owned(), 3), ("¥".to_owned(), 500)])),
    };
    let loose = vec![Apple::Weighed(-1.5e-7), Apple::Gala { ripe: false }];
    let greeting =
        "\"quoted\" \\ back\tslash\nnew line, RTL \u{5e9}\u{5dc}\u{5d5}\u{5dd}, NUL \u{0}";
    let tags = vec![String::new(), "𝄞".into(), "a\u{301}".into()];

    let call = pack(
        basket.clone(),
        loose.clone(),
        Some("ripe".into()),
        None,
        greeting.into(),
        tags.clone(),
    );
    let id = call.enqueue(&db.pq).await.unwrap();

    let job = stored(&db.pq, id).await.expect("stored");
    let keys: Vec<_> = job
        .data
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        keys,
        ["basket", "greeting", "label", "loose", "no_label", "tags"],
        "one key per argument, by parameter name"
    );
    let args: pack = serde_json::from_value(job.data).unwrap();
    assert_eq!(args.basket, basket);
    assert_eq!(args.loose, loose);
    assert_eq!(args.label.as_deref(), Some("ripe"));
    assert_eq!(args.no_label, None);
    assert_eq!(args.greeting, greeting);
    assert_eq!(args.tags, tags);
}

#[test]
fn the_registry_lists_every_task_with_its_options_and_location() {
    let registry = Registry::from_inventory().expect("no two tasks share a name");

    let eat = registry.get("it::tasks::eat").expect("eat is registered");
    assert_eq!(
        eat.options,
        TaskOptions {
            queue: "apples",
            schedule_at: Some(Duration::from_secs(3600)),
            expected_at: Some(Duration::from_secs(7200)),
            max_retries: 2,
            retry_in: Duration::from_secs(10),
            backoff: Backoff::Exponential,
            timeout: Some(Duration::from_secs(300)),
            on_cancel: pq::OnCancel::Cooperate,
            unique: None,
            keep_result: Duration::from_secs(24 * 3600),
            cron: None,
            flow: None,
        }
    );
    assert!(
        eat.location.starts_with("tests/it/tasks.rs:"),
        "{}",
        eat.location
    );

    let tally = registry
        .get(<tally as Task>::NAME)
        .expect("tally is registered");
    assert_eq!(tally.options, TaskOptions::DEFAULT);

    let pack = registry
        .get(<pack as Task>::NAME)
        .expect("pack is registered");
    assert_eq!(pack.options.queue, "baskets");

    let queues = registry.queues();
    for queue in ["apples", "baskets", "default"] {
        assert!(queues.contains(&queue), "{queue} in {queues:?}");
    }
}
