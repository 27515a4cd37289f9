//! [`Transaction`]: get, work and put atomically with the caller's own SQL.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use serde::Serialize;
use sqlx::{PgConnection, Postgres};

use crate::error::{Error, Result};
use crate::job::check_queue_name;
use crate::job::{Job, JobId, NewJob};
use crate::queue::{insert, take, wait_for_job, Put, Queue, Target};

/// A database transaction on one [`Queue`]: a job taken in it returns to the queue, and jobs
/// put in it vanish, unless it commits. It dereferences to the connection, so the caller's own
/// statements join it.
///
/// ```no_run
/// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
/// let queue = pq.queue("apples");
/// let mut tx = queue.begin().await?;
/// if let Some(job) = tx.get().await? {
///     sqlx::query("INSERT INTO eaten (job) VALUES ($1)")
///         .bind(job.id().0)
///         .execute(&mut *tx)
///         .await?;
///     tx.put(&"the core").schedule_at("1h").await?;
/// }
/// tx.commit().await?; // drop or `rollback` instead, and the job is back in the queue
/// # Ok(()) }
/// ```
pub struct Transaction {
    tx: sqlx::Transaction<'static, Postgres>,
    queue: Queue,
}

impl Transaction {
    pub(crate) async fn begin(queue: Queue) -> Result<Self> {
        let tx = queue.pq().pool().begin().await?;
        Ok(Self { tx, queue })
    }

    /// The queue this transaction works on.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Takes the next ready job in this transaction, waiting up to the queue's timeout.
    pub async fn get(&mut self) -> Result<Option<Job>> {
        self.get_timeout(self.queue.timeout()).await
    }

    /// Like [`get`](Transaction::get), waiting up to `timeout`.
    pub async fn get_timeout(&mut self, timeout: Duration) -> Result<Option<Job>> {
        wait_for_job(&self.queue, Some(&mut self.tx), timeout).await
    }

    /// Takes the next ready job in this transaction, without waiting.
    pub async fn try_get(&mut self) -> Result<Option<Job>> {
        check_queue_name(self.queue.name())?;
        take(self.queue.pq().sql(), &mut *self.tx, self.queue.name()).await
    }

    /// Puts `data` on this transaction's queue; it exists only if the transaction commits.
    /// Await the returned [`Put`] for the job's id, after setting its times if wanted.
    pub fn put<T: Serialize + ?Sized>(&mut self, data: &T) -> Put<'_> {
        let job = NewJob::new(self.queue.name(), data);
        Put::new(self.queue.pq().sql(), Target::Connection(&mut self.tx), job)
    }

    /// Writes a prepared job (any queue) in this transaction.
    pub async fn put_job(&mut self, job: NewJob) -> Result<JobId> {
        insert(self.queue.pq().sql(), &mut *self.tx, job).await
    }

    /// Makes everything done in the transaction permanent.
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await.map_err(Error::from)
    }

    /// Undoes everything done in the transaction: taken jobs return to the queue. Dropping the
    /// transaction does the same.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await.map_err(Error::from)
    }

    /// The underlying sqlx transaction.
    pub fn into_inner(self) -> sqlx::Transaction<'static, Postgres> {
        self.tx
    }
}

impl Deref for Transaction {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for Transaction {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}
