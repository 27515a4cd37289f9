//! What the worker measures, through the [`metrics`](https://docs.rs/metrics) facade: counters
//! of jobs enqueued, started, succeeded, retried and failed, and histograms of run time and
//! queue latency, each labelled with `task` and `queue`.
//!
//! The facade records nothing until the application installs a recorder (an exporter), such as
//! `metrics-exporter-prometheus`; until then each call costs a check of an unset global. So pq
//! depends on no exporter, and the application picks its own. See `examples/metrics.rs`.
//! Install it before starting workers: a worker registers a task's metrics once, when it first
//! runs the task on a queue, with the recorder installed then.
//!
//! Every attempt that starts ends in exactly one of succeeded, retried or failed (given up), so
//! `started - succeeded - retried - failed` is the number running (or lost with their worker).
//!
//! | name | kind | labels |
//! | --- | --- | --- |
//! | `pq_jobs_enqueued_total` | counter | task, queue |
//! | `pq_jobs_started_total` | counter | task, queue |
//! | `pq_jobs_succeeded_total` | counter | task, queue |
//! | `pq_jobs_retried_total` | counter | task, queue |
//! | `pq_jobs_failed_total` | counter | task, queue |
//! | `pq_job_duration_seconds` | histogram | task, queue, outcome |
//! | `pq_job_queue_latency_seconds` | histogram | task, queue |

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use ::metrics::SharedString;
use ::metrics::{Counter, Histogram};
use chrono::Utc;
use pq_core::Job;

/// Jobs written, by task and queue.
pub const JOBS_ENQUEUED: &str = "pq_jobs_enqueued_total";
/// Attempts started by a worker.
pub const JOBS_STARTED: &str = "pq_jobs_started_total";
/// Attempts that succeeded.
pub const JOBS_SUCCEEDED: &str = "pq_jobs_succeeded_total";
/// Attempts that failed and were queued again for a retry.
pub const JOBS_RETRIED: &str = "pq_jobs_retried_total";
/// Attempts that failed for good: the job is now `failed`.
pub const JOBS_FAILED: &str = "pq_jobs_failed_total";
/// How long an attempt ran, in seconds, by outcome.
pub const JOB_DURATION: &str = "pq_job_duration_seconds";
/// How long a job waited between becoming ready and starting, in seconds.
pub const JOB_QUEUE_LATENCY: &str = "pq_job_queue_latency_seconds";

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The task returned `Ok`.
    Succeeded,
    /// The task failed, or snoozed, and the job was queued again.
    Retried,
    /// The task failed and the job gave up.
    Failed,
}

impl Outcome {
    /// `succeeded`, `retried` or `failed`: the `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Retried => "retried",
            Outcome::Failed => "failed",
        }
    }

    fn counter(self) -> &'static str {
        match self {
            Outcome::Succeeded => JOBS_SUCCEEDED,
            Outcome::Retried => JOBS_RETRIED,
            Outcome::Failed => JOBS_FAILED,
        }
    }
}

/// Describes every metric (help text and unit) to the installed recorder; call it once after
/// installing one, before the first job. Recording works without it.
pub fn describe() {
    use ::metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        JOBS_ENQUEUED,
        Unit::Count,
        "Jobs written to the queue table."
    );
    describe_counter!(JOBS_STARTED, Unit::Count, "Attempts started by a worker.");
    describe_counter!(JOBS_SUCCEEDED, Unit::Count, "Attempts that succeeded.");
    describe_counter!(
        JOBS_RETRIED,
        Unit::Count,
        "Attempts that failed and were queued again."
    );
    describe_counter!(
        JOBS_FAILED,
        Unit::Count,
        "Attempts that failed for good (the job is now failed)."
    );
    describe_histogram!(JOB_DURATION, Unit::Seconds, "How long an attempt ran.");
    describe_histogram!(
        JOB_QUEUE_LATENCY,
        Unit::Seconds,
        "How long a job waited from ready to started."
    );
}

