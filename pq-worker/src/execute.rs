//! Runs one claimed job: finds its task, decodes its arguments, runs the body (catching
//! panics), and decides what its outcome means for the job.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use pq_core::{Claim, Failure, Job, Pq};
use tracing::Instrument;

use crate::context::TaskContext;
use crate::metrics::{self, TaskMetrics};
use crate::registry::{Registry, TaskDefinition};
use crate::retry::retry_delay;

/// What became of one attempt, for the completer to record.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The body returned `Ok`: complete the job (batched with others).
    Succeeded(Claim),
    /// The body returned `Ok` and the job was completed in the handler's own transaction.
    Recorded(Claim),
    /// The attempt failed: record the error, then retry or give up.
    Failed {
        claim: Claim,
        error: String,
        then: Failure,
    },
}

impl Outcome {
    fn metric(&self) -> metrics::Outcome {
        match self {
            Outcome::Succeeded(_) | Outcome::Recorded(_) => metrics::Outcome::Succeeded,
            Outcome::Failed {
                then: Failure::RetryIn(_),
                ..
            } => metrics::Outcome::Retried,
            Outcome::Failed { .. } => metrics::Outcome::Failed,
        }
    }

    pub fn claim(&self) -> Claim {
        match self {
            Outcome::Succeeded(claim) | Outcome::Recorded(claim) => *claim,
            Outcome::Failed { claim, .. } => *claim,
        }
    }
}

/// Runs `job`, taken from `queue`, and returns its outcome; never panics, whatever the handler
/// does. A job whose handler used its transaction is completed there, deleted or kept `done` as
/// `keep_completed` says, like every other job. `metrics` are its task's on `queue`.
pub(crate) async fn execute(
    pq: &Pq,
    registry: &Registry,
    job: Job,
    queue: Arc<str>,
    metrics: &TaskMetrics,
    keep_completed: bool,
) -> Outcome {
    let definition = job.task().and_then(|name| registry.get(name));
    metrics.started(metrics::queue_latency(&job));
    let started = Instant::now();
    let outcome = dispatch(pq, definition, job, queue, keep_completed).await;
    metrics.finished(outcome.metric(), started.elapsed());
    outcome
}

async fn dispatch(
    pq: &Pq,
    definition: Option<&TaskDefinition>,
    job: Job,
    queue: Arc<str>,
    keep_completed: bool,
) -> Outcome {
    let claim = Claim::of(&job);
    let Some(name) = job.task() else {
        return give_up(
            claim,
            "the job names no task: jobs put with `Queue::put` are for `get`, not for workers"
                .into(),
        );
    };
    let Some(definition) = definition else {
        return give_up(
            claim,
            format!("no task named `{name}` is registered in this worker"),
        );
    };
    let span = tracing::info_span!(
        "pq.job",
        task = definition.name,
        job_id = claim.id.0,
        queue = job.queue(),
        attempt = claim.attempt,
    );
    run(pq, definition, job, queue, claim, keep_completed)
        .instrument(span)
        .await
}

async fn run(
    pq: &Pq,
    definition: &TaskDefinition,
    job: Job,
    queue: Arc<str>,
    claim: Claim,
    keep_completed: bool,
) -> Outcome {
    let options = definition.options;
    let runs = options.max_retries.saturating_add(1);
    if claim.attempt > runs {
        // Its earlier attempt's worker died, and that was the last attempt allowed.
        return give_up(
            claim,
            format!(
                "gave up: attempt {} exceeds max_retries = {}; the worker of the previous attempt was lost",
                claim.attempt, options.max_retries
            ),
        );
    }
    let ctx = TaskContext::for_job(pq, &job, definition.name, queue);
    let started = Instant::now();
    // Decoding runs the arguments' `Deserialize`, which may panic like the body (as may the
    // start of a hand-written `Task::execute`, which is reported the same way).
    let body = match std::panic::catch_unwind(AssertUnwindSafe(|| {
        (definition.handler)(ctx.clone(), job.raw_data())
    })) {
        Ok(Ok(body)) => body,
        // Arguments that do not decode now never will: retrying cannot help.
        Ok(Err(error)) => return give_up(claim, error.to_string()),
        Err(panic) => {
            return give_up(
                claim,
                format!(
                    "panicked decoding its arguments: {}",
                    crate::panic_message(panic.as_ref())
                ),
            )
        }
    };
    let result = match AssertUnwindSafe(body).catch_unwind().await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(panic) => Err(format!(
            "panicked: {}",
            crate::panic_message(panic.as_ref())
        )),
    };
    let elapsed = started.elapsed();
    match result {
        Ok(()) => match ctx.take_transaction().await {
            None => {
                tracing::debug!(?elapsed, "pq: job succeeded");
                Outcome::Succeeded(claim)
            }
            // Boxed: its statements make a large future, and every job's task would carry it.
            Some(tx) => {
                Box::pin(commit_with_completion(
                    pq,
                    tx,
                    claim,
                    keep_completed,
                    elapsed,
                ))
                .await
            }
        },
        Err(error) => {
            // The handler's own writes, if any, are rolled back with its transaction.
            drop(ctx.take_transaction().await);
            let then = if claim.attempt < runs {
                Failure::RetryIn(retry_delay(&options, claim))
            } else {
                Failure::GiveUp
            };
            tracing::warn!(?elapsed, %error, ?then, "pq: job failed");
            Outcome::Failed { claim, error, then }
        }
    }
}

/// Completes the job inside the handler's transaction and commits both, or neither.
async fn commit_with_completion(
    pq: &Pq,
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    claim: Claim,
    keep_completed: bool,
    elapsed: Duration,
) -> Outcome {
    let completed = pq.complete(&mut *tx, &[claim], keep_completed).await;
    let committed = match completed {
        Ok(ids) if ids.contains(&claim.id) => tx.commit().await.map_err(pq_core::Error::from),
        Ok(_) => {
            // The lease was lost and the job handed to another worker: its writes must not
            // happen twice, so they are rolled back.
            tracing::warn!(
                "pq: lease lost before completion; the handler's transaction is rolled back"
            );
            return Outcome::Recorded(claim);
        }
        Err(error) => Err(error),
    };
    match committed {
        Ok(()) => {
            tracing::debug!(?elapsed, "pq: job succeeded in its transaction");
            Outcome::Recorded(claim)
        }
        Err(error) => Outcome::Failed {
            claim,
            error: format!("could not commit the job's transaction: {error}"),
            then: Failure::RetryIn(Duration::ZERO),
        },
    }
}

fn give_up(claim: Claim, error: String) -> Outcome {
    tracing::error!(job_id = claim.id.0, %error, "pq: job failed for good");
    Outcome::Failed {
        claim,
        error,
        then: Failure::GiveUp,
    }
}
