//! Behind PgBouncer in transaction pooling mode: each transaction gets whichever server
//! connection is free, so pq may keep nothing in a session there.

use std::time::Duration;

use pq::{Pq, TaskContext, Worker};
use pq_pgserver::Bouncer;
use sqlx::postgres::PgConnectOptions;

use crate::support::{database_url, record_run, runs_of, TestDb};

#[pq::task(queue = "pooled")]
async fn counted(ctx: TaskContext, n: u32) {
    record_run(&ctx);
    if n.is_multiple_of(3) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The tests' database's name.
fn database() -> String {
    let server: PgConnectOptions = database_url().parse().expect("DATABASE_URL");
    server.get_database().unwrap_or("postgres").to_owned()
}

/// A PgBouncer of the test's own in front of the tests' server.
async fn bouncer(label: &str) -> Bouncer {
    let server: PgConnectOptions = database_url().parse().expect("DATABASE_URL");
    Bouncer::start(label, server.get_port())
        .await
        .expect("start pgbouncer (.ci/run installs it)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_producers_through_a_transaction_pooler_run_every_job_once() {
    let bouncer = bouncer("workers").await;
    let db = TestDb::new().await;
    let handle = || async {
        Pq::builder()
            .schema(&db.schema)
            .transaction_pooler()
            .direct_url(&database_url())
            .connect(&bouncer.url(&database()))
            .await
            .expect("connect through pgbouncer")
    };
    let pq = handle().await;
    pq.create()
        .await
        .expect("migrations through the direct URL");

    // More clients than the bouncer has server connections: they share them, one
    // transaction at a time, as a fleet would.
    let producers: Vec<Pq> = futures_util::future::join_all((0..3).map(|_| handle())).await;
    let mut ids = Vec::new();
    for (n, producer) in (0..300).zip(producers.iter().cycle()) {
        ids.push(counted(n).enqueue(producer).await.expect("enqueue"));
    }
    let workers = (0..3).map(|_| async {
        let pq = handle().await;
        Worker::new(pq)
            .queues(["pooled"])
            .concurrency(16)
            .burst()
            .run()
            .await
    });
    for outcome in tokio::time::timeout(
        Duration::from_secs(120),
        futures_util::future::join_all(workers),
    )
    .await
    .expect("the workers drain the queue")
    {
        outcome.expect("a worker behind the pooler");
    }
    for id in ids {
        assert_eq!(runs_of(&pq, id), 1, "job {id}");
    }
    assert_eq!(pq.queue("pooled").len().await.unwrap(), 0);
}

#[tokio::test]
async fn without_a_direct_url_workers_poll_and_migrations_say_where_to_run() {
    let bouncer = bouncer("polling").await;
    let db = TestDb::new().await;
    let pq = Pq::builder()
        .schema(&db.schema)
        .transaction_pooler()
        .connect(&bouncer.url(&database()))
        .await
        .unwrap();
    assert!(!pq.listens());
    let error = pq.create().await.unwrap_err();
    assert!(
        matches!(error, pq::Error::NoDirectConnection { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("direct_url"), "{error}");

    let worker = crate::support::Running::start(Worker::new(pq.clone()).queues(["pooled"]));
    // Enqueued while the worker sleeps: nothing notifies it, its poll finds the job.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = counted(1).enqueue(&pq).await.unwrap();
    crate::support::wait_until(|| runs_of(&pq, id) == 1).await;
    // A blocking get polls too.
    let got = tokio::spawn({
        let queue = pq.queue("polled");
        async move { queue.get_timeout(Duration::from_secs(20)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    pq.queue("polled").put(&"x").await.unwrap();
    let job = got.await.unwrap().unwrap().expect("the get found the job");
    assert_eq!(job.data::<String>().unwrap(), "x");
    worker.stop().await.unwrap().unwrap();
}
