//! TLS, against a PostgreSQL server of the test's own that takes TLS connections only, with a
//! certificate made by openssl and signed by a CA of its own: `sslmode=require` and
//! `verify-full` work for the library and the worker, and a refused certificate or connection
//! is not transient.

use std::time::Duration;

use pq::{Pq, TaskContext, Worker};
use pq_pgserver::Server;

use crate::support::{record_run, runs_of, unique_schema};

fn url(server: &Server, query: &str) -> String {
    format!("{}?{query}", server.url())
}

#[pq::task(queue = "tls")]
async fn over_tls(ctx: TaskContext) {
    record_run(&ctx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_enqueued_and_worked_over_tls_with_sslmode_require_and_verify_full() {
    let tls = Server::start_tls_only("works").await.unwrap();
    // A schema no other test's table has, as runs are counted by table name.
    let schema = unique_schema("tls");
    let pq = Pq::builder()
        .schema(&schema)
        .connect(&url(&tls, "sslmode=require"))
        .await
        .unwrap();
    pq.create().await.unwrap();
    let first = over_tls().enqueue(&pq).await.unwrap();
    let verified = format!(
        "sslmode=verify-full&sslrootcert={}",
        tls.ca_certificate().display()
    );
    let pq = Pq::builder()
        .schema(&schema)
        .connect(&url(&tls, &verified))
        .await
        .unwrap();
    let second = over_tls().enqueue(&pq).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        Worker::new(pq.clone()).queues(["tls"]).burst().run(),
    )
    .await
    .expect("a burst worker returns")
    .unwrap();
    assert_eq!((runs_of(&pq, first), runs_of(&pq, second)), (1, 1));
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(pq.pool())
            .await
            .unwrap();
    assert!(encrypted);
}

#[tokio::test]
async fn a_refused_certificate_or_a_connection_without_tls_is_not_transient() {
    let tls = Server::start_tls_only("refused").await.unwrap();
    for (query, says) in [
        // Signed by the test's own CA, which no root vouches for.
        ("sslmode=verify-full", "certificate"),
        ("sslmode=disable", "no encryption"),
    ] {
        let error = Pq::builder().connect(&url(&tls, query)).await.unwrap_err();
        assert!(!error.is_transient(), "{query}: {error}");
        assert!(error.to_string().contains(says), "{query}: {error}");
    }
}
