//! pq's queue core: one PostgreSQL table holds every queue; jobs go in with
//! [`put`](Queue::put) and come out with [`get`](Queue::get), in order of schedule and
//! priority, with `FOR UPDATE SKIP LOCKED` so that concurrent consumers never share a job, and
//! LISTEN/NOTIFY to wake blocked consumers at once.
//!
//! Use it through the `pq` crate, which re-exports everything here.

mod admin;
mod connections;
mod enqueue;
mod error;
mod flow;
mod graph;
mod job;
mod lease;
mod listen;
mod migrate;
mod pq;
pub mod protocol;
mod queue;
mod results;
mod schedules;
mod sql;
mod steps;
mod timestamp;
mod transaction;
mod when;
mod workers;
mod workflows;

pub use admin::{
    Admin, AttemptError, Batch, JobFilter, JobInfo, JobState, Page, ParseJobStateError, QueueStats,
    Unrunnable, DEFAULT_BATCH_SIZE,
};
pub use enqueue::{Enqueue, OnConnection};
pub use error::{Error, Result};
pub use flow::{
    FlowDeclaration, FlowPolicy, LimitInfo, Limits, QueueLimits, Rate, Sequence, MAX_RATE_PERIOD,
    MAX_RATE_PER_SECOND,
};
pub use graph::{Edge, Graph, Input, OnParentFailure, Parent, WorkflowId, WrittenGraph};
pub use job::{Enqueued, Job, JobId, NewJob, OnConflict};
pub use lease::MAX_SNOOZES;
pub use listen::Subscription;
pub use migrate::{Function, Migration, FUNCTIONS, LATEST, MIGRATIONS};
pub use pq::{Pq, PqBuilder, DEFAULT_GET_TIMEOUT, DEFAULT_STATEMENT_TIMEOUT};
pub use queue::{IdleDelay, Put, PutMany, Queue};
pub use results::JobHandle;
pub use schedules::{
    fired_job, DueSchedule, Firing, ScheduleDefinition, ScheduleInfo, DECLARE_EVERY,
    FIRING_STALLS_AFTER, ORPHANED_AFTER,
};
pub use transaction::Transaction;
pub use when::{parse_duration, IntoWhen, When, MAX_DELAY};
pub use workers::{WorkerId, WorkerRow};
pub use workflows::{DependencyInfo, WorkflowInfo};
