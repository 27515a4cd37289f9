//! [`Transaction`]: get, work and put atomically with the caller's own SQL.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use serde::Serialize;
use sqlx::{PgConnection, Postgres};

use crate::error::{Error, Result};
use crate::job::check_queue_name;
use crate::job::{Enqueued, Job, JobId, NewJob};
use crate::queue::{insert, insert_jobs, take, wait_for_job, Put, Queue, Target};

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
    tx: Option<sqlx::Transaction<'static, Postgres>>,
    queue: Queue,
    /// Whether a job was taken in it: one that a rollback puts back, for consumers to wake to.
    took: bool,
}

impl Transaction {
    pub(crate) async fn begin(queue: Queue) -> Result<Self> {
        let tx = queue.pq().pool().begin().await?;
        Ok(Self {
            tx: Some(tx),
            queue,
            took: false,
        })
    }

    fn tx(&mut self) -> &mut sqlx::Transaction<'static, Postgres> {
        self.tx
            .as_mut()
            .expect("taken only by commit, rollback and into_inner")
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
        let queue = self.queue.clone();
        let job = wait_for_job(&queue, Some(&mut **self.tx()), timeout).await?;
        self.took |= job.is_some();
        Ok(job)
    }

    /// Takes the next ready job in this transaction, without waiting.
    pub async fn try_get(&mut self) -> Result<Option<Job>> {
        check_queue_name(self.queue.name())?;
        let queue = self.queue.clone();
        let sql = queue.pq().statements().await?;
        let job = take(sql, self.tx(), queue.name()).await?;
        self.took |= job.is_some();
        Ok(job)
    }

    /// Puts `data` on this transaction's queue; it exists only if the transaction commits.
    /// Await the returned [`Put`] for the job's id, after setting its times if wanted.
    pub fn put<T: Serialize + ?Sized>(&mut self, data: &T) -> Put<'_> {
        let job = NewJob::new(self.queue.name(), data);
        let tx = self
            .tx
            .as_mut()
            .expect("taken only by commit, rollback and into_inner");
        Put::new(self.queue.pq(), Target::Connection(tx), job)
    }

    /// Writes a prepared job (any queue) in this transaction; returns its id (for a unique job,
    /// maybe the id of the job waiting with its key).
    pub async fn put_job(&mut self, job: NewJob) -> Result<JobId> {
        Ok(self.write_job(job).await?.id())
    }

    /// Writes prepared jobs (any queues and tasks) in this transaction, in one statement;
    /// returns their ids in order.
    pub async fn put_jobs(&mut self, jobs: Vec<NewJob>) -> Result<Vec<JobId>> {
        let written = self.write_jobs(jobs).await?;
        Ok(written.into_iter().map(Enqueued::id).collect())
    }

    pub(crate) async fn write_job(&mut self, job: NewJob) -> Result<Enqueued> {
        let queue = self.queue.clone();
        let sql = queue.pq().statements().await?;
        insert(sql, &mut **self.tx(), job).await
    }

    pub(crate) async fn write_jobs(&mut self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        let queue = self.queue.clone();
        let sql = queue.pq().statements().await?;
        insert_jobs(sql, self.tx(), jobs).await
    }

    pub(crate) async fn write_graph(&mut self, graph: crate::Graph) -> Result<crate::WrittenGraph> {
        let queue = self.queue.clone();
        let sql = queue.pq().statements().await?;
        graph.write(sql, self.tx()).await
    }

    /// Makes everything done in the transaction permanent.
    pub async fn commit(mut self) -> Result<()> {
        self.took = false;
        let tx = self.tx.take().expect("committed once");
        tx.commit().await.map_err(Error::from)
    }

    /// Undoes everything done in the transaction: taken jobs return to the queue, and its
    /// consumers are woken to them. Dropping the transaction does the same.
    pub async fn rollback(mut self) -> Result<()> {
        let tx = self.tx.take().expect("rolled back once");
        tx.rollback().await?;
        if std::mem::take(&mut self.took) {
            self.queue
                .pq()
                .wake(vec![self.queue.name().to_owned()])
                .await?;
        }
        Ok(())
    }

    /// The underlying sqlx transaction. Jobs it took return to the queue if it rolls back, but
    /// their consumers are not woken: they find them at their next look.
    pub fn into_inner(mut self) -> sqlx::Transaction<'static, Postgres> {
        self.took = false;
        self.tx.take().expect("taken once")
    }
}

impl Drop for Transaction {
    /// A transaction dropped without committing rolls back; a job it took is back in the queue,
    /// and a task wakes its consumers once the rollback is through.
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        if !self.took {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let queue = self.queue.clone();
        runtime.spawn(async move {
            if tx.rollback().await.is_ok() {
                let _ = queue.pq().wake(vec![queue.name().to_owned()]).await;
            }
        });
    }
}

impl Deref for Transaction {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.tx
            .as_ref()
            .expect("taken only by commit, rollback and into_inner")
    }
}

impl DerefMut for Transaction {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.tx()
    }
}
