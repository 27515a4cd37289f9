//! Errors that say what to do: a database that refuses connections, a pool whose connections
//! are all in use, a table that was never created.

use std::time::Duration;

use pq::{Enqueue, Error, NewJob, Pq};

use crate::support::{database_url, unique_schema, TestDb};

/// A port nothing listens on: connections are refused at once.
const REFUSED: &str = "postgres://postgres@127.0.0.1:1/test";

#[tokio::test]
async fn a_database_that_refuses_connections_is_said_to_be_unreachable_and_why() {
    let error = Pq::builder().connect(REFUSED).await.unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("refused"), "{error}");
    assert!(error.is_transient(), "it may come up");

    let pq = Pq::builder()
        .schema("nowhere")
        .statement_timeout(Duration::from_secs(1))
        .connect_lazy(REFUSED)
        .unwrap();
    let error = pq.queue("q").put(&1).await.unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("an enqueue: cannot connect to the database")
            && error.to_string().contains("refused"),
        "{error}"
    );
}

#[tokio::test]
async fn a_pool_whose_connections_are_all_taken_says_so() {
    let db = TestDb::new().await;
    let pq = Pq::builder()
        .schema(&db.schema)
        .max_connections(1)
        .statement_timeout(Duration::from_secs(1))
        .connect(&database_url())
        .await
        .unwrap();
    let held = pq.pool().acquire().await.unwrap();
    let error = pq.queue("q").put(&1).await.unwrap_err();
    drop(held);
    assert!(
        matches!(error, Error::PoolBusy { size: 1, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("max_connections"), "{error}");
    assert!(error.is_transient());
}

#[tokio::test]
async fn enqueueing_before_the_table_exists_says_to_create_it() {
    let pq = Pq::builder()
        .schema(&unique_schema("no_table"))
        .connect(&database_url())
        .await
        .unwrap();
    let error = pq.queue("q").put(&1).await.unwrap_err();
    assert!(matches!(error, Error::NoTable { .. }), "{error:?}");
    assert!(error.to_string().contains("pq.create()"), "{error}");
    assert!(!error.is_transient());
    // The same inside the caller's own transaction, one job or many.
    let mut tx = pq.pool().begin().await.unwrap();
    let job = || NewJob::new("q", &1).unwrap();
    let error = pq.on(&mut tx).enqueue(job()).await.unwrap_err();
    assert!(matches!(error, Error::NoTable { .. }), "{error:?}");
    drop(tx);
    let mut tx = pq.pool().begin().await.unwrap();
    let error = pq.on(&mut tx).enqueue_many(vec![job(), job()]).await;
    assert!(matches!(error, Err(Error::NoTable { .. })), "{error:?}");
}

#[tokio::test]
async fn a_direct_url_without_a_transaction_pooler_is_refused_with_what_to_do() {
    let error = Pq::builder()
        .direct_url(&database_url())
        .connect_lazy(&database_url())
        .map(drop)
        .unwrap_err();
    assert!(matches!(error, Error::Settings(_)), "{error:?}");
    assert!(
        error.to_string().contains("transaction_pooler()"),
        "{error}"
    );
}
