//! [`Worker`]: claims jobs of its queues and runs their tasks, up to `concurrency` at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::select_all;
use pq_core::{Claim, Job, Pq, Subscription};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::complete::{lock, Completer, InFlight};
use crate::execute::{execute, Outcome};
use crate::registry::{DuplicateTask, Registry};

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Why a worker could not start. Once running, a worker does not fail: database errors are
/// logged and retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// Two tasks share a name.
    #[error(transparent)]
    DuplicateTask(#[from] DuplicateTask),
    /// Nothing to work on: no queue was named and no task is registered.
    #[error("the worker has no queue: no task is registered (is the crate that defines them linked?) and none was named with `queues`")]
    NoQueues,
}

/// Runs registered tasks: claims ready jobs of its queues, runs up to `concurrency` of them at
/// once, records each outcome, retries failures, renews its leases and rescues the jobs of dead
/// workers, until a shutdown signal (SIGINT or SIGTERM by default) or, in burst mode, until
/// nothing is ready.
///
/// ```no_run
/// #[pq::task(queue = "apples", max_retries = 2, retry_in = "10s")]
/// async fn eat(kind: String) -> anyhow::Result<()> {
///     println!("umm, {kind} apples taste good");
///     Ok(())
/// }
///
/// # async fn example(pq: pq::Pq) -> Result<(), pq::WorkerError> {
/// pq::Worker::new(pq.clone()).run().await?; // every registered task, on every queue they use
///
/// pq::Worker::new(pq)
///     .queues(["apples"])
///     .concurrency(16)
///     .burst() // return once nothing is ready
///     .run()
///     .await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    pq: Pq,
    registry: Option<Registry>,
    shutdown: Option<Signal>,
    settings: Settings,
}

/// What the builder sets and the running worker follows.
struct Settings {
    queues: Vec<String>,
    concurrency: usize,
    burst: bool,
    lease: Duration,
    poll_interval: Duration,
    grace_period: Duration,
    keep_completed: bool,
}

impl Worker {
    /// A worker for every task linked into the program (see [`Registry::from_inventory`]).
    pub fn new(pq: Pq) -> Self {
        Self {
            pq,
            registry: None,
            shutdown: None,
            settings: Settings {
                queues: Vec::new(),
                concurrency: 16,
                burst: false,
                lease: Duration::from_secs(30),
                poll_interval: Duration::from_secs(5),
                grace_period: Duration::from_secs(30),
                keep_completed: false,
            },
        }
    }

    /// Works these queues only (default: every queue the registered tasks use by default).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Runs at most this many jobs at once (default 16); a claim takes up to as many free
    /// slots' worth of jobs in one statement.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.settings.concurrency = concurrency.max(1);
        self
    }

    /// Returns once no job is ready and none is running, instead of waiting for more.
    pub fn burst(mut self) -> Self {
        self.settings.burst = true;
        self
    }

    /// How long a claimed job stays reserved for this worker without renewal (default 30 s). The
    /// worker renews every third of it, so a job may run longer; if the worker dies, its jobs
    /// return to the queue this long after its last renewal. At least 300 ms, at most a year.
    pub fn lease(mut self, lease: Duration) -> Self {
        // Bounded above so that the renewal and rescue timers (a third and half of it) stay
        // within what a clock can add: `Duration::MAX` would make them panic.
        self.settings.lease = lease.clamp(
            Duration::from_millis(300),
            Duration::from_secs(365 * 86_400),
        );
        self
    }

    /// How often an idle worker looks for jobs without being notified (default 5 s): the
    /// fallback for a lost notification.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.settings.poll_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How long running jobs may take to finish after the shutdown signal (default 30 s);
    /// those still running then are stopped and returned to the queue for another worker.
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.settings.grace_period = grace;
        self
    }

    /// Keeps succeeded jobs in the table in the `done` state (to inspect or prune later)
    /// instead of deleting them (the default, and the fastest).
    pub fn keep_completed(mut self, keep: bool) -> Self {
        self.settings.keep_completed = keep;
        self
    }

    /// Stops when `signal` completes, instead of on SIGINT or SIGTERM.
    pub fn shutdown_on(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// Runs these tasks rather than every registered one.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Works until shut down (or, in burst mode, until nothing is ready); returns `Ok` once
    /// every job it took has finished or been returned to the queue.
    pub async fn run(mut self) -> Result<(), WorkerError> {
        let registry = match self.registry {
            Some(registry) => registry,
            None => Registry::from_inventory()?,
        };
        let queues = &mut self.settings.queues;
        if queues.is_empty() {
            *queues = registry.queues().into_iter().map(str::to_owned).collect();
        }
        if queues.is_empty() {
            return Err(WorkerError::NoQueues);
        }
        let shutdown = self
            .shutdown
            .unwrap_or_else(|| Box::pin(crate::shutdown::signal()));
        let run = Run {
            pq: self.pq,
            registry: Arc::new(registry),
            settings: self.settings,
        };
        run.run(shutdown).await;
        Ok(())
    }
}

