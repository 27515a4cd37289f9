//! Records outcomes, many at a time: the successes of a round in one statement, its failures in
//! another, its releases in a third. A job keeps its lease until its outcome is recorded, so a
//! worker never holds more jobs than its leases, however fast they fail. A database error is
//! retried while it is transient; nothing is dropped on the floor.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use foldhash::HashSet;
use pq_core::protocol::{Claim, Failed, Failure, Returned};
use pq_core::Pq;

use crate::cancel::Cancels;
use crate::report::Report;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};

/// At most this many outcomes are recorded per round.
const BATCH: usize = 1000;

/// At most this many bytes of results go in one statement: a round of large ones takes
/// several, each well within what PostgreSQL takes as one parameter.
const RESULTS_BYTES: usize = 32 << 20;

/// The claims a worker holds and has not recorded an outcome for: released at shutdown if
/// never recorded. Each job is added and removed once, so the set hashes with foldhash, seeded
/// at random like std's SipHash but a fraction of its cost.
pub(crate) type InFlight = Arc<Mutex<HashSet<Claim>>>;

pub(crate) fn lock(in_flight: &InFlight) -> std::sync::MutexGuard<'_, HashSet<Claim>> {
    in_flight.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What became of one run, for the completer to record.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The body returned `Ok`: complete the job (batched with others).
    Succeeded(Claim),
    /// The body returned a value its job keeps: complete the job with it (batched too).
    Returned(Returned),
    /// Completed in the handler's own transaction, committed.
    Committed(Claim),
    /// Nothing to record: its claim was lost, and another worker runs the job.
    Recorded(Claim),
    /// The run failed: record the error, then retry or give up.
    Failed(Failed),
    /// The run did not happen, or was cut short by the worker itself: give the job back to
    /// the queue, the attempt uncounted.
    Release(Claim),
}

impl Outcome {
    pub(crate) fn claim(&self) -> Claim {
        match self {
            Outcome::Succeeded(claim)
            | Outcome::Committed(claim)
            | Outcome::Recorded(claim)
            | Outcome::Release(claim) => *claim,
            Outcome::Returned(returned) => returned.claim,
            Outcome::Failed(failed) => failed.claim,
        }
    }
}

/// An outcome to record, with the lease its job holds until then.
pub(crate) struct Recording {
    pub outcome: Outcome,
    pub lease: Option<OwnedSemaphorePermit>,
}

/// A started job's promise of an outcome: [`finish`](Outcome) sends it; dropped without one
/// (its task panicked, or was aborted at the end of a shutdown's grace period), it asks for
/// the job to be released, so that no claimed job is ever left running for a worker that no
/// longer runs it.
pub(crate) struct Pending {
    claim: Claim,
    lease: Option<OwnedSemaphorePermit>,
    outcomes: Option<mpsc::UnboundedSender<Recording>>,
}

impl Pending {
    pub(crate) fn new(
        claim: Claim,
        lease: OwnedSemaphorePermit,
        outcomes: mpsc::UnboundedSender<Recording>,
    ) -> Self {
        Self {
            claim,
            lease: Some(lease),
            outcomes: Some(outcomes),
        }
    }

    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.send(outcome);
    }

    fn send(&mut self, outcome: Outcome) {
        if let Some(outcomes) = self.outcomes.take() {
            // The completer outlives every job, so the send fails only when the worker is
            // dropped, and then its claims are released by its cleanup.
            let _ = outcomes.send(Recording {
                outcome,
                lease: self.lease.take(),
            });
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let claim = self.claim;
        self.send(Outcome::Release(claim));
    }
}

pub(crate) struct Completer {
    pub pq: Pq,
    pub keep_completed: bool,
    pub in_flight: InFlight,
    /// Woken after each round, so that a waiting fetcher looks again (a retry may be due).
    pub progress: Arc<Notify>,
    /// The requests to cancel the worker's jobs.
    pub cancels: Arc<Cancels>,
    /// What the recorded outcomes came to.
    pub report: Arc<Mutex<Report>>,
}

impl Completer {
    /// Records outcomes until every sender is gone and the channel is drained.
    pub async fn run(self, mut outcomes: mpsc::UnboundedReceiver<Recording>) {
        let mut batch = Vec::with_capacity(BATCH);
        while outcomes.recv_many(&mut batch, BATCH).await > 0 {
            let unsettled = self.record(&mut batch).await;
            {
                let mut in_flight = lock(&self.in_flight);
                for recording in &batch {
                    let claim = recording.outcome.claim();
                    if !unsettled.contains(&claim) {
                        in_flight.remove(&claim);
                    }
                }
            }
            // Frees the batch's leases at once: freed one by one, each would wake a claimer to
            // claim for the few free so far.
            let mut leases: Option<OwnedSemaphorePermit> = None;
            for lease in batch.drain(..).filter_map(|recording| recording.lease) {
                match &mut leases {
                    Some(all) => all.merge(lease),
                    None => leases = Some(lease),
                }
            }
            drop(leases);
            self.progress.notify_waiters();
        }
    }

