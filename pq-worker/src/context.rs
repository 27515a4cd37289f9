//! [`TaskContext`]: what a running task knows about its job, and the job's own transaction.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use pq_core::{Job, JobId, Pq};
use sqlx::{PgConnection, Postgres};

use crate::cancel::Cancels;
use crate::execute::Resources;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

/// The transaction a handler may ask for, shared between its context and the worker, which
/// commits it together with the job's completion.
pub(crate) type JobTransaction = Arc<Mutex<Option<sqlx::Transaction<'static, Postgres>>>>;

/// The job a task is running for, handed to a task function whose first parameter has this type.
///
/// ```no_run
/// #[pq::task(max_retries = 3)]
/// async fn ripen(ctx: pq::TaskContext, kind: String) -> anyhow::Result<()> {
///     println!("job {} attempt {} of queue {}", ctx.job_id(), ctx.attempt(), ctx.queue());
///     // Follow-up work is enqueued through the same handle.
///     eat(kind).enqueue(ctx.pq()).await?;
///     Ok(())
/// }
///
/// #[pq::task]
/// fn eat(kind: String) {}
/// ```
#[derive(Debug, Clone)]
pub struct TaskContext {
    pq: Pq,
    /// Where the job's transaction comes from: the worker's own pool, which has a connection
    /// for each job that may run at once.
    transactions: Pq,
    job_id: JobId,
    queue: Arc<str>,
    task: Cow<'static, str>,
    attempt: u32,
    enqueued_at: DateTime<Utc>,
    transaction: JobTransaction,
    /// Where a request to cancel the job arrives; none outside a worker.
    cancels: Option<Arc<Cancels>>,
    /// The job's meta (see [`pq_core::NewJob::meta`]): a recurring job's fire time.
    meta: Option<Arc<str>>,
}

impl TaskContext {
    /// A context for calling a task's body directly, in a unit test for example: `pq` may come
    /// from [`Pq::connect_lazy`], which connects only when used.
    pub fn new(pq: Pq, job_id: JobId, task: &str, queue: &str) -> Self {
        Self {
            transactions: pq.clone(),
            pq,
            job_id,
            queue: queue.into(),
            task: Cow::Owned(task.to_owned()),
            attempt: 1,
            enqueued_at: Utc::now(),
            transaction: JobTransaction::default(),
            cancels: None,
            meta: None,
        }
    }

