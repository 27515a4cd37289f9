//! [`Worker`]: claims jobs of its queues and runs their tasks, up to `concurrency` at once.

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::future::select_all;
use pq_core::{Claim, Job, Pq, Subscription};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::complete::{lock, Completer, InFlight};
use crate::execute::{execute, Outcome};
use crate::metrics::{Registered, TaskMetrics};
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

    /// Runs at most this many jobs at once (default 16). A claim takes a job for each free
    /// slot, in one statement, once half the slots are free or 5 ms after the first one freed.
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
            metrics: Registered::default(),
        };
        run.run(shutdown).await;
        Ok(())
    }
}

/// What the worker's two claimers share.
struct Fetcher<'a> {
    /// One permit per job that may run at once.
    slots: Arc<Semaphore>,
    in_flight: &'a InFlight,
    outcomes: &'a mpsc::UnboundedSender<Outcome>,
    /// Woken when a claim came back full: more is ready than one claim takes.
    backlog: Notify,
}

/// A running worker.
struct Run {
    pq: Pq,
    registry: Arc<Registry>,
    settings: Settings,
    metrics: Registered,
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

        let fetcher = Fetcher {
            slots: Arc::new(Semaphore::new(self.settings.concurrency)),
            in_flight: &in_flight,
            outcomes: &outcomes,
            backlog: Notify::new(),
        };
        let (stopped, stop) = watch::channel(false);
        let mut jobs = JoinSet::new();
        let mut backlog_jobs = JoinSet::new();
        tokio::join!(
            async {
                self.fetch(&fetcher, &mut jobs, &progress, &mut shutdown)
                    .await;
                stopped.send_replace(true);
            },
            self.fetch_backlog(&fetcher, &mut backlog_jobs, stop),
        );
        tracing::info!(
            running = jobs.len() + backlog_jobs.len(),
            "pq: worker stopping"
        );

