//! # pq
//!
//! A transactional job queue for PostgreSQL: one table holds every queue; typed task functions
//! enqueue themselves when called; workers run them with retries, leases and graceful shutdown.
//!
//! ```no_run
//! #[pq::task(queue = "apples", max_retries = 2, retry_in = "10s")]
//! async fn eat(ctx: pq::TaskContext, kind: String) -> anyhow::Result<()> {
//!     println!("job {}: umm, {kind} apples taste good", ctx.job_id());
//!     Ok(())
//! }
//!
//! # async fn example() -> Result<(), pq::Error> {
//! let pq = pq::Pq::connect("postgres://postgres@127.0.0.1/test").await?;
//! pq.create().await?;
//! let id = eat("Cox".into()).enqueue(&pq).await?; // a row in PostgreSQL, nothing runs yet
//! # Ok(()) }
//! ```
//!
//! The queue API ([`Pq`], [`Queue`], [`Job`], [`Transaction`]) comes from `pq-core`, the task
//! runtime ([`Task`], [`TaskCall`], [`TaskContext`], [`Registry`], [`Worker`]) from
//! `pq-worker`, and the [`task`] attribute from `pq-macros`. [`testing`] runs tasks in your
//! tests, [`metrics`] names what workers measure, and [`protocol`] is the worker's own
//! protocol, for building a worker of your own.
//!
//! # Features
//!
//! - `tls` (default): `sslmode` in connection URLs, by rustls with ring and the webpki roots.
//! - `cli`: [`cli`], the `pq` tool's commands, to embed in your own binary.
//! - `otel`: an enqueue stores its span's OpenTelemetry trace context with the job, and each
//!   run joins that trace (for tracing-opentelemetry 0.34's layer); see the README's
//!   "In production".

// Lets pq's own tests and doc tests use `#[pq::task]`, whose expansion names `::pq`.
extern crate self as pq;

pub use pq_core::*;
pub use pq_macros::task;
pub use pq_worker::*;

/// The `pq` command-line tool's commands, to embed in your own binary, which then also offers
/// `work` with its own registered tasks. Needs the `cli` feature.
///
/// ```no_run
/// #[pq::task]
/// async fn eat(kind: String) {}
///
/// #[tokio::main]
/// async fn main() -> std::process::ExitCode {
///     pq::cli::main().await // `my-app status`, `my-app jobs list --state failed`, `my-app work`...
/// }
/// ```
#[cfg(feature = "cli")]
pub use pq_cli as cli;

/// The README's examples, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[doc(hidden)]
pub mod __private {
    pub use inventory;
    pub use serde;
    pub use serde_json;

    pub use pq_worker::private::{assert_argument, run_blocking, unique_key};

    pub use pq_worker::{
        Backoff, BoxFuture, IntoTaskResult, OnCancel, Task, TaskDefinition, TaskError, TaskOptions,
        UniqueTask,
    };
}