    /// The same context, for run number `attempt` (1 for the first): to test what a task does
    /// on a retry.
    ///
    /// ```no_run
    /// # fn example(pq: pq::Pq) {
    /// let ctx = pq::TaskContext::new(pq, pq::JobId(1), "app::mail", "default").with_attempt(3);
    /// assert_eq!(ctx.attempt(), 3);
    /// # }
    /// ```
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }

    pub(crate) fn for_job(
        resources: &Resources,
        job: &Job,
        task: &'static str,
        queue: Arc<str>,
    ) -> Self {
        Self {
            pq: resources.pq.clone(),
            transactions: resources.own.clone(),
            job_id: job.id(),
            queue,
            task: Cow::Borrowed(task),
            attempt: job.attempts(),
            enqueued_at: job.enqueued_at(),
            transaction: JobTransaction::default(),
            cancels: Some(Arc::clone(&resources.cancels)),
            meta: job.meta().map(Arc::from),
        }
    }

    /// The job's id, the primary key of its row.
    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    /// The queue the job was taken from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The task's name.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// Which run this is: 1 for the first, 2 for the next (a retry, or a run after its worker
    /// was lost), and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the job was enqueued.
    pub fn enqueued_at(&self) -> DateTime<Utc> {
        self.enqueued_at
    }

    /// For a recurring job (a `cron` task, a worker's `periodic`), the fire time this run is
    /// for, on the database's clock: the latest of those it stands for when missed ones were
    /// coalesced, the trigger's time when an operator triggered it. `None` for other jobs.
    ///
    /// ```no_run
    /// #[pq::task(cron = "0 3 * * *", timezone = "Europe/Berlin")]
    /// async fn nightly_report(ctx: pq::TaskContext) -> anyhow::Result<()> {
    ///     let day = ctx.scheduled_at().expect("a recurring job").date_naive();
    ///     println!("the report of {day}, standing for {} night(s)", ctx.fires());
    ///     Ok(())
    /// }
    /// ```
    pub fn scheduled_at(&self) -> Option<DateTime<Utc>> {
        let fire = self.fired()?.get("fire")?.as_str()?.to_owned();
        DateTime::parse_from_rfc3339(&fire)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }

    /// How many fire times this run stands for: 1, or more for a schedule whose missed fire
    /// times were coalesced into one run (`on_missed = "coalesce"`, the default; counted up to
    /// 10,000). 1 for a job that is not recurring.
    pub fn fires(&self) -> u64 {
        self.fired()
            .and_then(|fired| fired.get("fires")?.as_u64())
            .unwrap_or(1)
    }

    /// The `cron` object of the job's meta, for a recurring job.
    fn fired(&self) -> Option<serde_json::Value> {
        let meta: serde_json::Value = serde_json::from_str(self.meta.as_deref()?).ok()?;
        Some(meta.get("cron")?.clone())
    }

    /// Resolves once someone cancels the job ([`Admin::cancel`](pq_core::Admin::cancel),
    /// `pq jobs cancel`): the handler should then stop soon. Whatever it returns afterwards, the
    /// job ends `cancelled`, its transaction rolled back, and it is not retried. (A run that
    /// returns `Ok` without having been told, here or by [`is_cancelled`](Self::is_cancelled),
    /// completes as it would have.) The request reaches the worker at its next heartbeat,
    /// within a third of its lease. Never resolves for a context made with
    /// [`TaskContext::new`].
    ///
    /// ```no_run
    /// # async fn convert(_: &str) -> anyhow::Result<()> { Ok(()) }
    /// #[pq::task]
    /// async fn transcode(ctx: pq::TaskContext, video: String) -> anyhow::Result<()> {
    ///     tokio::select! {
    ///         () = ctx.cancelled() => Ok(()), // the job ends `cancelled`
    ///         done = convert(&video) => done,
    ///     }
    /// }
    /// ```
    pub async fn cancelled(&self) {
        match &self.cancels {
            Some(cancels) => cancels.wait(self.job_id).await,
            None => std::future::pending().await,
        }
    }

    /// Whether someone cancelled the job: a cheap check for a handler working in steps.
    pub fn is_cancelled(&self) -> bool {
        self.cancels
            .as_ref()
            .is_some_and(|cancels| cancels.tell(self.job_id))
    }

    /// The queue handle, to enqueue follow-up tasks or use its pool.
    pub fn pq(&self) -> &Pq {
        &self.pq
    }

    /// The job's own database transaction, begun on first call. The worker commits it together
    /// with the job's completion, so the handler's writes in it happen exactly once: they are
    /// rolled back if the handler fails, panics, or its worker dies or loses the job's lease.
    ///
    /// ```no_run
    /// #[pq::task(max_retries = 5)]
    /// async fn pay(ctx: pq::TaskContext, order: i64) -> anyhow::Result<()> {
    ///     let mut tx = ctx.transaction().await?;
    ///     sqlx::query("UPDATE orders SET paid = true WHERE id = $1")
    ///         .bind(order)
    ///         .execute(&mut *tx)
    ///         .await?;
    ///     Ok(()) // committed by the worker with the job's completion
    /// }
    /// ```
    pub async fn transaction(&self) -> Result<MappedMutexGuard<'_, PgConnection>, pq_core::Error> {
        let mut slot = self.transaction.lock().await;
        if slot.is_none() {
            *slot = Some(self.transactions.pool().begin().await?);
        }
        Ok(MutexGuard::map(slot, |tx| {
            &mut **tx.as_mut().expect("the transaction was just begun")
        }))
    }

    /// Takes the handler's transaction, if it asked for one.
    pub(crate) async fn take_transaction(&self) -> Option<sqlx::Transaction<'static, Postgres>> {
        // The lock is free once the handler returned, unless a clone of its context still uses
        // it; taken at once, it does not wait for the scheduler's next turn.
        match self.transaction.try_lock() {
            Ok(mut transaction) => transaction.take(),
            Err(_) => self.transaction.lock().await.take(),
        }
    }
}