/// A running worker.
struct Run {
    pq: Pq,
    registry: Arc<Registry>,
    settings: Settings,
}

impl Run {
    async fn run(self, mut shutdown: Signal) {
        tracing::info!(queues = ?self.settings.queues, concurrency = self.settings.concurrency, "pq: worker started");
        let in_flight = InFlight::default();
        let progress = Arc::new(Notify::new());
        let (outcomes, received) = mpsc::unbounded_channel();
        let completer = tokio::spawn(
            Completer {
                pq: self.pq.clone(),
                keep_completed: self.settings.keep_completed,
                in_flight: Arc::clone(&in_flight),
                progress: Arc::clone(&progress),
            }
            .run(received),
        );
        let renewer = tokio::spawn(crate::lease::renew_leases(
            self.pq.clone(),
            Arc::clone(&in_flight),
            self.settings.lease,
        ));
        let rescuer = tokio::spawn(crate::lease::rescue_expired(
            self.pq.clone(),
            (self.settings.lease / 2).max(Duration::from_secs(1)),
        ));

        let mut jobs = JoinSet::new();
        self.fetch(&mut jobs, &in_flight, &progress, &outcomes, &mut shutdown)
            .await;
        tracing::info!(running = jobs.len(), "pq: worker stopping");

        // Let running jobs finish within the grace period; stop the rest.
        let finished = tokio::time::timeout(self.settings.grace_period, async {
            while jobs.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                stopped = jobs.len(),
                "pq: grace period over, stopping running jobs"
            );
            jobs.shutdown().await;
        }
        drop(outcomes);
        if let Err(error) = completer.await {
            tracing::error!(%error, "pq: the completer stopped abnormally");
        }
        renewer.abort();
        rescuer.abort();
        // What is still held never reported an outcome: return it to the queue.
        let unfinished: Vec<Claim> = lock(&in_flight).drain().collect();
        if !unfinished.is_empty() {
            match self.pq.release(&unfinished).await {
                Ok(released) => tracing::info!(
                    released = released.len(),
                    "pq: returned unfinished jobs to the queue"
                ),
                Err(error) => {
                    tracing::error!(%error, "pq: cannot return unfinished jobs; they return when their lease runs out")
                }
            }
        }
        tracing::info!("pq: worker stopped");
    }

    /// Claims and starts jobs until shut down, or in burst mode until nothing is ready or running.
    /// The shutdown signal is heeded while waiting, never in the middle of a claim, so that no
    /// claimed job is dropped unstarted.
    async fn fetch(
        &self,
        jobs: &mut JoinSet<()>,
        in_flight: &InFlight,
        progress: &Arc<Notify>,
        outcomes: &mpsc::UnboundedSender<Outcome>,
        shutdown: &mut Signal,
    ) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let subscriptions = tokio::select! {
            subscriptions = self.subscribe() => subscriptions,
            () = shutdown.as_mut() => return,
        };
        let mut next_queue = 0;
        let mut backoff = Backoff::default();
        loop {
            while jobs.try_join_next().is_some() {}
            let first = tokio::select! {
                permit = Arc::clone(&slots).acquire_owned() => permit,
                () = shutdown.as_mut() => return,
            };
            let Ok(first) = first else {
                return;
            };
            let mut permits = vec![first];
            while let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
                permits.push(permit);
            }

            // Armed before claiming, so that a job put meanwhile still wakes the wait below.
            let mut wakeups: Vec<_> = subscriptions
                .iter()
                .map(|s| Box::pin(s.notified()))
                .collect();
            wakeups.iter_mut().for_each(|n| {
                n.as_mut().enable();
            });
            let work_done = progress.notified();
            tokio::pin!(work_done);
            work_done.as_mut().enable();