/// Counts a job written for `task` on `queue`.
///
/// Labels are [`SharedString`]s: a `&'static str`, a `String`, or an `Arc<str>` shared with
/// every other use, so that a busy worker does not copy its task and queue names for each job.
pub fn job_enqueued(task: impl Into<SharedString>, queue: impl Into<SharedString>) {
    jobs_enqueued(task, queue, 1);
}

/// Counts `count` jobs written.
pub(crate) fn jobs_enqueued(
    task: impl Into<SharedString>,
    queue: impl Into<SharedString>,
    count: u64,
) {
    ::metrics::counter!(JOBS_ENQUEUED, "task" => task.into(), "queue" => queue.into())
        .increment(count);
}

/// Counts an attempt started, and records how long its job had been ready (see
/// [`queue_latency`]).
pub fn job_started(
    task: impl Into<SharedString>,
    queue: impl Into<SharedString>,
    queue_latency: Duration,
) {
    Measure::started(&task.into(), &queue.into()).count(queue_latency);
}

/// Counts an attempt's outcome and records how long it ran.
pub fn job_finished(
    task: impl Into<SharedString>,
    queue: impl Into<SharedString>,
    outcome: Outcome,
    duration: Duration,
) {
    Measure::finished(&task.into(), &queue.into(), outcome).count(duration);
}

/// A counter and the histogram of a time, recorded together.
struct Measure(Counter, Histogram);

impl Measure {
    /// Attempts started by `task` on `queue`, and how long their jobs had been ready.
    fn started(task: &SharedString, queue: &SharedString) -> Self {
        let labels = [("task", task.clone()), ("queue", queue.clone())];
        Self(
            ::metrics::counter!(JOBS_STARTED, &labels),
            ::metrics::histogram!(JOB_QUEUE_LATENCY, &labels),
        )
    }

    /// Attempts of `task` on `queue` that ended as `outcome`, and how long they ran.
    fn finished(task: &SharedString, queue: &SharedString, outcome: Outcome) -> Self {
        let (task, queue) = (("task", task.clone()), ("queue", queue.clone()));
        let outcome_label = ("outcome", SharedString::const_str(outcome.as_str()));
        Self(
            ::metrics::counter!(outcome.counter(), &[task.clone(), queue.clone()]),
            ::metrics::histogram!(JOB_DURATION, &[task, queue, outcome_label]),
        )
    }

    fn noop() -> Self {
        Self(Counter::noop(), Histogram::noop())
    }

    fn count(&self, time: Duration) {
        self.0.increment(1);
        self.1.record(time.as_secs_f64());
    }
}

/// The metrics of one task on one queue, registered once. Each registration looks its metric
/// up by name and labels, which costs a busy worker more than running a short job: so a worker
/// registers them when it first meets the task on the queue, and records through these.
pub(crate) struct TaskMetrics {
    started: Measure,
    succeeded: Measure,
    retried: Measure,
    failed: Measure,
}

impl TaskMetrics {
    fn register(task: &SharedString, queue: &SharedString) -> Self {
        Self {
            started: Measure::started(task, queue),
            succeeded: Measure::finished(task, queue, Outcome::Succeeded),
            retried: Measure::finished(task, queue, Outcome::Retried),
            failed: Measure::finished(task, queue, Outcome::Failed),
        }
    }

    /// Handles that record nothing, for a task whose registration panicked.
    pub(crate) fn noop() -> Self {
        Self {
            started: Measure::noop(),
            succeeded: Measure::noop(),
            retried: Measure::noop(),
            failed: Measure::noop(),
        }
    }

    pub(crate) fn started(&self, queue_latency: Duration) {
        self.started.count(queue_latency);
    }

    pub(crate) fn finished(&self, outcome: Outcome, duration: Duration) {
        match outcome {
            Outcome::Succeeded => &self.succeeded,
            Outcome::Retried => &self.retried,
            Outcome::Failed => &self.failed,
        }
        .count(duration);
    }
}

/// A worker's [`TaskMetrics`], by queue and task. A recorder installed after a worker met a
/// task is not seen by it: install it before starting workers, as exporters are.
#[derive(Default)]
pub(crate) struct Registered(Mutex<HashMap<Arc<str>, ByTask>>);

