//! Runs one claimed job: finds its task, decodes its arguments, runs the body (catching
//! panics, within its timeout), and decides what its outcome means for the job.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use pq_core::protocol::{Claim, Failed, Failure, Returned};
use pq_core::{Job, Pq};
use tracing::instrument::{Instrument, Instrumented};

use crate::cancel::Cancels;
use crate::complete::{give_up, Outcome};
use crate::context::TaskContext;
use crate::metrics::{self, TaskMetrics};
use crate::registry::TaskDefinition;
use crate::retry::retry_delay;
use crate::task::{BoxFuture, OnCancel, RunResult, TaskError, TaskOptions, Then};

/// What the worker lends a job's run: the application's handle, and the worker's own pool for
/// the job's transaction.
pub(crate) struct Resources {
    pub pq: Pq,
    /// The worker's handle, whose pool has a connection for every job that may run at once.
    pub own: Pq,
    pub keep_completed: bool,
    /// The requests to cancel this worker's running jobs.
    pub cancels: Arc<Cancels>,
}

/// Starts `job`, taken from `queue`, by its task's `definition` (`None`: a task this worker
/// does not run): decodes its arguments and calls the body. Returns the run to await for its
/// outcome, or the outcome at once of a job that cannot run. Neither panics, whatever the
/// handler does. `metrics` are its task's on `queue`.
///
/// Everything a run does before its body's first wait happens here, outside the run's future,
/// so that the future holds only what the end of the run needs: one is built and moved for
/// every job.
pub(crate) fn begin(
    resources: &Arc<Resources>,
    definition: Option<TaskDefinition>,
    job: Job,
    claim: Claim,
    queue: Arc<str>,
    metrics: Arc<TaskMetrics>,
) -> Result<Instrumented<impl Future<Output = Outcome> + Send + 'static>, Outcome> {
    metrics.started(metrics::queue_latency(&job));
    let started = Instant::now();
    let refuse = |error: String| {
        let outcome = give_up(claim, error);
        metrics.finished(metric(&outcome), started.elapsed());
        outcome
    };
    let Some(name) = job.task() else {
        return Err(refuse(
            "the job names no task: jobs put with `Queue::put` are for `get`, not for workers"
                .into(),
        ));
    };
    let Some(definition) = definition else {
        return Err(refuse(format!(
            "no task named `{name}` is registered in this worker"
        )));
    };
    let span = crate::trace::process(&job, definition.name);
    let entered = span.enter();
    let ctx = TaskContext::for_job(resources, &job, definition.name, queue);
    // Decoding runs the arguments' `Deserialize`, which may panic like the body (as may the
    // start of a hand-written `Task::execute`, which is reported the same way).
    let body = match std::panic::catch_unwind(AssertUnwindSafe(|| {
        (definition.handler)(ctx.clone(), job.raw_data())
    })) {
        Ok(Ok(body)) => body,
        // Arguments that do not decode now never will: retrying cannot help.
        Ok(Err(error)) => return Err(refuse(error.to_string())),
        Err(panic) => {
            return Err(refuse(format!(
                "panicked decoding its arguments: {}",
                crate::panic_message(panic.as_ref())
            )))
        }
    };
    let options = definition.options;
    let running = Running {
        body,
        deadline: job
            .timeout()
            .or(options.timeout)
            .map(|limit| (tokio::time::Instant::now() + limit, limit)),
        ctx,
        resources: Arc::clone(resources),
        claim,
        options,
        // Runs lost with their worker do not count: only the runs that failed themselves spend
        // the task's retries (rescues have their own budget, kept by the rescue).
        failures: job.attempts().saturating_sub(job.rescues()).max(1),
        metrics,
        started,
    };
    drop(entered);
    Ok(running.finish().instrument(span))
}

fn metric(outcome: &Outcome) -> metrics::Outcome {
    match outcome {
        Outcome::Failed(Failed {
            then: Failure::RetryIn(_) | Failure::Snooze(_),
            ..
        }) => metrics::Outcome::Retried,
        Outcome::Failed(_) => metrics::Outcome::Failed,
        _ => metrics::Outcome::Succeeded,
    }
}

/// A job whose body has been called: what deciding its outcome needs.
struct Running {
    body: BoxFuture<'static, RunResult>,
    /// When the run is stopped, and its limit.
    deadline: Option<(tokio::time::Instant, Duration)>,
    ctx: TaskContext,
    resources: Arc<Resources>,
    claim: Claim,
    options: TaskOptions,
    /// The runs of the job that failed, this one included should it fail.
    failures: u32,
    metrics: Arc<TaskMetrics>,
    started: Instant,
}

