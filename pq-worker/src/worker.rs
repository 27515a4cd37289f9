//! [`Worker`]: claims jobs of its queues and runs their tasks, up to `concurrency` at once.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use pq_core::protocol::{Claim, ClaimQueues, Failed, Failure, WorkerInfo};
use pq_core::{FlowDeclaration, Job, JobId, Pq, Subscription, WorkerId};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::complete::{give_up, lock, Completer, InFlight, Outcome, Pending, Recording};
use crate::cron::{Periodic, Schedule, ScheduleError};
use crate::execute::{self, Resources};
use crate::metrics::{Registered, TaskMetrics};
use crate::registry::{DuplicateTask, Registry};
use crate::report::Report;
use crate::shutdown::{Signal, Stop};
use crate::task::{Task, TaskCall};

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
    /// The worker's settings, or the table, cannot work: an invalid queue name, a table that
    /// was never migrated or lacks this pq's migrations.
    #[error(transparent)]
    Setup(#[from] pq_core::Error),
}

/// How many connections a worker's bookkeeping needs beside its handlers': its two claimers,
/// its completer, and its heartbeat.
const BOOKKEEPING_CONNECTIONS: u32 = 4;

/// How long a stopping worker goes on recording outcomes after its jobs ended, should the
/// database be slow or away: what it cannot record by then returns through its lease.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs registered tasks: claims ready jobs of its queues, runs up to `concurrency` of them at
/// once, records each outcome, retries failures, keeps its registration alive and rescues the
/// jobs of dead workers, until a shutdown signal (SIGINT or SIGTERM by default) or, in burst
/// mode, until nothing is ready.
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
    /// Jobs claimed beyond the free slots, waiting for one; `None`: adapted to the jobs' pace.
    prefetch: Option<usize>,
    burst: bool,
    lease: Duration,
    poll_interval: Duration,
    grace_period: Duration,
    keep_completed: bool,
    max_rescues: u32,
    warn_unrunnable_after: Duration,
    /// When not empty, the only jobs it claims, once ready (see [`crate::testing::run_job`]).
    only: Vec<JobId>,
    /// The schedules it fires beside its `cron` tasks'.
    periodic: Vec<Periodic>,
}

