//! [`Report`]: what a worker's runs came to, as it recorded them.

use std::fmt;

use pq_core::protocol::Failure;
use pq_core::JobId;

/// At most this many errors are kept in a report; the counts go on.
pub const MAX_ERRORS: usize = 1000;

/// What a worker's runs came to, counted as their outcomes were recorded: returned by
/// [`Worker::run`](crate::Worker::run) (a burst worker's, or one stopped by its shutdown
/// signal) and by [`testing::run_ready`](crate::testing::run_ready).
///
/// ```no_run
/// # async fn example(pq: pq::Pq) -> Result<(), pq::WorkerError> {
/// let report = pq::Worker::new(pq).burst().run().await?;
/// assert_eq!(report.failed, 0, "{report}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Runs that succeeded: their jobs are done.
    pub succeeded: u64,
    /// Runs that failed and will run again (by the task's retry policy).
    pub retried: u64,
    /// Runs that failed for good: their jobs are `failed`.
    pub failed: u64,
    /// Runs that asked to run again later, their attempt uncounted.
    pub snoozed: u64,
    /// Runs cancelled while they ran.
    pub cancelled: u64,
    /// Jobs given back to the queue unrun or cut short (the worker stopped), their attempt
    /// uncounted.
    pub released: u64,
    /// Each failed run's job and error, the first [`MAX_ERRORS`] of them, in the order they
    /// were recorded.
    pub errors: Vec<RunError>,
}

/// One failed run, in a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunError {
    /// The job.
    pub job: JobId,
    /// Its error.
    pub error: String,
    /// Whether the job runs again.
    pub retried: bool,
}

/// The report the completer adds to while the worker runs.
pub(crate) fn lock(report: &std::sync::Mutex<Report>) -> std::sync::MutexGuard<'_, Report> {
    report
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Report {
    /// Runs that reached an outcome: succeeded, retried, failed, snoozed or cancelled.
    pub fn runs(&self) -> u64 {
        self.succeeded + self.retried + self.failed + self.snoozed + self.cancelled
    }

    pub(crate) fn succeeded(&mut self, runs: usize) {
        self.succeeded += runs as u64;
    }

    pub(crate) fn released(&mut self, jobs: usize) {
        self.released += jobs as u64;
    }

    pub(crate) fn failed(&mut self, job: JobId, error: &str, then: &Failure) {
        let retried = match then {
            Failure::RetryIn(_) => {
                self.retried += 1;
                true
            }
            Failure::Snooze(_) => {
                self.snoozed += 1;
                return;
            }
            Failure::Cancel => {
                self.cancelled += 1;
                false
            }
            _ => {
                self.failed += 1;
                false
            }
        };
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(RunError {
                job,
                error: error.to_owned(),
                retried,
            });
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} succeeded, {} retried, {} failed, {} snoozed, {} cancelled, {} released",
            self.succeeded, self.retried, self.failed, self.snoozed, self.cancelled, self.released
        )?;
        for error in &self.errors {
            let then = if error.retried { "retried" } else { "ended" };
            write!(f, "\n  job {}: {} ({then})", error.job, error.error)?;
        }
        Ok(())
    }
}