impl Running {
    /// Awaits the body (catching its panic, within its deadline), then completes or fails the
    /// job.
    async fn finish(self) -> Outcome {
        // What follows a failed run: what the handler asked for, within the task's retries.
        let then = |error: &str, asked: Then| {
            let retry = self.failures <= self.options.max_retries;
            let then = match asked {
                Then::Policy if retry => {
                    Failure::RetryIn(retry_delay(&self.options, self.claim, self.failures))
                }
                Then::RetryIn(delay) if retry => Failure::RetryIn(delay),
                Then::Snooze(delay) => Failure::Snooze(delay),
                Then::Policy | Then::RetryIn(_) | Then::GiveUp => Failure::GiveUp,
            };
            match then {
                Failure::Snooze(_) => tracing::debug!(?then, "pq: job snoozed"),
                Failure::GiveUp => tracing::error!(%error, "pq: job failed for good"),
                _ => tracing::warn!(%error, ?then, "pq: job failed"),
            }
            then
        };
        let claim = self.claim;
        let cancels = &self.resources.cancels;
        let body = within(self.body, self.deadline);
        let result = match self.options.on_cancel {
            OnCancel::Cooperate => Some(body.await),
            // Boxed: what waits for the cancel would make every job's future larger.
            OnCancel::Abort => {
                Box::pin(async {
                    tokio::select! {
                        result = body => Some(result),
                        () = cancels.wait(claim.id) => None,
                    }
                })
                .await
            }
        };
        // Cancelled: a run dropped for it, told of it, or failing since it was asked ends so,
        // never retried, and nothing it wrote in its transaction stays. A run that succeeded
        // without looking ends as it would have.
        let cancelled = match &result {
            None => true,
            Some(Ok(Ok(_))) => cancels.told(claim.id),
            Some(_) => cancels.asked(claim.id),
        };
        let Some(result) = result.filter(|_| !cancelled) else {
            drop(self.ctx.take_transaction().await);
            tracing::info!("pq: job cancelled while it ran");
            let outcome = Outcome::Failed(Failed {
                claim,
                error: "cancelled while it ran".into(),
                then: Failure::Cancel,
            });
            self.metrics
                .finished(metric(&outcome), self.started.elapsed());
            return outcome;
        };
        let result = match result {
            Ok(result) => result,
            Err(panic) => Err(TaskError::new(format!(
                "panicked: {}",
                crate::panic_message(panic.as_ref())
            ))),
        };
        let outcome = match result {
            Ok(result) => {
                // A job that returned a value keeps it: for good where the worker keeps
                // completed jobs, else for its task's time.
                let returned = result.map(|result| Returned {
                    claim,
                    result,
                    keep: (!self.resources.keep_completed).then_some(self.options.keep_result),
                });
                match self.ctx.take_transaction().await {
                    None => {
                        tracing::debug!(elapsed = ?self.started.elapsed(), "pq: job succeeded");
                        match returned {
                            None => Outcome::Succeeded(claim),
                            Some(returned) => Outcome::Returned(returned),
                        }
                    }
                    // Boxed: its statements make a large future, and every job's task would
                    // carry it.
                    Some(tx) => {
                        Box::pin(commit_with_completion(
                            &self.resources.own,
                            tx,
                            claim,
                            returned,
                            self.resources.keep_completed,
                            |error| then(error, Then::Policy),
                        ))
                        .await
                    }
                }
            }
            Err(error) => {
                // The handler's own writes, if any, are rolled back with its transaction.
                drop(self.ctx.take_transaction().await);
                let then = then(error.message(), error.then());
                let error = error.into_message();
                Outcome::Failed(Failed { claim, error, then })
            }
        };
        self.metrics
            .finished(metric(&outcome), self.started.elapsed());
        outcome
    }
}

/// Runs `body`, catching its panic, until its `deadline` (and its limit) if it has one.
async fn within(
    body: BoxFuture<'static, RunResult>,
    deadline: Option<(tokio::time::Instant, Duration)>,
) -> std::thread::Result<RunResult> {
    let body = AssertUnwindSafe(body).catch_unwind();
    match deadline {
        None => body.await,
        Some((at, limit)) => match tokio::time::timeout_at(at, body).await {
            Ok(result) => result,
            // The body's future is dropped here; its transaction is rolled back by the caller.
            Err(_) => Ok(Err(pq_core_timeout(limit))),
        },
    }
}

/// The error of a run stopped at its timeout.
fn pq_core_timeout(limit: Duration) -> TaskError {
    TaskError::new(format!(
        "timed out after {}: the run was stopped and its transaction rolled back",
        humantime::format_duration(limit)
    ))
}

/// Completes the job inside the handler's transaction and commits both, or neither. A commit
/// the database refuses is a failed attempt like any other, recorded with the commit's error.
async fn commit_with_completion(
    pq: &Pq,
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    claim: Claim,
    returned: Option<Returned>,
    keep_completed: bool,
    then: impl FnOnce(&str) -> Failure,
) -> Outcome {
    let completed = match returned {
        None => pq.complete(&mut tx, &[claim], keep_completed).await,
        Some(returned) => pq.complete_returned(&mut *tx, &[returned]).await,
    };
    let committed = match completed {
        Ok(ids) if ids.contains(&claim.id) => tx.commit().await.map_err(pq_core::Error::from),
        Ok(_) => {
            // The claim was lost and the job handed to another worker: its writes must not
            // happen twice, so they are rolled back.
            tracing::warn!(
                "pq: the job's claim was lost before completion; the handler's transaction is rolled back"
            );
            return Outcome::Recorded(claim);
        }
        Err(error) => Err(error),
    };
    match committed {
        Ok(()) => {
            tracing::debug!("pq: job succeeded in its transaction");
            Outcome::Committed(claim)
        }
        Err(error) => {
            let error = format!("could not commit the job's transaction: {error}");
            let then = then(&error);
            Outcome::Failed(Failed { claim, error, then })
        }
    }
}