impl Worker {
    /// A worker for every task linked into the program (see [`Registry::from_inventory`]).
    pub fn new(pq: Pq) -> Self {
        // Without LISTEN (behind a transaction pooler with no direct URL), polling is all.
        let poll_interval = Duration::from_secs(if pq.listens() { 5 } else { 1 });
        Self {
            pq,
            registry: None,
            shutdown: None,
            settings: Settings {
                queues: Vec::new(),
                concurrency: 16,
                prefetch: None,
                burst: false,
                lease: Duration::from_secs(30),
                poll_interval,
                grace_period: Duration::from_secs(30),
                keep_completed: false,
                max_rescues: 3,
                warn_unrunnable_after: Duration::from_secs(300),
                only: Vec::new(),
                periodic: Vec::new(),
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
    /// slot and each free place of the [`prefetch`](Worker::prefetch), in one statement for all
    /// the worker's queues, once half of them are free or 5 ms after the first one freed. A
    /// finished job whose outcome is still being recorded holds a lease, of which the worker
    /// has [`RECORDING`] more: it never holds more than this many running jobs, the prefetched
    /// ones and `RECORDING` finished ones, however fast they fail.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.settings.concurrency = concurrency.clamp(1, 100_000);
        self
    }

    /// Claims this many jobs beyond its free slots (at most 100,000), instead of the default:
    /// about [`PREFETCH_WAIT`] of work at the pace its jobs start, at most
    /// [`PREFETCH_MOST`]. Prefetched jobs wait in the worker, under its heartbeat, and each
    /// starts the moment a slot frees, in the order claimed, while the next claim is under
    /// way: claims are larger and fewer, and slots are not left idle for a claim's round trip.
    /// Short jobs then drain several times faster at a concurrency of 16 or 64; jobs that run
    /// for long start too slowly for the default to keep any waiting.
    ///
    /// What it costs: a job waiting here is `running` in the table, so other workers cannot
    /// take it, and counts against its queue's and task's limits; a more urgent job enqueued
    /// meanwhile starts after those already waiting (by default, about `PREFETCH_WAIT` later).
    /// A worker that stops gives back its waiting jobs at once. `prefetch(0)` claims only for
    /// free slots.
    ///
    /// ```no_run
    /// # async fn example(pq: pq::Pq) -> anyhow::Result<()> {
    /// // Claim only what can start now, so that idle workers get the rest.
    /// pq::Worker::new(pq).concurrency(8).prefetch(0).run().await?;
    /// # Ok(()) }
    /// ```
    pub fn prefetch(mut self, jobs: usize) -> Self {
        self.settings.prefetch = Some(jobs.min(100_000));
        self
    }

    /// Returns once no job it could claim is ready and none is running, instead of waiting
    /// for more: a retry that falls due before then runs too. Jobs that other sessions hold in
    /// their transactions are theirs. [`run`](Worker::run)'s [`Report`] says what came of it.
    pub fn burst(mut self) -> Self {
        self.settings.burst = true;
        self
    }

    /// How long the worker's registration holds without a heartbeat (default 30 s). It beats
    /// every third of it, one statement whatever it runs; if it dies (or freezes, or is cut
    /// off), its jobs return to the queue this long after its last heartbeat. At least 300 ms,
    /// at most a year.
    pub fn lease(mut self, lease: Duration) -> Self {
        // Bounded above so that the heartbeat and rescue timers (a third and half of it) stay
        // within what a clock can add: `Duration::MAX` would make them panic.
        self.settings.lease = lease.clamp(
            Duration::from_millis(300),
            Duration::from_secs(365 * 86_400),
        );
        self
    }

    /// How often an idle worker looks for jobs without being notified (default 5 s): the
    /// fallback for a lost notification. Behind a transaction pooler without a
    /// [`direct_url`](pq_core::PqBuilder::direct_url) nothing notifies, and the default is 1 s.
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

    /// How many times a job may be lost with its worker (a crash, a freeze, a network cut)
    /// and run again (default 3). Those runs do not spend its task's retries; past this, the
    /// job fails for good, so that a job that kills its worker every time still ends.
    pub fn max_rescues(mut self, rescues: u32) -> Self {
        self.settings.max_rescues = rescues;
        self
    }

    /// After how long a ready job of one of its queues that no live worker can run (no worker
    /// registered its task) makes it log a warning (default 5 minutes). A worker claims only
    /// the jobs of its own tasks: during a rolling deploy, a job of a task the old binaries
    /// lack waits for a new one, and one left waiting says so. See
    /// [`Admin::unrunnable`](pq_core::Admin::unrunnable). At least a second.
    pub fn warn_unrunnable_after(mut self, after: Duration) -> Self {
        self.settings.warn_unrunnable_after = after.max(Duration::from_secs(1));
        self
    }

    /// Stops gracefully when `signal` completes, instead of on SIGINT or SIGTERM. To stop at
    /// once, drop the future of [`run`](Worker::run).
    pub fn shutdown_on(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// Claims only the job `id`, whatever its queue, while it is ready: a test's run of one job.
    pub(crate) fn only_job(mut self, id: JobId) -> Self {
        self.settings.only = vec![id];
        self
    }

    /// Enqueues `call` at each fire time of the cron expression `schedule` (read in UTC, missed
    /// fires coalesced; see [`Schedule`] for the rest), fleet-wide: every worker that defines
    /// it may fire it, and each fire time gets one job, on the database's clock. The job
    /// goes to the call's queue, whose workers run it; [`TaskContext::scheduled_at`] tells the
    /// run its fire time. Not in burst mode.
    ///
    /// ```no_run
    /// #[pq::task]
    /// async fn refresh(region: String) -> anyhow::Result<()> {
    ///     Ok(())
    /// }
    ///
    /// # async fn example(pq: pq::Pq) -> anyhow::Result<()> {
    /// pq::Worker::new(pq)
    ///     .periodic("*/5 * * * *", refresh("eu".into()))?
    ///     .periodic("0 */2 * * *", refresh("us".into()))?
    ///     .run()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// [`TaskContext::scheduled_at`]: crate::TaskContext::scheduled_at
    pub fn periodic<T: Task>(
        self,
        schedule: &str,
        call: TaskCall<T>,
    ) -> Result<Self, ScheduleError> {
        self.schedule(Schedule::new(schedule)?, call)
    }

    /// Enqueues `call` at each fire time of `schedule`, as [`periodic`](Worker::periodic)
    /// does. The schedule's name (by default the task's, with the call's arguments when it has
    /// any) is its key in the table: workers that define one name share one schedule, and a
    /// worker given two of one name keeps the first. The call's arguments and queue make its
    /// jobs, keyed as a call with those arguments is for a task with a flow policy; its other
    /// options (times, timeout, unique key, a flow key of its own) are not kept.
    ///
    /// ```no_run
    /// #[pq::task]
    /// async fn report(day: bool) {}
    ///
    /// # async fn example(pq: pq::Pq) -> anyhow::Result<()> {
    /// let nightly = pq::Schedule::new("0 3 * * *")?
    ///     .timezone("Europe/Berlin")?
    ///     .on_missed(pq::OnMissed::CatchUp)
    ///     .named("nightly report");
    /// pq::Worker::new(pq).schedule(nightly, report(true))?.run().await?;
    /// # Ok(()) }
    /// ```
    pub fn schedule<T: Task>(
        mut self,
        schedule: Schedule,
        call: TaskCall<T>,
    ) -> Result<Self, ScheduleError> {
        let data = serde_json::to_string(call.args())?;
        let name = schedule.name().map_or_else(
            || match data.as_str() {
                "{}" => T::NAME.to_owned(),
                _ => format!("{} {data}", T::NAME),
            },
            str::to_owned,
        );
        if name.len() > 1000 {
            return Err(ScheduleError::NameTooLong(name.len()));
        }
        self.settings.periodic.push(Periodic {
            schedule,
            name,
            task: T::NAME,
            queue: call.queue_name().to_string(),
            data,
            flow_key: crate::registry::flow_key::<T>,
        });
        Ok(self)
    }

    /// Runs these tasks rather than every registered one.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Works until shut down (or, in burst mode, until nothing is ready); returns once every
    /// job it took has finished or been returned to the queue, with a [`Report`] of what its
    /// runs came to.
    ///
    /// Dropping the future (in a `select!`, a timeout) stops the worker at once: every task it
    /// started ends with it, and a task of its own records the outcomes its jobs reached, then
    /// returns its unfinished jobs to the queue (should that fail, they return when its lease
    /// runs out).
    pub async fn run(mut self) -> Result<Report, WorkerError> {
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
        let claim_queues = ClaimQueues::new(queues.iter().cloned())?;
        let mut stop = match self.shutdown {
            Some(signal) => Stop::Custom(Some(signal)),
            None => Stop::signals(),
        };
        // Its `cron` tasks' schedules and its own, which a burst worker does not fire.
        let mut periodic = std::mem::take(&mut self.settings.periodic);
        for definition in registry.iter() {
            if let Some(cron) = definition.options.cron {
                match Periodic::of_task(
                    definition.name,
                    definition.options.queue,
                    cron,
                    definition.flow_key,
                ) {
                    Ok(schedule) => periodic.push(schedule),
                    Err(error) => {
                        tracing::error!(task = definition.name, %error, "pq: cannot read a cron task's schedule")
                    }
                }
            }
        }
        if self.settings.burst {
            periodic.clear();
        }
        let concurrency = u32::try_from(self.settings.concurrency).unwrap_or(u32::MAX);
        // The schedules' loop has a connection of its own, beside the bookkeeping's.
        let bookkeeping = BOOKKEEPING_CONNECTIONS + u32::from(!periodic.is_empty());
        let own = self
            .pq
            .with_own_pool(concurrency.saturating_add(bookkeeping));
        let info = WorkerInfo {
            queues: claim_queues.names().to_vec(),
            concurrency,
            lease: self.settings.lease,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            tasks: Some(registry.iter().map(|task| task.name.to_owned()).collect()),
        };
        // Its tasks' flow policies, declared as it registers, before its first claim.
        let flows: Vec<FlowDeclaration> = registry
            .iter()
            .map(|task| FlowDeclaration {
                task: task.name.to_owned(),
                queue: task.options.queue.to_owned(),
                policy: task.options.flow,
            })
            .collect();
        let Some(worker) = register(&own, &info, &flows, &mut stop).await? else {
            return Ok(Report::default());
        };
        let run = Run {
            periodic,
            resources: Arc::new(Resources {
                pq: self.pq,
                own: own.clone(),
                keep_completed: self.settings.keep_completed,
                cancels: Arc::default(),
            }),
            worker,
            registry: Arc::new(registry),
            settings: self.settings,
            metrics: Registered::default(),
        };
        Ok(run.run(claim_queues, info, &mut stop).await)
    }
}

/// Checks the table and registers the worker, waiting for the database while it is
/// unreachable; `None` if asked to stop meanwhile.
async fn register(
    pq: &Pq,
    info: &WorkerInfo,
    flows: &[FlowDeclaration],
    stop: &mut Stop,
) -> Result<Option<WorkerId>, WorkerError> {
    let mut backoff = Backoff::default();
    loop {
        let registered = async {
            pq.check_schema().await?;
            warn_of_connection_budget(pq, info).await;
            for task in pq.declare_flows(flows).await? {
                tracing::warn!(
                    task,
                    "pq: this task has a policy in the table that this program's attribute lacks; it still applies (`pq queues forget-policy` lifts it)"
                );
            }
            pq.register_worker(info).await
        };
        let outcome = tokio::select! {
            outcome = registered => outcome,
            () = stop.next() => return Ok(None),
        };
        match outcome {
            Ok(worker) => return Ok(Some(worker)),
            Err(error) if error.is_transient() => {
                let delay = backoff.next();
                tracing::error!(%error, ?delay, "pq: cannot register the worker; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.next() => return Ok(None),
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Warns when the server may not have the connections the worker could ask for: one for each
/// job that opens its transaction, and its bookkeeping's. Most handlers open none, so this is no
/// reason to refuse to start.
async fn warn_of_connection_budget(pq: &Pq, info: &WorkerInfo) {
    // A pooler's clients are not the server's connections.
    if pq.behind_pooler() {
        return;
    }
    let free = sqlx::query_scalar::<_, i64>(
        "SELECT current_setting('max_connections')::int8 \
           - current_setting('superuser_reserved_connections')::int8 \
           - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
    )
    .fetch_one(pq.pool());
    let wanted = i64::from(info.concurrency) + i64::from(BOOKKEEPING_CONNECTIONS);
    if let Ok(Ok(free)) = tokio::time::timeout(Duration::from_secs(5), free).await {
        if free < wanted {
            tracing::warn!(
                free,
                wanted,
                "pq: the server has fewer free connections than this worker may open (its concurrency, for jobs that open their transaction, and {BOOKKEEPING_CONNECTIONS} for its bookkeeping)"
            );
        }
    }
}

/// Gives back a worker's unfinished jobs and its registration when its `run` future is dropped:
/// a task of its own, bounded by the flush timeout (or half the lease), since a drop cannot
/// wait. It lets the completer record what the jobs decided first: a job that finished,
/// released instead, would run again.
struct Cleanup {
    pq: Pq,
    worker: WorkerId,
    /// How long a drop lets the completer go on.
    flush: Duration,
    in_flight: InFlight,
    /// Until the worker, stopping, waits for it itself.
    completer: Option<JoinHandle<()>>,
    armed: bool,
}

impl Cleanup {
    /// Waits for the completer to record every outcome, until `deadline`: false if it could
    /// not, and it is then stopped.
    async fn flush(&mut self, deadline: tokio::time::Instant) -> bool {
        let Some(completer) = &mut self.completer else {
            return true;
        };
        let flushed = tokio::time::timeout_at(deadline, completer).await.is_ok();
        if let Some(completer) = self.completer.take() {
            completer.abort();
        }
        flushed
    }

    /// Stops the completer, if it still runs, and leaves the rest to the caller.
    fn disarm(mut self) {
        if let Some(completer) = self.completer.take() {
            completer.abort();
        }
        self.armed = false;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let completer = self.completer.take();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            if let Some(completer) = completer {
                completer.abort();
            }
            return; // Its jobs return when its lease runs out.
        };
        let flush = self.flush;
        let unfinished = lock(&self.in_flight).len();
        let (pq, worker) = (self.pq.clone(), self.worker);
        runtime.spawn(async move {
            tracing::warn!(
                unfinished,
                "pq: the worker's future was dropped; recording what its jobs did and returning the rest to the queue"
            );
            // The completer ends once the jobs' tasks, aborted with the future, are gone.
            if let Some(completer) = completer {
                let abort = completer.abort_handle();
                if tokio::time::timeout(flush, completer).await.is_err() {
                    abort.abort();
                }
            }
            if let Err(error) = pq.deregister_worker(worker).await {
                tracing::error!(%error, "pq: cannot return a dropped worker's jobs; they return when its lease runs out");
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), pq.pool().close()).await;
        });
    }
}

fn take_report(report: &Mutex<Report>) -> Report {
    std::mem::take(&mut *crate::report::lock(report))
}

/// What the worker's two claimers share.
struct Fetcher<'a> {
    slots: Slots,
    /// Claimed jobs waiting for a slot, in the order claimed.
    waiting: Mutex<VecDeque<Waiting>>,
    /// Woken when jobs were left waiting.
    more_waiting: Notify,
    in_flight: &'a InFlight,
    outcomes: &'a mpsc::UnboundedSender<Recording>,
    /// Woken when a claim came back full: more is ready than one claim takes.
    backlog: Notify,
    /// Claims hold it shared; giving back what a failed claim may have taken holds it alone.
    claiming: tokio::sync::RwLock<()>,
    /// Set when a claim failed or was abandoned: it may have committed all the same.
    unsure: AtomicBool,
    /// What the last claim said of its limited queues: a limit held back ready jobs, and how
    /// soon to look again (µs, 1 at least); 0 if none did.
    held_back: AtomicU64,
}

/// A claimed job waiting for a slot: its place, and its lease (dropped, the job is released).
struct Waiting {
    job: Job,
    room: OwnedSemaphorePermit,
    pending: Pending,
}

fn lock_waiting(
    waiting: &Mutex<VecDeque<Waiting>>,
) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
    waiting
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Fetcher<'_> {
    fn held_back(&self) -> Option<Duration> {
        match self.held_back.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }
}

/// Marks the claims unsure unless disarmed: dropped with its claim, or on its error.
struct Unsure<'a>(Option<&'a AtomicBool>);

impl Drop for Unsure<'_> {
    fn drop(&mut self) {
        if let Some(unsure) = self.0 {
            unsure.store(true, Ordering::Relaxed);
        }
    }
}

/// A running worker.
struct Run {
    /// The schedules it fires.
    periodic: Vec<Periodic>,
    resources: Arc<Resources>,
    worker: WorkerId,
    registry: Arc<Registry>,
    settings: Settings,
    metrics: Registered,
}

impl Run {
    async fn run(self, queues: ClaimQueues, info: WorkerInfo, stop: &mut Stop) -> Report {
        let own = &self.resources.own;
        tracing::info!(
            worker = self.worker.0,
            queues = ?self.settings.queues,
            concurrency = self.settings.concurrency,
            "pq: worker started"
        );
        // Every task the worker starts is in one of these sets, and ends with it.
        let mut keep_alive = JoinSet::new();
        keep_alive.spawn(crate::heartbeat::keep_alive(
            own.clone(),
            self.worker,
            info,
            self.settings.max_rescues,
            Arc::clone(&self.resources.cancels),
        ));
        keep_alive.spawn(crate::heartbeat::maintain(
            own.clone(),
            (self.settings.lease / 2).max(Duration::from_secs(1)),
        ));
        keep_alive.spawn(crate::heartbeat::watch_unrunnable(
            own.clone(),
            self.settings.queues.clone(),
            self.settings.warn_unrunnable_after,
        ));
        if !self.periodic.is_empty() {
            keep_alive.spawn(crate::cron::run(own.clone(), self.periodic.clone()));
        }
        let progress = Arc::new(Notify::new());
        let (outcomes, received) = mpsc::unbounded_channel();
        let in_flight = InFlight::default();
        let report = Arc::new(Mutex::new(Report::default()));
        // Whatever happens to this future from here, its claims are recorded or given back.
        let mut cleanup = Cleanup {
            pq: own.clone(),
            worker: self.worker,
            // The heartbeat ends with the future: past half the lease, other workers may rescue
            // the jobs, and an outcome recorded then would be refused anyway.
            flush: FLUSH_TIMEOUT.min(self.settings.lease / 2),
            in_flight: Arc::clone(&in_flight),
            completer: Some(tokio::spawn(
                Completer {
                    pq: own.clone(),
                    keep_completed: self.settings.keep_completed,
                    in_flight: Arc::clone(&in_flight),
                    progress: Arc::clone(&progress),
                    cancels: Arc::clone(&self.resources.cancels),
                    report: Arc::clone(&report),
                }
                .run(received),
            )),
            armed: true,
        };

        let fetcher = Fetcher {
            slots: Slots::new(self.settings.concurrency, self.settings.prefetch),
            waiting: Mutex::default(),
            more_waiting: Notify::new(),
            in_flight: &in_flight,
            outcomes: &outcomes,
            backlog: Notify::new(),
            claiming: tokio::sync::RwLock::new(()),
            unsure: AtomicBool::new(false),
            held_back: AtomicU64::new(0),
        };
        let (stopped, stop_backlog) = watch::channel(false);
        let mut jobs = JoinSet::new();
        let mut backlog_jobs = JoinSet::new();
        let mut waited_jobs = JoinSet::new();
        let stop_starting = stop_backlog.clone();

        tokio::join!(
            async {
                self.fetch(&fetcher, &mut jobs, &queues, &progress, stop)
                    .await;
                stopped.send_replace(true);
            },
            self.fetch_backlog(&fetcher, &mut backlog_jobs, &queues, stop_backlog),
            self.start_waiting_jobs(&fetcher, &mut waited_jobs, stop_starting),
        );
        // Jobs still waiting for a slot go back to the queue at once: dropped, their pending
        // outcomes release them.
        drop(fetcher);
        tracing::info!(
            running = jobs.len() + backlog_jobs.len() + waited_jobs.len(),
            "pq: worker stopping; a second signal stops it at once"
        );
        // Let running jobs finish within the grace period; stop the rest, whose pending
        // outcomes then ask for them to be released.
        let finished = tokio::select! {
            finished = tokio::time::timeout(self.settings.grace_period, async {
                while jobs.join_next().await.is_some() {}
                while backlog_jobs.join_next().await.is_some() {}
                while waited_jobs.join_next().await.is_some() {}
            }) => finished.is_ok(),
            () = stop.next() => return self.stop_now(&in_flight, cleanup, &report),
        };
        if !finished {
            tracing::warn!(
                stopped = jobs.len() + backlog_jobs.len() + waited_jobs.len(),
                "pq: grace period over, stopping running jobs"
            );
        }
        jobs.shutdown().await;
        backlog_jobs.shutdown().await;
        waited_jobs.shutdown().await;
        drop(outcomes);
        // Everything from here ends by the flush deadline, whatever the database does.
        let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
        // Records what it can, heartbeat still beating.
        let flushed = tokio::select! {
            flushed = cleanup.flush(deadline) => flushed,
            () = stop.next() => return self.stop_now(&in_flight, cleanup, &report),
        };
        if !flushed {
            tracing::error!(
                unrecorded = lock(&in_flight).len(),
                "pq: cannot record every outcome within {FLUSH_TIMEOUT:?}"
            );
        }
        keep_alive.shutdown().await;
        // What is still held never got its outcome recorded: back to the queue, with the
        // worker's registration gone.
        let unrecorded = lock(&in_flight).len();
        match tokio::time::timeout_at(deadline, own.deregister_worker(self.worker)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(released)) => {
                tracing::info!(released, "pq: returned unfinished jobs to the queue");
                crate::report::lock(&report).released += released;
            }
            Ok(Err(_)) | Err(_) => tracing::error!(
                unrecorded,
                "pq: cannot return unfinished jobs or deregister; they return when this worker's lease runs out"
            ),
        }
        // Closing waits for connections still out, which a server that hangs may never give back.
        let _ = tokio::time::timeout(Duration::from_millis(500), own.pool().close()).await;
        cleanup.disarm();
        tracing::info!("pq: worker stopped");
        take_report(&report)
    }

    /// A second signal: every task ends now, nothing more is recorded; the worker's jobs
    /// return when its lease runs out.
    fn stop_now(&self, in_flight: &InFlight, cleanup: Cleanup, report: &Mutex<Report>) -> Report {
        cleanup.disarm();
        tracing::warn!(
            unrecorded = lock(in_flight).len(),
            "pq: stopping at once; unfinished jobs return when this worker's lease runs out"
        );
        lock(in_flight).clear();
        take_report(report)
    }

    /// Claims and starts jobs until shut down, or in burst mode until nothing is ready or running.
    /// The shutdown signal is heeded at once, a claim in flight included: a claim abandoned
    /// half-way either did not happen, or took jobs for this worker that it never saw, which
    /// come back through the rescue once it deregisters.
    async fn fetch(
        &self,
        fetcher: &Fetcher<'_>,
        jobs: &mut JoinSet<()>,
        queues: &ClaimQueues,
        progress: &Arc<Notify>,
        stop: &mut Stop,
    ) {
        let subscription = tokio::select! {
            subscription = self.subscribe(queues.names()) => subscription,
            () = stop.next() => return,
        };
        let names: Vec<String> = queues.names().to_vec();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut backoff = Backoff::default();
        let mut idle = pq_core::IdleDelay::default();
        // Claims in a row that took nothing while a limit held jobs back.
        let mut held_in_a_row = 0;
        loop {
            while jobs.try_join_next().is_some() {}
            let permits = tokio::select! {
                permits = self.gather(&fetcher.slots) => permits,
                () = stop.next() => return,
            };
            let Some(mut permits) = permits else {
                return;
            };

            // Armed before claiming, so that a job put meanwhile still wakes the wait below.
            let wakeup = subscription.notified();
            tokio::pin!(wakeup);
            wakeup.as_mut().enable();
            let work_done = progress.notified();
            tokio::pin!(work_done);
            work_done.as_mut().enable();

            let wanted = permits.count();
            let claim = tokio::select! {
                claim = self.claim(fetcher, jobs, queues, &mut permits) => claim,
                () = stop.next() => return,
            };
            let mut claimed = match claim {
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
                        () = stop.next() => return,
                    }
                }
            };
            let mut wait = self.settings.poll_interval;
            if claimed > 0 {
                held_in_a_row = 0;
            }
            if claimed == 0 {
                if self.settings.burst {
                    // The backlog claimer's claim in flight locks the jobs it takes, which this
                    // one passed over: it must come back before the queue can be called empty.
                    let alone = tokio::select! {
                        alone = self.claim_alone(fetcher) => alone,
                        () = stop.next() => return,
                    };
                    if lock(fetcher.in_flight).is_empty() {
                        // A claim resumes where the last ones stopped, and may pass over a job
                        // that sorts before (a retry, say): one more from the top, then done.
                        queues.restart();
                        let claim = match alone {
                            Ok(_alone) => tokio::select! {
                                claim = self.claim_now(fetcher, jobs, queues, &mut permits) => claim,
                                () = stop.next() => return,
                            },
                            Err(error) => Err(error),
                        };
                        match claim {
                            // Jobs a limit held back are not done: wait for them.
                            Ok(0) if fetcher.held_back().is_some() => {}
                            Ok(0) => return,
                            Ok(_) => continue,
                            Err(_) => {
                                drop(permits);
                                tokio::time::sleep(backoff.next()).await;
                                continue;
                            }
                        }
                    }
                }
                if let Some(held) = fetcher.held_back() {
                    // A limit, not an empty queue, held jobs back: look again when it may have
                    // room, whatever notifications say; less often while it has none (another
                    // worker's long jobs, a slow rate), up to the poll interval.
                    wait = (held.max(MIN_LIMITED_POLL) * 2u32.pow(held_in_a_row.min(16)))
                        .min(self.settings.poll_interval);
                    held_in_a_row += 1;
                } else {
                    // Registers this worker as waiting, so that every later put notifies; a
                    // put that committed before did not, and one more look finds it.
                    let registered = tokio::select! {
                        registered = self.resources.own.register_waiting(&names) => registered,
                        () = stop.next() => return,
                    };
                    wait = match registered {
                        Ok(registered) => idle.next(registered, self.settings.poll_interval),
                        Err(_) => self.settings.poll_interval,
                    };
                    queues.restart();
                    claimed = tokio::select! {
                        claim = self.claim(fetcher, jobs, queues, &mut permits) => claim,
                        () = stop.next() => return,
                    }
                    .unwrap_or_default();
                }
            }
            // The slots no job took.
            drop(permits);
            // A limit that cut this claim short has no room for the next one before some of
            // the jobs it counts end: wait for ours, or for the time it gave.
            let cut_short = match fetcher.held_back() {
                Some(held) if claimed > 0 && claimed < wanted => {
                    wait = held.max(MIN_LIMITED_POLL);
                    true
                }
                _ => false,
            };
            if claimed == 0 || cut_short {
                tokio::select! {
                    () = &mut wakeup => {}
                    () = &mut work_done => {}
                    () = tokio::time::sleep(wait) => {}
                    () = stop.next() => return,
                }
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
        queues: &ClaimQueues,
        mut stop: watch::Receiver<bool>,
    ) {
        if self.settings.concurrency < 2 {
            return;
        }
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
                    permits = self.gather(&fetcher.slots) => permits,
                };
                let Some(mut permits) = permits else {
                    return;
                };
                let wanted = permits.count();
                // An error is the main fetcher's to report and retry.
                let claimed = tokio::select! {
                    claim = self.claim(fetcher, jobs, queues, &mut permits) => claim,
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                .unwrap_or_default();
                if claimed < wanted {
                    break;
                }
            }
        }
    }

    /// Waits for room for a job (a free slot, or a place to wait for one), then for a good share
    /// of it (see [`GATHER_SLOTS`]), and for as many leases; `None` once the worker closes its
    /// slots.
    async fn gather(&self, slots: &Slots) -> Option<Permits> {
        let share = slots.room().div_ceil(2);
        let mut room = Arc::clone(&slots.room).acquire_owned().await.ok()?;
        take_free(&slots.room, &mut room, usize::MAX);
        // Claim once a good share of the room is free, not for the first free place: a claim
        // is a round trip and a commit whatever its size, and one claim of many jobs costs
        // the database far less than many claims of few. Slots of long jobs may not free up
        // soon, so the wait is short.
        if room.num_permits() < share {
            let missing = u32::try_from(share - room.num_permits()).unwrap_or(u32::MAX);
            let more = tokio::time::timeout(
                GATHER_SLOTS,
                Arc::clone(&slots.room).acquire_many_owned(missing),
            );
            if let Ok(Ok(more)) = more.await {
                room.merge(more);
            }
            take_free(&slots.room, &mut room, usize::MAX);
        }
        let mut lease = Arc::clone(&slots.lease).acquire_owned().await.ok()?;
        take_free(&slots.lease, &mut lease, room.num_permits());
        if let Some(unleased) = room.num_permits().checked_sub(lease.num_permits()) {
            drop(room.split(unleased));
        }
        Some(Permits { room, lease })
    }

    /// Claims a job for each slot of `permits`, from every queue in one statement, and starts
    /// each on one of the slots. Returns how many it took.
    async fn claim(
        &self,
        fetcher: &Fetcher<'_>,
        jobs: &mut JoinSet<()>,
        queues: &ClaimQueues,
        permits: &mut Permits,
    ) -> pq_core::Result<usize> {
        if fetcher.unsure.load(Ordering::Relaxed) {
            drop(self.claim_alone(fetcher).await?);
        }
        let _claiming = fetcher.claiming.read().await;
        self.claim_now(fetcher, jobs, queues, permits).await
    }

    /// Waits until no claim is in flight, and keeps others from starting until dropped.
    ///
    /// A claim that failed may have committed all the same (its connection was lost after
    /// the commit, before the reply): it took jobs for this worker that the worker never
    /// saw, and its heartbeat would keep them from rescue. They go back first, with no
    /// other claim in flight to be mistaken for one.
    async fn claim_alone<'f>(
        &self,
        fetcher: &'f Fetcher<'_>,
    ) -> pq_core::Result<tokio::sync::RwLockWriteGuard<'f, ()>> {
        let alone = fetcher.claiming.write().await;
        if fetcher.unsure.load(Ordering::Relaxed) {
            let known: Vec<Claim> = lock(fetcher.in_flight).iter().copied().collect();
            let released = self
                .resources
                .own
                .release_unknown(self.worker, &known)
                .await?;
            if released > 0 {
                tracing::warn!(
                    released,
                    "pq: gave back jobs a failed claim had taken unbeknown to the worker"
                );
            }
            fetcher.unsure.store(false, Ordering::Relaxed);
        }
        Ok(alone)
    }

    /// [`claim`](Self::claim), with the claims lock (shared or alone) already held.
    async fn claim_now(
        &self,
        fetcher: &Fetcher<'_>,
        jobs: &mut JoinSet<()>,
        queues: &ClaimQueues,
        permits: &mut Permits,
    ) -> pq_core::Result<usize> {
        let own = &self.resources.own;
        let mut unsure = Unsure(Some(&fetcher.unsure));
        let limit = u32::try_from(permits.count()).unwrap_or(u32::MAX);
        let claimed = match self.settings.only.as_slice() {
            [] => own.claim(self.worker, queues, limit).await?,
            only => own.claim_jobs(self.worker, only, limit).await?,
        };
        let held_back = claimed.held_back.map_or(0, |again| {
            u64::try_from(again.as_micros()).unwrap_or(u64::MAX).max(1)
        });
        fetcher.held_back.store(held_back, Ordering::Relaxed);
        let taken = claimed.jobs.len() + claimed.unreadable.len();
        {
            let mut in_flight = lock(fetcher.in_flight);
            in_flight.extend(claimed.jobs.iter().filter_map(Job::claim));
            in_flight.extend(claimed.unreadable.iter().map(|(claim, _)| *claim));
        }
        unsure.0 = None;
        for (claim, reason) in claimed.unreadable {
            let (_room, lease) = permits.one();
            Pending::new(claim, lease, fetcher.outcomes.clone())
                .finish(give_up(claim, format!("cannot be read: {reason}")));
        }
        {
            let mut waiting = lock_waiting(&fetcher.waiting);
            for job in claimed.jobs {
                let Some(claim) = job.claim() else { continue };
                let (room, lease) = permits.one();
                let pending = Pending::new(claim, lease, fetcher.outcomes.clone());
                waiting.push_back(Waiting { job, room, pending });
            }
        }
        let mut starting = Starting::new();
        self.start_waiting(fetcher, jobs, &mut starting, None);
        Ok(taken)
    }

    /// Starts the waiting jobs, in order, on the free slots: on `first` (a slot already
    /// taken), then those free now. Leaves the rest to [`start_waiting_jobs`](Self::start_waiting_jobs).
    fn start_waiting(
        &self,
        fetcher: &Fetcher<'_>,
        jobs: &mut JoinSet<()>,
        starting: &mut Starting,
        mut first: Option<OwnedSemaphorePermit>,
    ) {
        loop {
            let Some(run) = first
                .take()
                .or_else(|| Arc::clone(&fetcher.slots.run).try_acquire_owned().ok())
            else {
                fetcher.more_waiting.notify_one();
                return;
            };
            let Some(waiting) = lock_waiting(&fetcher.waiting).pop_front() else {
                return;
            };
            fetcher.slots.started.fetch_add(1, Ordering::Relaxed);
            self.start(jobs, starting, waiting, run);
        }
    }

    /// Starts each waiting job as a slot frees, until the worker stops.
    async fn start_waiting_jobs(
        &self,
        fetcher: &Fetcher<'_>,
        jobs: &mut JoinSet<()>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return,
                () = fetcher.more_waiting.notified() => {}
            }
            // One for all it starts until none waits: two slow first polls in a row, and the
            // rest go to tasks of their own, as a claim's do.
            let mut starting = Starting::new();
            while !lock_waiting(&fetcher.waiting).is_empty() {
                while jobs.try_join_next().is_some() {}
                let run = tokio::select! {
                    biased;
                    _ = stop.wait_for(|stop| *stop) => return,
                    run = Arc::clone(&fetcher.slots.run).acquire_owned() => run,
                };
                let Ok(run) = run else { return };
                self.start_waiting(fetcher, jobs, &mut starting, Some(run));
            }
        }
    }

    /// Runs a waiting job on the `run` slot, its lease held until its outcome is recorded. The
    /// caller (a claimer, or the starter of waiting jobs) polls it once itself: most short
    /// jobs end there, without the cost of a task of their own (spawning, scheduling, waking
    /// another thread), which for a short job is most of the worker's work. A job that waits,
    /// or that the caller cannot poll (see [`Starting`]), goes on in a task of its own.
    fn start(
        &self,
        jobs: &mut JoinSet<()>,
        starting: &mut Starting,
        waiting: Waiting,
        run: OwnedSemaphorePermit,
    ) {
        let Waiting { job, room, pending } = waiting;
        let Some(claim) = job.claim() else { return };
        // Cancelled while it waited for a slot (as the last heartbeat heard): it never starts.
        if self.resources.cancels.asked(claim.id) {
            pending.finish(Outcome::Failed(Failed {
                claim,
                error: "cancelled before it ran".into(),
                then: Failure::Cancel,
            }));
            return;
        }
        // The job's slot, and its room among the claimed: both free once it has run.
        let run_slot = (run, room);
        // Labels come from the worker's own queues and tasks, never from what a row says, so
        // that a table of odd rows cannot grow the metrics without bound. The application's
        // recorder registers them: should it panic, the job runs unmeasured.
        let queue = job.shared_queue();
        let definition = job.task().and_then(|name| self.registry.get(name)).copied();
        let task = definition.map_or(UNREGISTERED, |definition| definition.name);
        let metrics = panic::catch_unwind(AssertUnwindSafe(|| {
            starting.metrics(&self.metrics, &queue, task)
        }))
        .unwrap_or_else(|_| Arc::new(TaskMetrics::noop()));
        if !starting.inline {
            // Its beginning too (decoding its arguments, calling the body) runs in its task,
            // beside the others, not on the claim's path.
            let resources = Arc::clone(&self.resources);
            jobs.spawn(async move {
                let outcome =
                    match execute::begin(&resources, definition, job, claim, queue, metrics) {
                        Ok(run) => run.await,
                        Err(outcome) => outcome,
                    };
                drop(run_slot);
                pending.finish(outcome);
            });
            return;
        }
        let started = Instant::now();
        // A job whose beginning or first poll panics here (the application's recorder, say)
        // must not stop the claim: its pending outcome, dropped with it, releases it. The
        // waker is never used: a job still pending is polled again by its task.
        let first = panic::catch_unwind(AssertUnwindSafe(|| {
            match execute::begin(&self.resources, definition, job, claim, queue, metrics) {
                Ok(run) => {
                    // Boxed, so that it can move to a task after its first poll.
                    let mut run = Box::pin(run.map(move |outcome| {
                        drop(run_slot);
                        pending.finish(outcome);
                    }));
                    match run.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                        Poll::Ready(()) => None,
                        Poll::Pending => Some(run),
                    }
                }
                Err(outcome) => {
                    drop(run_slot);
                    pending.finish(outcome);
                    None
                }
            }
        }));
        // Twice in a row: once may be the thread's preemption, not the job's work.
        let slow = started.elapsed() >= INLINE_LIMIT;
        if slow && starting.slow {
            starting.inline = false;
        }
        starting.slow = slow;
        if let Ok(Some(run)) = first {
            jobs.spawn(run);
        }
    }

    /// Subscribes to every queue, retrying while the database is unreachable.
    async fn subscribe(&self, queues: &[String]) -> Subscription {
        let names: Vec<&str> = queues.iter().map(String::as_str).collect();
        let mut backoff = Backoff::default();
        loop {
            match self.resources.own.subscribe(&names).await {
                Ok(subscription) => return subscription,
                Err(error) => {
                    let delay = backoff.next();
                    tracing::error!(%error, ?delay, "pq: cannot LISTEN; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// The task label of jobs whose task this worker does not run.
const UNREGISTERED: &str = "(unregistered)";

/// What the jobs of one claim share: mostly their queue and task, and so their metrics.
struct Starting {
    /// The queue and task of the job started last, and its metrics.
    metrics: Option<(Arc<str>, &'static str, Arc<TaskMetrics>)>,
    /// Whether the claim still begins and polls its jobs itself. Two jobs in a row that took
    /// [`INLINE_LIMIT`] without waiting (large arguments to decode, a handler that should use
    /// `spawn_blocking`) would hold back the jobs after them: those go straight to tasks of
    /// their own, which other threads run in parallel.
    inline: bool,
    /// Whether the job started last took that long.
    slow: bool,
}

impl Starting {
    fn new() -> Self {
        Self {
            metrics: None,
            inline: true,
            slow: false,
        }
    }

    fn metrics(
        &mut self,
        registered: &Registered,
        queue: &Arc<str>,
        task: &'static str,
    ) -> Arc<TaskMetrics> {
        match &self.metrics {
            Some((last_queue, last_task, metrics)) if last_queue == queue && *last_task == task => {
                Arc::clone(metrics)
            }
            _ => {
                let metrics = registered.get(queue, task);
                self.metrics = Some((Arc::clone(queue), task, Arc::clone(&metrics)));
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

/// The shortest wait between two claims of a worker whose limited queues held jobs back: the
/// burst of a rate must hold what it lets start meanwhile.
const MIN_LIMITED_POLL: Duration = Duration::from_millis(5);

/// How many finished jobs a worker may hold beyond its concurrency while their outcomes are
/// being recorded: as many as the completer records in one round.
pub const RECORDING: usize = 1000;

/// What a job holds of its worker: room from its claim until it has run (a slot's, or a place
/// to wait for one), a slot while its handler runs, and a lease from its claim until its
/// outcome is recorded. A worker has `concurrency` slots, room for its prefetch beside them,
/// and [`RECORDING`] more leases than room: a claim can then take new
/// jobs while the outcomes of the last ones are being recorded (a round trip that would
/// otherwise leave the slots idle: a fifth of a drain at concurrency 1000, a third at 64,
/// BENCHMARKS.md), and no worker ever holds more than `concurrency + prefetch + RECORDING`
/// jobs.
struct Slots {
    run: Arc<Semaphore>,
    /// Room for the jobs claimed and not yet run: the slots and the prefetch.
    room: Arc<Semaphore>,
    lease: Arc<Semaphore>,
    concurrency: usize,
    prefetch: Mutex<Prefetch>,
    /// How many jobs have started, for the pace.
    started: AtomicU64,
}

/// A worker's prefetch: fixed, or adapted to the pace at which its jobs start.
struct Prefetch {
    now: usize,
    /// The leases beyond the slots' and `RECORDING`: `now`, once those in use are back.
    leased: usize,
    most: usize,
    adapts: bool,
    /// When the pace was last measured, and how many jobs had started then.
    since: Instant,
    started: u64,
    /// Jobs started a second, smoothed.
    pace: f64,
}

/// How much work, at the pace its jobs start, a worker keeps claimed beyond its free slots by
/// default ([`Worker::prefetch`]): what a more urgent job enqueued meanwhile waits for.
pub const PREFETCH_WAIT: Duration = Duration::from_millis(10);

/// The most jobs a worker keeps claimed beyond its free slots by default.
pub const PREFETCH_MOST: usize = 1000;

impl Slots {
    fn new(concurrency: usize, prefetch: Option<usize>) -> Self {
        let (now, most) = prefetch.map_or((0, PREFETCH_MOST), |fixed| (fixed, fixed));
        Self {
            run: Arc::new(Semaphore::new(concurrency)),
            room: Arc::new(Semaphore::new(concurrency.saturating_add(now))),
            lease: Arc::new(Semaphore::new(
                concurrency.saturating_add(now).saturating_add(RECORDING),
            )),
            concurrency,
            prefetch: Mutex::new(Prefetch {
                now,
                leased: now,
                most,
                adapts: prefetch.is_none(),
                since: Instant::now(),
                started: 0,
                pace: 0.0,
            }),
            started: AtomicU64::new(0),
        }
    }

    /// The room there is now, the prefetch first adapted to the pace at which jobs started
    /// since it last was (at most every [`PREFETCH_WAIT`]).
    fn room(&self) -> usize {
        let mut prefetch = self
            .prefetch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = prefetch.since.elapsed();
        if prefetch.adapts && elapsed >= PREFETCH_WAIT {
            let started = self.started.load(Ordering::Relaxed);
            let pace = started.saturating_sub(prefetch.started) as f64 / elapsed.as_secs_f64();
            prefetch.pace = (prefetch.pace + pace) / 2.0;
            prefetch.since = Instant::now();
            prefetch.started = started;
            let wanted = (prefetch.pace * PREFETCH_WAIT.as_secs_f64()) as usize;
            let wanted = wanted.min(prefetch.most);
            // The leases follow, so that a worker keeps `RECORDING` beside its room. What is
            // not free now is forgotten at a later look.
            if wanted > prefetch.now {
                self.room.add_permits(wanted - prefetch.now);
                prefetch.now = wanted;
            } else {
                prefetch.now -= self.room.forget_permits(prefetch.now - wanted);
            }
            if wanted > prefetch.leased {
                self.lease.add_permits(wanted - prefetch.leased);
                prefetch.leased = wanted;
            } else {
                prefetch.leased -= self.lease.forget_permits(prefetch.leased - wanted);
            }
        }
        self.concurrency + prefetch.now
    }
}

/// Room and as many leases, for the jobs of one claim.
struct Permits {
    room: OwnedSemaphorePermit,
    lease: OwnedSemaphorePermit,
}

impl Permits {
    fn count(&self) -> usize {
        self.room.num_permits()
    }

    /// Room and a lease for one job of the claim.
    fn one(&mut self) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
        let taken = (self.room.split(1), self.lease.split(1));
        match taken {
            (Some(run), Some(lease)) => (run, lease),
            _ => unreachable!("a claim takes at most one job for each slot and lease it has"),
        }
    }
}

/// Adds free permits of `semaphore` to `permits`, up to `most` in all.
fn take_free(semaphore: &Arc<Semaphore>, permits: &mut OwnedSemaphorePermit, most: usize) {
    let wanted = most.saturating_sub(permits.num_permits());
    let free = u32::try_from(semaphore.available_permits().min(wanted)).unwrap_or(u32::MAX);
    if free > 0 {
        if let Ok(more) = Arc::clone(semaphore).try_acquire_many_owned(free) {
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
