//! pq keeps the connections of its own statements between statements (sqlx checks each one
//! that returns to the pool with a round trip): the application's pool must not lose them.

use std::time::Duration;

use pq::Pq;

use crate::support::{database_url, TestDb};

async fn pq_with_pool_of(db: &TestDb, size: u32) -> Pq {
    Pq::builder()
        .schema(&db.schema)
        .max_connections(size)
        .connect(&database_url())
        .await
        .expect("connect")
}

#[tokio::test]
async fn connections_kept_after_puts_return_to_the_pool_once_idle() {
    let db = TestDb::new().await;
    // Room for one more than the puts need, so that pq keeps theirs.
    let pq = pq_with_pool_of(&db, 4).await;
    let queue = pq.queue("apples");
    // Three puts at once take all three connections; pq keeps them afterwards.
    let queue_ref = &queue;
    let puts = (0..3).map(|n| async move { queue_ref.put(&n).await });
    for id in futures_util::future::join_all(puts).await {
        id.expect("put");
    }
    // Returned, a connection would be idle in the pool once sqlx's check of it (a round trip)
    // is done; kept, it is not there for IDLE (250 ms).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(pq.pool().size() > 0);
    assert_eq!(pq.pool().num_idle(), 0, "pq kept its connections");

    // The application gets every one of them back, with no wait near the pool's 5 s timeout.
    let mut held = Vec::new();
    for _ in 0..4 {
        let acquired = tokio::time::timeout(Duration::from_secs(3), pq.pool().acquire()).await;
        held.push(
            acquired
                .expect("kept connections return to the pool")
                .expect("acquire"),
        );
    }
    // And pq, with none free, waits for one rather than fail.
    let put = tokio::spawn({
        let queue = queue.clone();
        async move { queue.put(&"later").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!put.is_finished(), "a put needs a connection of the pool");
    drop(held);
    put.await
        .expect("join")
        .expect("put once a connection is free");
    assert_eq!(queue.len().await.expect("len"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pq_does_not_keep_a_connection_someone_waits_for() {
    let db = TestDb::new().await;
    let pq = pq_with_pool_of(&db, 2).await;
    let mine = pq.pool().acquire().await.expect("acquire");
    // pq puts without a pause on the pool's other connection...
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let putter = tokio::spawn({
        let queue = pq.queue("busy");
        let stop = std::sync::Arc::clone(&stop);
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                queue.put(&1).await.expect("put");
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...and the application, wanting a second one, gets it between two puts, not when pq
    // stops (a kept connection in constant use would never sit idle long enough to return).
    let second = tokio::time::timeout(Duration::from_secs(2), pq.pool().acquire()).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let second = second.expect("served while pq is busy").expect("acquire");
    drop((mine, second));
    putter.await.expect("join");
}

#[tokio::test]
async fn closing_the_pool_does_not_wait_on_kept_connections() {
    let db = TestDb::new().await;
    let pq = pq_with_pool_of(&db, 2).await;
    pq.queue("apples").put(&1).await.expect("put");
    tokio::time::timeout(Duration::from_secs(3), pq.pool().close())
        .await
        .expect("the pool closes although pq kept a connection");
    assert!(
        pq.queue("apples").put(&2).await.is_err(),
        "a closed pool refuses work"
    );
}

#[tokio::test]
async fn a_connection_whose_statement_failed_is_not_kept() {
    let db = TestDb::new().await;
    let pq = pq_with_pool_of(&db, 1).await;
    let queue = pq.queue("apples");
    queue.put(&1).await.expect("put");
    // Ends the pool's only connection from the server's side, as a server restart would.
    let terminated = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND application_name = '' AND query LIKE 'INSERT INTO \"' || $1 || '\".%'",
    )
    .bind(&db.schema)
    .fetch_all(db.pool())
    .await
    .expect("terminate");
    assert_eq!(terminated.len(), 1, "the connection of the put is found");
    // The kept connection was used moments ago, so it is not checked: its next statement
    // fails, once. It is not kept, so the one after gets a new connection.
    let mut failures = 0;
    for n in 2..5 {
        if let Err(error) = queue.put(&n).await {
            assert!(error.is_transient(), "{error}: worth a retry");
            failures += 1;
        }
    }
    assert!(
        failures <= 1,
        "{failures} puts failed after one dropped connection"
    );
    assert!(queue.len().await.expect("len") >= 3);
}