        // Let running jobs finish within the grace period; stop the rest.
        let finished = tokio::time::timeout(self.settings.grace_period, async {
            while jobs.join_next().await.is_some() {}
            while backlog_jobs.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                stopped = jobs.len() + backlog_jobs.len(),
                "pq: grace period over, stopping running jobs"
            );
            jobs.shutdown().await;
            backlog_jobs.shutdown().await;
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
        fetcher: &Fetcher<'_>,
        jobs: &mut JoinSet<()>,
        progress: &Arc<Notify>,
        shutdown: &mut Signal,
    ) {
        let subscriptions = tokio::select! {
            subscriptions = self.subscribe() => subscriptions,
            () = shutdown.as_mut() => return,
        };
        let mut next_queue = 0;
        let mut backoff = Backoff::default();
        loop {
            while jobs.try_join_next().is_some() {}
            let permits = tokio::select! {
                permits = self.gather_slots(&fetcher.slots) => permits,
                () = shutdown.as_mut() => return,
            };
            let Some(mut permits) = permits else {
                return;
            };

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

            let wanted = permits.num_permits();
            let mut claimed = match self
                .claim(fetcher, jobs, &mut next_queue, &mut permits)
                .await
            {
                Ok(claimed) => {
                    backoff.reset();
                    if claimed == wanted {
                        fetcher.backlog.notify_one();
                    }
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
            if claimed == 0 {
                let running = !lock(fetcher.in_flight).is_empty();
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
                    .claim(fetcher, jobs, &mut next_queue, &mut permits)
                    .await
                    .unwrap_or_default();
            }
            drop(permits); // The slots no job took.
            if claimed == 0 {
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
        }
    }

    /// A second claimer, at work only while a backlog lasts: while one claim is in flight,
    /// the jobs of the other run, so the database is never left waiting on the worker nor the
    /// worker on the database. It starts when the main fetcher's claim comes back full, and
    /// goes back to waiting when its own does not.
    async fn fetch_backlog(
        &self,
        fetcher: &Fetcher<'_>,
        jobs: &mut JoinSet<()>,
        mut stop: watch::Receiver<bool>,
    ) {
        if self.settings.concurrency < 2 {
            return;
        }
        let mut next_queue = 1;
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return,
                () = fetcher.backlog.notified() => {}
            }
            loop {
                while jobs.try_join_next().is_some() {}
                // Stopping wins over free slots: no claim once the worker stops.
                let permits = tokio::select! {
                    biased;
                    _ = stop.wait_for(|stop| *stop) => return,
                    permits = self.gather_slots(&fetcher.slots) => permits,
                };
                let Some(mut permits) = permits else {
                    return;
                };
                let wanted = permits.num_permits();
                // An error is the main fetcher's to report and retry.
                let claimed = self
                    .claim(fetcher, jobs, &mut next_queue, &mut permits)
                    .await
                    .unwrap_or_default();
                if claimed < wanted {
                    break;
                }
            }
        }
    }

    /// Waits for a free slot, then for a good share of them (see [`GATHER_SLOTS`]); `None`
    /// once the worker closes its slots.
    async fn gather_slots(&self, slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        let mut permits = Arc::clone(slots).acquire_owned().await.ok()?;
        take_free(slots, &mut permits);
        // Claim once a good share of the slots is free, not for the first free one: a claim
        // is a round trip and a commit whatever its size, and one claim of many jobs costs
        // the database far less than many claims of few. Slots of long jobs may not free up
        // soon, so the wait is short.
        let share = self.settings.concurrency.div_ceil(2);
        if permits.num_permits() < share {
            let missing = u32::try_from(share - permits.num_permits()).unwrap_or(u32::MAX);
            let more =
                tokio::time::timeout(GATHER_SLOTS, Arc::clone(slots).acquire_many_owned(missing));
            if let Ok(Ok(more)) = more.await {
                permits.merge(more);
            }
            take_free(slots, &mut permits);
        }
        Some(permits)
    }

    /// Claims a job for each slot of `permits`, taking the queues in turn so that none starves,
    /// and starts each on one of the slots. Returns how many it started.
    async fn claim(
        &self,
        fetcher: &Fetcher<'_>,
        jobs: &mut JoinSet<()>,
        next_queue: &mut usize,
        permits: &mut OwnedSemaphorePermit,
    ) -> pq_core::Result<usize> {
        let limit = u32::try_from(permits.num_permits()).unwrap_or(u32::MAX);
        for _ in 0..self.settings.queues.len() {
            let queue = &self.settings.queues[*next_queue % self.settings.queues.len()];
            *next_queue = next_queue.wrapping_add(1);
            let claimed = self.pq.claim(queue, limit, self.settings.lease).await?;
            if claimed.is_empty() {
                continue;
            }
            let started = claimed.len();
            lock(fetcher.in_flight).extend(claimed.iter().map(Claim::of));
            let mut starting = Starting {
                queue: Arc::from(queue.as_str()),
                task: None,
                inline: true,
            };
            for job in claimed {
                let permit = permits
                    .split(1)
                    .expect("a claim takes at most one job a slot");
                self.start(fetcher, jobs, &mut starting, job, permit);
            }
            return Ok(started);
        }
        Ok(0)
    }

    /// Runs `job` on `permit`'s slot. The claimer polls it once itself: most short jobs end
    /// there, without the cost of a task of their own (spawning, scheduling, waking another
    /// thread), which for a short job is most of the worker's work. A job that waits, or that
    /// the claimer cannot poll (see [`Starting`]), goes on in a task of its own.
    fn start(
        &self,
        fetcher: &Fetcher<'_>,
        jobs: &mut JoinSet<()>,
        starting: &mut Starting,
        job: Job,
        permit: OwnedSemaphorePermit,
    ) {
        // The application's recorder registers them: should it panic, the job runs unmeasured
        // rather than the panic stopping the claimer.
        let metrics = panic::catch_unwind(AssertUnwindSafe(|| {
            starting.metrics(&self.metrics, job.task().unwrap_or_default())
        }))
        .unwrap_or_else(|_| Arc::new(TaskMetrics::noop()));
        let queue = Arc::clone(&starting.queue);
        let pq = self.pq.clone();
        let registry = Arc::clone(&self.registry);
        let outcomes = fetcher.outcomes.clone();
        let keep_completed = self.settings.keep_completed;
        // Boxed, so that it can move to a task after a first poll.
        let mut run = Box::pin(async move {
            let outcome = execute(&pq, &registry, job, queue, &metrics, keep_completed).await;
            drop(permit);
            // The completer outlives every job task, so the send fails only at a hard stop,
            // and then the claim stays in flight and is released.
            let _ = outcomes.send(outcome);
        });
        if starting.inline {
            let started = Instant::now();
            // A task that panics ends with its job unrecorded, released at shutdown or rescued;
            // so does a job whose first poll panics here, where it must not stop the claim.
            // The waker is never used: a job still pending is polled again by its task.
            let first = panic::catch_unwind(AssertUnwindSafe(|| {
                run.as_mut().poll(&mut Context::from_waker(Waker::noop()))
            }));
            if started.elapsed() >= INLINE_LIMIT {
                starting.inline = false;
            }
            match first {
                Ok(Poll::Ready(())) | Err(_) => return,
                Ok(Poll::Pending) => {}
            }
        }
        jobs.spawn(run);
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

/// What the jobs of one claim share: their queue's name, and mostly their task.
struct Starting {
    queue: Arc<str>,
    /// The task of the job started last, and its metrics on this queue.
    task: Option<(String, Arc<TaskMetrics>)>,
    /// Whether the claim still polls its jobs first. A job that computed for
    /// [`INLINE_LIMIT`] without waiting (a handler that should use `spawn_blocking`) would
    /// hold back the jobs after it: those go straight to tasks of their own, which other
    /// threads run in parallel.
    inline: bool,
}

impl Starting {
    fn metrics(&mut self, registered: &Registered, task: &str) -> Arc<TaskMetrics> {
        match &self.task {
            Some((last, metrics)) if last == task => Arc::clone(metrics),
            _ => {
                let metrics = registered.get(&self.queue, task);
                self.task = Some((task.to_owned(), Arc::clone(&metrics)));
                metrics
            }
        }
    }
}

/// How long a job's first poll may take before the rest of its claim are spawned unpolled.
const INLINE_LIMIT: Duration = Duration::from_micros(500);

/// How long a worker with jobs running waits for half its slots to be free before it claims
/// for the slots free so far.
const GATHER_SLOTS: Duration = Duration::from_millis(5);

/// Adds every free slot to `permits`.
fn take_free(slots: &Arc<Semaphore>, permits: &mut OwnedSemaphorePermit) {
    let free = u32::try_from(slots.available_permits()).unwrap_or(u32::MAX);
    if free > 0 {
        if let Ok(more) = Arc::clone(slots).try_acquire_many_owned(free) {
            permits.merge(more);
        }
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
