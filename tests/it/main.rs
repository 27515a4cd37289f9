//! Integration tests against a real PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Each test works in a schema of its own, so the
//! suite runs in parallel. One test binary keeps link times down.

mod admin;
mod cancellation;
mod connections;
mod control;
mod errors;
mod faults;
mod fencing;
mod idle;
mod leases;
mod metrics;
mod migrations;
mod model;
mod order;
mod outcomes;
mod poison;
mod proxy;
mod queue;
mod support;
mod tasks;
mod tls;
mod worker;
