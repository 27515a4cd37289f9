//! pq's task runtime: the [`Task`] trait that `#[pq::task]` implements, the [`Registry`] of
//! every task linked into the program, and the [`Worker`] that runs them.
//!
//! Use it through the `pq` crate, which re-exports everything here.

mod batch;
mod cancel;
mod complete;
mod context;
mod cron;
mod execute;
mod heartbeat;
mod registry;
mod report;
mod retry;
mod shutdown;
mod task;
mod trace;
mod worker;
mod workflow;

pub mod metrics;
#[doc(hidden)]
pub mod private;
pub mod testing;

pub use batch::TaskBatch;
pub use context::TaskContext;
pub use cron::{Cron, OnMissed, Schedule, ScheduleError, MAX_CATCH_UP, ON_TIME};
pub use registry::{DuplicateTask, Handler, Registry, TaskDefinition, MAX_RESULT};
pub use report::{Report, RunError, MAX_ERRORS};
pub use task::{
    Backoff, BoxFuture, FromEnqueued, IntoTaskResult, OnCancel, RunResult, Task, TaskCall,
    TaskError, TaskOptions, TaskResult, UniqueTask,
};
#[cfg(feature = "otel")]
pub use trace::PARENT_WITHIN;
pub use worker::{Worker, WorkerError, PREFETCH_MOST, PREFETCH_WAIT, RECORDING};
#[doc(hidden)]
pub use workflow::Target;
pub use workflow::{After, EnqueuedWorkflow, Node, ResultOf, Workflow};

/// The message of a caught panic: its `&str` or `String` payload, if it has one.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}
