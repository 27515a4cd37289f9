//! [`TaskBatch`]: task calls of any tasks, enqueued together in one statement.

use std::borrow::Cow;
use std::future::Future;

use futures_util::future::Either;
use futures_util::{FutureExt, TryFutureExt};
use pq_core::{Enqueue, Enqueued, NewJob};
use tracing::Instrument;

use crate::task::{Task, TaskCall};

/// Task calls of any tasks and queues, each with its own options, written by one statement:
/// a thousand jobs cost about what a few single enqueues do. On a transaction (or
/// `pq.on(&mut *tx)`), they exist only if it commits. A call that cannot be written (an
/// argument that does not encode, a time out of range) fails the whole batch, before anything
/// is written.
///
/// ```no_run
/// #[pq::task(queue = "mail")]
/// async fn send(to: String) -> anyhow::Result<()> {
///     Ok(())
/// }
///
/// #[pq::task]
/// async fn audit(sent: u32) {}
///
/// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
/// let addresses = ["a@example.com", "b@example.com"];
/// let mut batch: pq::TaskBatch = addresses.iter().map(|to| send(to.to_string())).collect();
/// batch.push(audit(2).schedule_at("1h"));
/// let written = batch.enqueue(&pq).await?; // in the order of the calls
/// assert_eq!(written.len(), 3);
/// let ids: Vec<pq::JobId> = written.iter().map(|job| job.id()).collect();
/// # Ok(()) }
/// ```
#[must_use = "a task batch does nothing until it is enqueued"]
pub struct TaskBatch {
    /// The jobs so far, or the first call that could not become one.
    jobs: Result<Vec<NewJob>, pq_core::Error>,
    /// How many jobs of each task and queue, in runs of the same, for the metrics.
    counts: Vec<(&'static str, Cow<'static, str>, u64)>,
    /// Calls pushed, those that failed included.
    len: usize,
}

impl TaskBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self {
            jobs: Ok(Vec::new()),
            counts: Vec::new(),
            len: 0,
        }
    }

    /// Adds a call.
    pub fn push<T: Task>(&mut self, call: TaskCall<T>) {
        self.len += 1;
        let Ok(jobs) = &mut self.jobs else {
            return;
        };
        let queue = call.queue_name().clone();
        match call.into_job() {
            Ok(job) => jobs.push(job),
            Err(error) => {
                self.jobs = Err(error);
                return;
            }
        }
        match self.counts.last_mut() {
            Some((task, last, count)) if *task == T::NAME && *last == queue => *count += 1,
            _ => self.counts.push((T::NAME, queue, 1)),
        }
    }

    /// How many calls it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no call.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes every job, in one statement, and answers each call in order: a new job, or for
    /// a call of a unique task, maybe the job that waits with its key ([`Enqueued`]). Calls of
    /// one key within the batch meet as they would meet a waiting job: the first writes the
    /// row, and each later one is a duplicate of it (which it replaces or debounces, if its
    /// task says so). `target` is a `&Pq`, a `&mut pq::Transaction`, or `pq.on(&mut *tx)`, as
    /// for [`TaskCall::enqueue`].
    pub fn enqueue<'c>(
        self,
        target: impl Enqueue<'c> + Send + 'c,
    ) -> impl Future<Output = Result<Vec<Enqueued>, pq_core::Error>> + Send + 'c {
        // A plain future, as `TaskCall::enqueue` is, to be `Send` inside task bodies.
        // Its span begins when it is first polled, under whatever span is current then.
        let (counts, jobs, len) = (self.counts, self.jobs, self.len);
        futures_util::future::lazy(move |_| {
            let queue = match counts.as_slice() {
                [(_, first, _), rest @ ..] if rest.iter().all(|(_, queue, _)| queue == first) => {
                    Some(first.as_ref())
                }
                _ => None,
            };
            let span = crate::trace::send_batch(queue, len);
            let written = match jobs {
                Ok(jobs) if jobs.is_empty() => Either::Right(std::future::ready(Ok(Vec::new()))),
                Ok(jobs) => Either::Left(target.enqueue_many(crate::trace::carry_all(&span, jobs))),
                Err(error) => Either::Right(std::future::ready(Err(error))),
            };
            written
                .inspect_ok(move |answers| {
                    let mut answers = answers.iter();
                    for (task, queue, count) in counts {
                        let calls = answers.by_ref().take(usize::try_from(count).unwrap_or(0));
                        let new = calls.filter(|answer| !answer.is_duplicate()).count();
                        crate::metrics::jobs_enqueued(task, queue, new as u64);
                    }
                })
                .instrument(span)
        })
        .flatten()
    }
}

impl Default for TaskBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Task> Extend<TaskCall<T>> for TaskBatch {
    fn extend<I: IntoIterator<Item = TaskCall<T>>>(&mut self, calls: I) {
        for call in calls {
            self.push(call);
        }
    }
}

impl<T: Task> FromIterator<TaskCall<T>> for TaskBatch {
    fn from_iter<I: IntoIterator<Item = TaskCall<T>>>(calls: I) -> Self {
        let mut batch = Self::new();
        batch.extend(calls);
        batch
    }
}
