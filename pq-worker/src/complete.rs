//! Records outcomes: successes many at a time in one statement, failures one by one. A
//! database error is retried until it goes through or the job's lease is lost; nothing is
//! dropped on the floor.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use foldhash::HashSet;
use pq_core::{Claim, Pq};
use tokio::sync::{mpsc, Notify};

use crate::execute::Outcome;

/// At most this many outcomes are recorded per round.
const BATCH: usize = 1000;

/// The claims a worker holds: renewed while held, released at shutdown if never recorded. Each
/// job is added and removed once, so the set hashes with foldhash, seeded at random like std's
/// SipHash but a fraction of its cost.
pub(crate) type InFlight = Arc<Mutex<HashSet<Claim>>>;

pub(crate) fn lock(in_flight: &InFlight) -> std::sync::MutexGuard<'_, HashSet<Claim>> {
    in_flight.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct Completer {
    pub pq: Pq,
    pub keep_completed: bool,
    pub in_flight: InFlight,
    /// Woken after each round, so that a waiting fetcher looks again (a retry may be due).
    pub progress: Arc<Notify>,
}

impl Completer {
    /// Records outcomes until every sender is gone and the channel is drained.
    pub async fn run(self, mut outcomes: mpsc::UnboundedReceiver<Outcome>) {
        let mut batch = Vec::with_capacity(BATCH);
        while outcomes.recv_many(&mut batch, BATCH).await > 0 {
            self.record(&batch).await;
            {
                let mut in_flight = lock(&self.in_flight);
                for outcome in &batch {
                    in_flight.remove(&outcome.claim());
                }
            }
            batch.clear();
            self.progress.notify_waiters();
        }
    }

    async fn record(&self, outcomes: &[Outcome]) {
        let succeeded: Vec<Claim> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Succeeded(claim) => Some(*claim),
                _ => None,
            })
            .collect();
        if !succeeded.is_empty() {
            let completed = retrying("complete jobs", || {
                self.pq.complete_claims(&succeeded, self.keep_completed)
            })
            .await;
            if let Some(completed) = completed.filter(|c| c.len() < succeeded.len()) {
                tracing::warn!(
                    lost = succeeded.len() - completed.len(),
                    "pq: some jobs finished after their lease was lost; another worker runs them again"
                );
            }
        }
        for outcome in outcomes {
            if let Outcome::Failed { claim, error, then } = outcome {
                let held =
                    retrying("record a failure", || self.pq.fail(*claim, error, *then)).await;
                if held == Some(false) {
                    tracing::warn!(
                        job_id = claim.id.0,
                        "pq: a failure came after the job's lease was lost"
                    );
                }
            }
        }
    }
}

/// Runs `statement` until the database accepts it, backing off up to 30 s between tries while
/// the error is transient. Any other error would repeat forever and stall the worker, so it is
/// logged and the outcome dropped: the job's lease then runs out, and it is rescued and run
/// again, at least once as promised.
async fn retrying<T, F, Fut>(what: &str, mut statement: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = pq_core::Result<T>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match statement().await {
            Ok(value) => return Some(value),
            Err(error) if error.is_transient() => {
                tracing::error!(%error, ?delay, "pq: cannot {what}; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(error) => {
                tracing::error!(%error, "pq: cannot {what}; the jobs run again once their lease runs out");
                return None;
            }
        }
    }
}
