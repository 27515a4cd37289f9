//! Integration tests against a real PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Each test works in a schema of its own, so the
//! suite runs in parallel. One test binary keeps link times down.
//!
//! `.ci/run` runs them once more through PgBouncer in transaction pooling mode
//! (`PQ_TEST_POOLER_URL`, set by `pq-pgserver/src/bin/with-pgbouncer.rs`): the tables' handles
//! connect through it, the tests' own statements directly (`support::direct`). So handlers'
//! own statements are not kept prepared (`.persistent(false)`), as behind such a pooler they
//! must not be.

mod admin;
mod cancellation;
mod connections;
mod control;
mod dependencies;
mod errors;
mod faults;
mod fencing;
mod flow;
mod idle;
mod leases;
mod metrics;
mod migrations;
mod model;
mod order;
#[cfg(feature = "otel")]
mod otel;
mod outcomes;
mod poison;
mod pooler;
mod proxy;
mod queue;
mod results;
mod steps;
mod support;
mod tasks;
mod testing;
mod tls;
mod unique;
mod worker;