/// The metrics of one queue's tasks, by task name.
type ByTask = HashMap<Box<str>, Arc<TaskMetrics>>;

impl Registered {
    /// The metrics of `task` on `queue`, registered at the first call.
    pub(crate) fn get(&self, queue: &Arc<str>, task: &str) -> Arc<TaskMetrics> {
        let mut registered = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let tasks = registered.entry(Arc::clone(queue)).or_default();
        if let Some(metrics) = tasks.get(task) {
            return Arc::clone(metrics);
        }
        let metrics = Arc::new(TaskMetrics::register(
            &SharedString::from(task.to_owned()),
            &SharedString::from(Arc::clone(queue)),
        ));
        tasks.insert(task.into(), Arc::clone(&metrics));
        metrics
    }
}

/// How long `job` has been ready, by this machine's clock: since its `schedule_at` if it was
/// scheduled (or waited for a retry), else since it was enqueued. Zero when the clocks of this
/// machine and the database disagree the other way.
pub fn queue_latency(job: &Job) -> Duration {
    let ready_since = job
        .schedule_at()
        .map_or(job.enqueued_at(), |at| at.max(job.enqueued_at()));
    (Utc::now() - ready_since)
        .to_std()
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use ::metrics::{
        Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, Unit,
    };

    use super::*;

    /// Every recorded value, as `name{label=value,...} value`.
    #[derive(Default)]
    struct Recorded(Arc<Mutex<Vec<String>>>);

    struct Handle(Key, Arc<Mutex<Vec<String>>>);

    impl Handle {
        fn push(&self, value: impl std::fmt::Display) {
            let labels: Vec<_> = self
                .0
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let line = format!("{}{{{}}} {value}", self.0.name(), labels.join(","));
            self.1.lock().unwrap().push(line);
        }
    }

    impl CounterFn for Handle {
        fn increment(&self, value: u64) {
            self.push(value);
        }
        fn absolute(&self, value: u64) {
            self.push(value);
        }
    }

    impl HistogramFn for Handle {
        fn record(&self, value: f64) {
            self.push(value);
        }
    }

    impl Recorder for Recorded {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(Arc::new(Handle(key.clone(), self.0.clone())))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(Arc::new(Handle(key.clone(), self.0.clone())))
        }
    }

    fn recorded(f: impl FnOnce()) -> Vec<String> {
        let recorder = Recorded::default();
        let lines = recorder.0.clone();
        ::metrics::with_local_recorder(&recorder, f);
        let lines = lines.lock().unwrap().clone();
        lines
    }

    #[test]
    fn each_event_is_labelled_with_task_and_queue() {
        let lines = recorded(|| {
            describe();
            job_enqueued("app::send", "mail");
            job_started("app::send", "mail", Duration::from_millis(1500));
            job_finished(
                "app::send",
                "mail",
                Outcome::Succeeded,
                Duration::from_millis(250),
            );
        });

        assert_eq!(
            lines,
            [
                "pq_jobs_enqueued_total{task=app::send,queue=mail} 1",
                "pq_jobs_started_total{task=app::send,queue=mail} 1",
                "pq_job_queue_latency_seconds{task=app::send,queue=mail} 1.5",
                "pq_jobs_succeeded_total{task=app::send,queue=mail} 1",
                "pq_job_duration_seconds{task=app::send,queue=mail,outcome=succeeded} 0.25",
            ]
        );
    }

    #[test]
    fn each_outcome_has_its_counter() {
        let lines = recorded(|| {
            job_finished("t", "q", Outcome::Retried, Duration::ZERO);
            job_finished("t", "q", Outcome::Failed, Duration::ZERO);
        });

        assert_eq!(lines[0], "pq_jobs_retried_total{task=t,queue=q} 1");
        assert_eq!(lines[2], "pq_jobs_failed_total{task=t,queue=q} 1");
        assert!(lines[3].contains("outcome=failed"), "{}", lines[3]);
    }

    #[test]
    fn without_a_recorder_nothing_happens() {
        job_started("t", "q", Duration::ZERO);
        job_finished("t", "q", Outcome::Succeeded, Duration::ZERO);
    }
}