    /// Records a batch; returns the claims it could not settle (record, or find lost): their
    /// statement failed for good, and they stay in flight, to be released when the worker
    /// stops. Nearly always none, so nothing is hashed for the others.
    async fn record(&self, batch: &mut [Recording]) -> HashSet<Claim> {
        let mut unsettled = HashSet::default();
        let mut succeeded = Vec::new();
        let mut returned = Vec::new();
        let mut failed = Vec::new();
        let mut released = Vec::new();
        let mut committed = 0;
        for recording in batch.iter_mut() {
            match &mut recording.outcome {
                Outcome::Succeeded(claim) => succeeded.push(*claim),
                // A result is moved out, not copied: the outcome keeps its claim.
                Outcome::Returned(run) => returned.push(Returned {
                    claim: run.claim,
                    result: std::mem::take(&mut run.result),
                    keep: run.keep,
                }),
                Outcome::Committed(_) => committed += 1,
                Outcome::Recorded(_) => {}
                Outcome::Failed(failure) => failed.push(failure.clone()),
                // Cancelled meanwhile (a run cut short by the shutdown): it must not run again.
                Outcome::Release(claim) if self.cancels.asked(claim.id) => failed.push(Failed {
                    claim: *claim,
                    error: "cancelled while it ran".into(),
                    then: Failure::Cancel,
                }),
                Outcome::Release(claim) => released.push(*claim),
            }
        }
        if !succeeded.is_empty() {
            match retrying("complete jobs", || {
                self.pq.complete_claims(&succeeded, self.keep_completed)
            })
            .await
            {
                Some(completed) => self.completed(succeeded.len(), completed.len()),
                None => unsettled.extend(succeeded),
            }
        }
        // In statements of at most `RESULTS_BYTES` of results each (one result may be more).
        let mut rest = returned.as_slice();
        while !rest.is_empty() {
            let mut bytes = 0;
            let size = rest
                .iter()
                .take_while(|run| {
                    bytes += run.result.len();
                    bytes <= RESULTS_BYTES
                })
                .count()
                .max(1);
            let (statement, next) = rest.split_at(size);
            rest = next;
            match retrying("complete jobs with their results", || {
                self.pq.complete_results(statement)
            })
            .await
            {
                Some(completed) => self.completed(statement.len(), completed.len()),
                None => unsettled.extend(statement.iter().map(|run| run.claim)),
            }
        }
        self.report().succeeded(committed);
        if !failed.is_empty() {
            match retrying("record failures", || self.pq.fail(&failed)).await {
                Some(held) => {
                    if held.len() < failed.len() {
                        tracing::warn!(
                            lost = failed.len() - held.len(),
                            "pq: some failures came after their worker was declared lost"
                        );
                    }
                    let mut report = self.report();
                    for failure in failed.iter().filter(|f| held.contains(&f.claim.id)) {
                        report.failed(failure.claim.id, &failure.error, &failure.then);
                    }
                }
                None => unsettled.extend(failed.iter().map(|f| f.claim)),
            }
        }
        if !released.is_empty() {
            match retrying("release jobs", || self.pq.release(&released)).await {
                Some(given_back) => self.report().released(given_back.len()),
                None => unsettled.extend(released),
            }
        }
        unsettled
    }

    /// Reports `completed` of `asked` completions; the rest were no longer their claim's.
    fn completed(&self, asked: usize, completed: usize) {
        if completed < asked {
            tracing::warn!(
                lost = asked - completed,
                "pq: some jobs finished after their worker was declared lost; another worker runs them again"
            );
        }
        self.report().succeeded(completed);
    }

    fn report(&self) -> std::sync::MutexGuard<'_, Report> {
        crate::report::lock(&self.report)
    }
}

/// Runs `statement` until the database accepts it, backing off up to 30 s between tries while
/// the error is transient. Any other error would repeat forever and stall the worker, so it is
/// logged and `None` returned: the claims stay in flight, and are released when the worker stops
/// (or rescued, should it die).
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
                tracing::error!(%error, "pq: cannot {what}; they are released when the worker stops");
                return None;
            }
        }
    }
}

/// A failure given up at once: no retry can help.
pub(crate) fn give_up(claim: Claim, error: String) -> Outcome {
    tracing::error!(job_id = claim.id.0, %error, "pq: job failed for good");
    Outcome::Failed(Failed {
        claim,
        error,
        then: Failure::GiveUp,
    })
}
