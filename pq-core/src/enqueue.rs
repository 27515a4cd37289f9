//! [`Enqueue`]: where a prepared [`NewJob`] can be written.

use std::future::Future;

use sqlx::PgConnection;

use crate::error::Result;
use crate::graph::{Graph, WrittenGraph};
use crate::job::{Enqueued, NewJob};
use crate::pq::Pq;
use crate::queue::{insert, insert_jobs, insert_warm};
use crate::transaction::Transaction;

/// Somewhere a job can be written, as task calls do with `enqueue(target)`:
///
/// - `&Pq`: on its pool, committed at once;
/// - `&mut pq::Transaction`: in that transaction;
/// - `pq.on(&mut *tx)`: in a caller's own sqlx transaction, on `pq`'s table.
///
/// A bare connection or pool is not a target: it names no table, and would write to whichever
/// table its search path leads to.
///
/// ```compile_fail
/// # async fn example(pq: pq::Pq, task: pq::NewJob) {
/// use pq::Enqueue;
/// let mut tx = pq.pool().begin().await.unwrap();
/// (&mut *tx).enqueue(task).await; // not a target: use `pq.on(&mut *tx)`
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not somewhere a job can be written: it names no queue table",
    label = "not a queue table",
    note = "enqueue on `&pq`, on a `&mut pq::Transaction`, or with `pq.on(&mut *tx)` inside a transaction of your own"
)]
pub trait Enqueue<'c> {
    /// Writes `job`: a new job, or for a unique one maybe the job waiting with its key.
    fn enqueue(self, job: NewJob) -> impl Future<Output = Result<Enqueued>> + Send + 'c;

    /// Writes `jobs` (of any queues and tasks) in one statement; answers each in order.
    fn enqueue_many(
        self,
        jobs: Vec<NewJob>,
    ) -> impl Future<Output = Result<Vec<Enqueued>>> + Send + 'c;

    /// Writes `graph`: its jobs and the edges from their parents, all or nothing (see
    /// [`Pq::enqueue_graph`]).
    fn enqueue_graph(self, graph: Graph) -> impl Future<Output = Result<WrittenGraph>> + Send + 'c;
}

impl<'c> Enqueue<'c> for &'c Pq {
    fn enqueue(self, job: NewJob) -> impl Future<Output = Result<Enqueued>> + Send + 'c {
        insert_warm(self, job)
    }

    async fn enqueue_many(self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        let sql = self.statements().await?;
        self.with_connection("an enqueue", async |connection| {
            insert_jobs(sql, connection, jobs).await
        })
        .await
    }

    fn enqueue_graph(self, graph: Graph) -> impl Future<Output = Result<WrittenGraph>> + Send + 'c {
        self.enqueue_graph(graph)
    }
}

impl<'c> Enqueue<'c> for &'c mut Transaction {
    async fn enqueue(self, job: NewJob) -> Result<Enqueued> {
        self.write_job(job).await
    }

    async fn enqueue_many(self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.write_jobs(jobs).await
    }

    async fn enqueue_graph(self, graph: Graph) -> Result<WrittenGraph> {
        self.write_graph(graph).await
    }
}

/// A [`Pq`] table bound to a connection of the caller's; see [`Pq::on`].
pub struct OnConnection<'c> {
    pq: &'c Pq,
    connection: &'c mut PgConnection,
}

impl<'c> OnConnection<'c> {
    pub(crate) fn new(pq: &'c Pq, connection: &'c mut PgConnection) -> Self {
        Self { pq, connection }
    }
}

impl<'c> Enqueue<'c> for OnConnection<'c> {
    async fn enqueue(self, job: NewJob) -> Result<Enqueued> {
        insert(self.pq.statements().await?, self.connection, job).await
    }

    async fn enqueue_many(self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        insert_jobs(self.pq.statements().await?, self.connection, jobs).await
    }

    async fn enqueue_graph(self, graph: Graph) -> Result<WrittenGraph> {
        graph
            .write(self.pq.statements().await?, self.connection)
            .await
    }
}