            let mut claimed = match self.claim(&mut next_queue, permits.len()).await {
                Ok(claimed) => {
                    backoff.reset();
                    claimed
                }
                Err(error) => {
                    drop(permits);
                    let delay = backoff.next();
                    tracing::error!(%error, ?delay, "pq: cannot claim jobs; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        () = shutdown.as_mut() => return,
                    }
                }
            };
            let mut wait = self.settings.poll_interval;
            if claimed.is_empty() {
                let running = !lock(in_flight).is_empty();
                if self.settings.burst && !running {
                    if !self.any_ready().await {
                        return;
                    }
                    // A claim resumes from its cursor and may pass over a job that sorts
                    // before it (a retry, say) for a moment: look again shortly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                // Registers this worker as waiting, so that every later put notifies; a put
                // that committed before did not, and one more look finds it.
                wait = self.idle_wait().await;
                claimed = self
                    .claim(&mut next_queue, permits.len())
                    .await
                    .unwrap_or_default();
            }
            if claimed.is_empty() {
                drop(permits);
                let any_queue = async {
                    if wakeups.is_empty() {
                        std::future::pending::<()>().await;
                    } else {
                        select_all(wakeups).await;
                    }
                };
                tokio::select! {
                    () = any_queue => {}
                    () = &mut work_done => {}
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.as_mut() => return,
                }
                continue;
            }
            permits.truncate(claimed.len());
            for (job, permit) in claimed.into_iter().zip(permits) {
                self.start(jobs, in_flight, outcomes, job, permit);
            }
        }
    }

    fn start(
        &self,
        jobs: &mut JoinSet<()>,
        in_flight: &InFlight,
        outcomes: &mpsc::UnboundedSender<Outcome>,
        job: Job,
        permit: OwnedSemaphorePermit,
    ) {
        lock(in_flight).insert(Claim::of(&job));
        let pq = self.pq.clone();
        let registry = Arc::clone(&self.registry);
        let outcomes = outcomes.clone();
        let keep_completed = self.settings.keep_completed;
        jobs.spawn(async move {
            let outcome = execute(&pq, &registry, job, keep_completed).await;
            drop(permit);
            // The completer outlives every job task, so the send fails only at a hard stop,
            // and then the claim stays in flight and is released.
            let _ = outcomes.send(outcome);
        });
    }

    /// Claims up to `limit` jobs, taking the queues in turn so that none starves.
    async fn claim(&self, next_queue: &mut usize, limit: usize) -> pq_core::Result<Vec<Job>> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        for _ in 0..self.settings.queues.len() {
            let queue = &self.settings.queues[*next_queue % self.settings.queues.len()];
            *next_queue = next_queue.wrapping_add(1);
            let jobs = self.pq.claim(queue, limit, self.settings.lease).await?;
            if !jobs.is_empty() {
                return Ok(jobs);
            }
        }
        Ok(Vec::new())
    }

    /// Subscribes to every queue, retrying while the database is unreachable.
    async fn subscribe(&self) -> Vec<Subscription> {
        let mut backoff = Backoff::default();
        let mut subscriptions = Vec::with_capacity(self.settings.queues.len());
        for queue in &self.settings.queues {
            loop {
                match self.pq.subscribe(queue).await {
                    Ok(subscription) => {
                        subscriptions.push(subscription);
                        break;
                    }
                    Err(error) => {
                        let delay = backoff.next();
                        tracing::error!(%error, ?delay, "pq: cannot LISTEN; retrying");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        subscriptions
    }

    /// Whether any of the worker's queues has a ready job, by a count that reads no cursor.
    async fn any_ready(&self) -> bool {
        for queue in &self.settings.queues {
            // An error counts as ready: a burst worker must not end on a failed look.
            if !matches!(self.pq.queue(queue).len().await, Ok(0)) {
                return true;
            }
        }
        false
    }

    /// How long an idle worker sleeps: until the earliest scheduled job is due, at most the
    /// poll interval.
    async fn idle_wait(&self) -> Duration {
        let mut wait = self.settings.poll_interval;
        for queue in &self.settings.queues {
            if let Ok(Some(seconds)) = self.pq.seconds_to_next_due(queue).await {
                wait = wait.min(Duration::from_secs_f64(seconds.max(0.0)));
            }
        }
        wait
    }
}

/// Doubling delays between retries against an unreachable database, from 100 ms to 30 s.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(100)
            .saturating_mul(1 << self.failures.min(9))
            .min(Duration::from_secs(30))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}
