//! Helpers for your tests, through the real execution path against a real database: run what
//! is ready and see what came of it, run one job, find what a call enqueued, and make later
//! jobs due now.
//!
//! ```no_run
//! #[pq::task(max_retries = 1, retry_in = "1h")]
//! async fn welcome(user: i64) -> anyhow::Result<()> {
//!     Ok(())
//! }
//!
//! # async fn example(pq: pq::Pq) -> anyhow::Result<()> {
//! // The code under test enqueues...
//! welcome(7).enqueue(&pq).await?;
//! // ...the test checks what, then runs it.
//! let id = pq::testing::assert_enqueued(&pq, welcome(7)).await;
//! let report = pq::testing::run_job(&pq, id).await?;
//! assert_eq!(report.succeeded, 1, "{report}");
//! // Retries waiting an hour run now.
//! pq::testing::make_due(&pq).await?;
//! assert_eq!(pq::testing::run_ready(&pq).await?.failed, 0);
//! # Ok(()) }
//! ```
//!
//! To call a task's body directly, give it a [`TaskContext::new`](crate::TaskContext::new),
//! [`with_attempt`](crate::TaskContext::with_attempt) to test a retry.

use pq_core::{JobFilter, JobId, JobState, Pq};

use crate::task::{Task, TaskCall};
use crate::{Report, Worker, WorkerError};

/// Runs the ready jobs of every registered task's queue, and the retries that fall due
/// meanwhile, until none is ready or running (a [`burst`](Worker::burst) worker): what
/// their runs came to. Jobs scheduled for later stay; [`make_due`] them first to run them.
pub async fn run_ready(pq: &Pq) -> Result<Report, WorkerError> {
    Worker::new(pq.clone()).burst().run().await
}

/// Runs job `id` now, scheduled or not, its queue paused or not, and again while it fails with
/// a retry due at once: what its runs came to. A job that is not waiting (it ran, or is
/// running) is not run: the report counts nothing. As with any worker, a job whose task is not
/// registered in the program fails for good.
pub async fn run_job(pq: &Pq, id: JobId) -> Result<Report, WorkerError> {
    pq.admin().schedule_job_now(id).await?;
    Worker::new(pq.clone())
        .only_job(id)
        .concurrency(1)
        .burst()
        .run()
        .await
}

/// Makes every scheduled job ready now, retries waiting for their delay included; returns
/// how many. See [`Admin::schedule_now`](pq_core::Admin::schedule_now) for fewer.
pub async fn make_due(pq: &Pq) -> Result<u64, pq_core::Error> {
    pq.admin().schedule_now(&JobFilter::new()).await
}

/// The waiting jobs (ready or scheduled) that `call` would have enqueued: the same task, queue
/// and arguments. The call is typed as the task's own, so a test cannot name an argument
/// that the task does not have, nor give one of the wrong type.
pub async fn enqueued<T: Task>(pq: &Pq, call: TaskCall<T>) -> Result<Vec<JobId>, pq_core::Error> {
    let job = call.into_job()?;
    pq.admin().waiting_like(&job).await
}

/// Panics unless exactly one waiting job is what `call` would have enqueued, naming the task's
/// waiting jobs if none is; returns its id.
pub async fn assert_enqueued<T: Task>(pq: &Pq, call: TaskCall<T>) -> JobId {
    let described = serde_json::to_string(call.args()).unwrap_or_default();
    let found = enqueued(pq, call).await.expect("look for the enqueued job");
    match found.as_slice() {
        [id] => *id,
        [] => {
            let filter = JobFilter::new().task(T::NAME);
            let waiting = pq
                .admin()
                .list(&filter, None, 20)
                .await
                .map(|page| {
                    page.jobs
                        .iter()
                        .filter(|job| matches!(job.state, JobState::Ready | JobState::Scheduled))
                        .map(|job| format!("\n  job {} on {}: {}", job.id, job.queue, job.data))
                        .collect::<String>()
                })
                .unwrap_or_default();
            panic!(
                "no waiting job of {} with the arguments {described}; its waiting jobs:{}",
                T::NAME,
                if waiting.is_empty() {
                    " none"
                } else {
                    &waiting
                }
            )
        }
        many => panic!(
            "{} waiting jobs of {} with the arguments {described}: {many:?}",
            many.len(),
            T::NAME
        ),
    }
}
