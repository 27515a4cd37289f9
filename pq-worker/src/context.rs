//! [`TaskContext`]: what a running task knows about its job, and the job's own transaction.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use pq_core::{Job, JobId, Pq};
use serde::de::DeserializeOwned;
use serde::Serialize;
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
    /// The run's claim number, which fences its step records; none outside a worker.
    claim: Option<i64>,
    queue: Arc<str>,
    task: Cow<'static, str>,
    attempt: u32,
    enqueued_at: DateTime<Utc>,
    transaction: JobTransaction,
    /// Held by the step that runs: steps of one job run one at a time (see [`TaskContext::step`]).
    step: Arc<Mutex<()>>,
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
            claim: None,
            queue: queue.into(),
            task: Cow::Owned(task.to_owned()),
            attempt: 1,
            enqueued_at: Utc::now(),
            transaction: JobTransaction::default(),
            step: Arc::default(),
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
            claim: job.claim().map(|claim| claim.number),
            queue,
            task: Cow::Borrowed(task),
            attempt: job.attempts(),
            enqueued_at: job.enqueued_at(),
            transaction: JobTransaction::default(),
            step: Arc::default(),
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
    /// A durable [`step`](Self::step) commits it earlier, with the step's record, fenced the
    /// same way; the next call begins another.
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

    /// Runs step `name` of the job once: a later run of the job (a retry, a run after its
    /// worker was lost) returns what the step returned the first time it completed, without
    /// running `body` again. Steps are known by name, not by position, so reordering them
    /// between deploys never hands one another's output; a name must be unique within the job.
    ///
    /// What the step returned is recorded as it completes: in the job's transaction when the
    /// handler has one open (see [`transaction`](Self::transaction)), which is then committed
    /// with the record, so the step's writes there happen exactly once, even when a later step
    /// fails; else at once, alone. A step that fails records nothing and runs again on the next
    /// run. A body whose effect lies outside the database (a payment, a mail) may still run
    /// twice, should its worker die between the effect and the record. A run that lost its
    /// job meanwhile (its lease ran out and another worker took it, or it was cancelled)
    /// records nothing and gets [`pq_core::Error::StepLost`], its writes rolled back. Steps of
    /// one job run one at a time: a step begun while another runs (side by side, or one inside
    /// another) fails at once with [`pq_core::Error::StepsOverlap`]. Records are
    /// deleted once the job is done or cancelled; a job that failed for good keeps them, so
    /// that an operator's retry skips the steps it completed.
    ///
    /// ```no_run
    /// # struct Gateway; impl Gateway { async fn charge(&self, _: i64) -> anyhow::Result<String> { Ok(String::new()) } }
    /// # static GATEWAY: Gateway = Gateway;
    /// # async fn mail(_: &str) -> anyhow::Result<()> { Ok(()) }
    /// #[pq::task(max_retries = 5)]
    /// async fn checkout(ctx: pq::TaskContext, order: i64) -> anyhow::Result<()> {
    ///     let receipt = ctx.step("charge", || GATEWAY.charge(order)).await?; // once
    ///     ctx.step("ship", || async {
    ///         let mut tx = ctx.transaction().await?;
    ///         sqlx::query("UPDATE orders SET shipped = true WHERE id = $1")
    ///             .bind(order)
    ///             .execute(&mut *tx)
    ///             .await?;
    ///         anyhow::Ok(())
    ///     })
    ///     .await?; // its write and its record commit together
    ///     ctx.step("mail", || mail(&receipt)).await?; // a retry of this step skips the others
    ///     Ok(())
    /// }
    /// ```
    pub async fn step<T, E, F, Fut>(&self, name: &str, body: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<pq_core::Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // Two steps side by side would share the job's transaction, and the first to finish
        // would commit the other's writes unrecorded.
        let _one = self
            .step
            .try_lock()
            .map_err(|_| pq_core::Error::StepsOverlap {
                name: name.to_owned(),
            })?;
        if let Some(output) = self.recorded(name).await? {
            return Ok(self.decode_step(name, &output)?);
        }
        let value = body().await?;
        let output = serde_json::to_string(&value).map_err(pq_core::Error::Encode)?;
        let open = self.slot(name)?.take();
        let recorded = match open {
            // Dropped, rolled back, on an error: a lost run's writes must not stay.
            Some(mut tx) => {
                let recorded = self
                    .transactions
                    .record_step(Some(&mut *tx), self.job_id, self.claim, name, &output)
                    .await?;
                if recorded {
                    tx.commit().await.map_err(pq_core::Error::from)?;
                }
                // Else dropped, rolled back: the run that recorded the step first made its
                // writes, and these must not be made twice.
                recorded
            }
            None => {
                self.transactions
                    .record_step(None, self.job_id, self.claim, name, &output)
                    .await?
            }
        };
        // Every run returns the step's output as recorded, the first as the later ones.
        let output = match recorded {
            true => output,
            false => self
                .recorded(name)
                .await?
                .ok_or_else(|| pq_core::Error::StepLost {
                    id: self.job_id,
                    name: name.to_owned(),
                })?,
        };
        Ok(self.decode_step(name, &output)?)
    }

    /// What step `name` of the job returned, if a run recorded it: read in the job's
    /// transaction when one is open.
    async fn recorded(&self, name: &str) -> Result<Option<String>, pq_core::Error> {
        let mut slot = self.slot(name)?;
        let transaction = slot.as_mut().map(|tx| &mut **tx);
        self.transactions
            .step_output(transaction, self.job_id, name)
            .await
    }

    /// The job's transaction slot, which a step uses: refused while the handler holds the
    /// transaction, which would wait for the step, and the step for it, for ever.
    fn slot(
        &self,
        name: &str,
    ) -> Result<MutexGuard<'_, Option<sqlx::Transaction<'static, Postgres>>>, pq_core::Error> {
        self.transaction
            .try_lock()
            .map_err(|_| pq_core::Error::StepInTransaction {
                name: name.to_owned(),
            })
    }

    fn decode_step<T: DeserializeOwned>(
        &self,
        name: &str,
        output: &str,
    ) -> Result<T, pq_core::Error> {
        serde_json::from_str(output).map_err(|error| pq_core::Error::DecodeStep {
            id: self.job_id,
            name: name.to_owned(),
            error,
        })
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
