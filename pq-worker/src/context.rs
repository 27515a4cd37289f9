//! [`TaskContext`]: what a running task knows about its job.

use chrono::{DateTime, Utc};
use pq_core::{JobId, Pq};

/// The job a task is running for, handed to a task function whose first parameter has this type.
///
/// ```no_run
/// #[pq::task(max_retries = 3)]
/// async fn ripen(ctx: pq::TaskContext, kind: String) -> anyhow::Result<()> {
///     println!("job {} attempt {} of queue {}", ctx.job_id(), ctx.attempt(), ctx.queue());
///     // Follow-up work is enqueued through the same handle.
///     eat(kind).enqueue(ctx.pq()).await?;
///     Ok(())
/// }
///
/// #[pq::task]
/// fn eat(kind: String) {}
/// ```
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) pq: Pq,
    pub(crate) job_id: JobId,
    pub(crate) queue: String,
    pub(crate) task: String,
    pub(crate) attempt: u32,
    pub(crate) enqueued_at: DateTime<Utc>,
}

impl TaskContext {
    /// A context for calling a task's body directly, in a unit test for example: `pq` may come
    /// from [`Pq::connect_lazy`], which connects only when used.
    pub fn new(pq: Pq, job_id: JobId, task: &str, queue: &str) -> Self {
        Self {
            pq,
            job_id,
            queue: queue.to_owned(),
            task: task.to_owned(),
            attempt: 1,
            enqueued_at: Utc::now(),
        }
    }

    /// The job's id, the primary key of its row.
    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    /// The queue the job was taken from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The task's name.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// Which run this is: 1 for the first, 2 for the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the job was enqueued.
    pub fn enqueued_at(&self) -> DateTime<Utc> {
        self.enqueued_at
    }

    /// The queue handle, to enqueue follow-up tasks or use its pool.
    pub fn pq(&self) -> &Pq {
        &self.pq
    }
}
