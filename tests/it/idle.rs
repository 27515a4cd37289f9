//! What an idle worker costs: a few statements per poll interval, however many queues it works
//! and whatever other sessions hold open. Counted at a proxy between the worker and the
//! database.

use std::time::Duration;

use pq::Worker;

use crate::proxy::Proxy;
use crate::support::{Running, TestDb};

/// Runs a worker on `queues` through a proxy for `idle`, and returns the statements it sent
/// after its first second (start-up, subscriptions and its first looks).
async fn statements_while_idle(db: &TestDb, queues: Vec<String>, idle: Duration) -> u64 {
    let proxy = Proxy::start().await;
    let pq = db.handle_at(&proxy.url()).await;
    let worker = Running::start(
        Worker::new(pq)
            .queues(queues)
            .poll_interval(Duration::from_secs(1)),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = proxy.statements();
    tokio::time::sleep(idle).await;
    let sent = proxy.statements() - before;
    worker.stop().await.unwrap().unwrap();
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_does_not_spin_while_another_session_that_enqueued_stays_open() {
    let db = TestDb::new().await;
    // The application's transaction: it enqueued on another queue, and stays open.
    let mut open = db.pq.queue("elsewhere").begin().await.unwrap();
    open.put(&"pending").await.unwrap();
    let sent = statements_while_idle(&db, vec!["idle".into()], Duration::from_secs(4)).await;
    open.rollback().await.unwrap();
    // A poll a second (claim, wait) is 8 statements; a few looks again while the wait is
    // unproven are allowed.
    assert!(sent <= 24, "{sent} statements in 4 s of idling");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_on_a_thousand_queues_costs_what_one_queue_does() {
    let db = TestDb::new().await;
    let queues: Vec<String> = (0..1000).map(|n| format!("queue {n}")).collect();
    let sent = statements_while_idle(&db, queues, Duration::from_secs(3)).await;
    assert!(sent <= 18, "{sent} statements in 3 s of idling");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_worker_does_not_spin_on_a_job_another_session_holds() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("held");
    queue.put(&"taken by someone else").await.unwrap();
    let mut taker = queue.begin().await.unwrap();
    assert!(taker.try_get().await.unwrap().is_some());
    let proxy = Proxy::start().await;
    let pq = db.handle_at(&proxy.url()).await;
    // Nothing it could claim: the burst worker returns, or at least waits without spinning.
    let run = Worker::new(pq)
        .registry(pq::Registry::default())
        .queues(["held"])
        .burst()
        .run();
    let _ = tokio::time::timeout(Duration::from_secs(2), run).await;
    let sent = proxy.statements();
    taker.rollback().await.unwrap();
    assert!(sent <= 20, "{sent} statements in 2 s");
}
