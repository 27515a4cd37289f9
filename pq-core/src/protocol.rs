//! The worker's protocol, for building a worker of your own: [`pq::Worker`] runs it for you,
//! and most programs never need what is here.
//!
//! A worker registers ([`Pq::register_worker`], with its [`WorkerInfo`]) and renews its
//! registration with a [`Pq::heartbeat`] every third of its lease. It claims ready jobs of its
//! queues ([`Pq::claim`] with its [`ClaimQueues`]), each under a [`Claim`]: the fence of
//! everything done to that run afterwards, which never repeats, so a run that is no longer its
//! job's live one (rescued, released, retried by an operator) changes nothing. It records each
//! run's outcome: [`Pq::complete`] (or [`Pq::complete_claims`], batched), [`Pq::fail`] with a
//! [`Failed`] saying what follows ([`Failure`]), or [`Pq::release`] to give a job back
//! unrun. When a worker's heartbeat runs out, any worker's [`Pq::rescue`] returns its jobs to
//! the queue; a worker that stops calls [`Pq::deregister_worker`], which gives back what it
//! still holds.
//!
//! ```no_run
//! use pq::protocol::{ClaimQueues, WorkerInfo};
//!
//! # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
//! let info = WorkerInfo {
//!     queues: vec!["apples".into()],
//!     concurrency: 8,
//!     lease: std::time::Duration::from_secs(30),
//!     version: "my-worker 1.0".into(),
//!     tasks: None, // jobs of any task
//! };
//! let worker = pq.register_worker(&info).await?;
//! let queues = ClaimQueues::new(["apples"])?;
//! let claimed = pq.claim(worker, &queues, 8).await?;
//! let claims: Vec<_> = claimed.jobs.iter().filter_map(pq::Job::claim).collect();
//! // ... run them, heartbeating meanwhile ...
//! pq.complete_claims(&claims, false).await?;
//! pq.deregister_worker(worker).await?;
//! # Ok(()) }
//! ```
//!
//! [`pq::Worker`]: https://docs.rs/pq/latest/pq/struct.Worker.html
//! [`Pq::register_worker`]: crate::Pq::register_worker
//! [`Pq::heartbeat`]: crate::Pq::heartbeat
//! [`Pq::claim`]: crate::Pq::claim
//! [`Pq::complete`]: crate::Pq::complete
//! [`Pq::complete_claims`]: crate::Pq::complete_claims
//! [`Pq::fail`]: crate::Pq::fail
//! [`Pq::release`]: crate::Pq::release
//! [`Pq::rescue`]: crate::Pq::rescue
//! [`Pq::deregister_worker`]: crate::Pq::deregister_worker

pub use crate::lease::{Claim, ClaimQueues, Claimed, Failed, Failure, Returned, CURSOR_LIFETIME};
pub use crate::workers::{Heartbeat, WorkerInfo};
