//! [`Enqueue`]: where a prepared [`NewJob`] can be written.

use std::future::Future;
use std::sync::{Arc, LazyLock};

use sqlx::{PgConnection, PgPool};

use crate::error::Result;
use crate::job::{JobId, NewJob};
use crate::pq::Pq;
use crate::queue::{insert, insert_warm};
use crate::sql::{Statements, TableName};
use crate::transaction::Transaction;

/// Somewhere a job can be written, as task calls do with `enqueue(target)`:
///
/// - `&Pq`: on its pool, committed at once;
/// - `&mut pq::Transaction`: in that transaction;
/// - `pq.on(&mut *tx)`: in a caller's own sqlx transaction, on `pq`'s table;
/// - `&mut *tx` or `&PgPool`: in a caller's sqlx transaction or pool, on the default table
///   `queue` of the search path.
pub trait Enqueue<'c> {
    /// Writes `job`, returning its id.
    fn enqueue(self, job: NewJob) -> impl Future<Output = Result<JobId>> + Send + 'c;
}

impl<'c> Enqueue<'c> for &'c Pq {
    fn enqueue(self, job: NewJob) -> impl Future<Output = Result<JobId>> + Send + 'c {
        insert_warm(self, job)
    }
}

impl<'c> Enqueue<'c> for &'c mut Transaction {
    fn enqueue(self, job: NewJob) -> impl Future<Output = Result<JobId>> + Send + 'c {
        self.put_job(job)
    }
}

/// A [`Pq`] table bound to a connection of the caller's; see [`Pq::on`].
pub struct OnConnection<'c> {
    sql: &'c Statements,
    connection: &'c mut PgConnection,
}

impl<'c> OnConnection<'c> {
    pub(crate) fn new(sql: &'c Arc<Statements>, connection: &'c mut PgConnection) -> Self {
        Self { sql, connection }
    }
}

impl<'c> Enqueue<'c> for OnConnection<'c> {
    fn enqueue(self, job: NewJob) -> impl Future<Output = Result<JobId>> + Send + 'c {
        insert(self.sql, self.connection, job)
    }
}

/// The statements of the default table, `queue` in the search path.
static DEFAULT_TABLE: LazyLock<Statements> = LazyLock::new(|| {
    Statements::new(TableName::new(None, "queue").expect("the default table name is valid"))
});

impl<'c> Enqueue<'c> for &'c mut PgConnection {
    fn enqueue(self, job: NewJob) -> impl Future<Output = Result<JobId>> + Send + 'c {
        insert(&DEFAULT_TABLE, self, job)
    }
}

impl<'c> Enqueue<'c> for &'c PgPool {
    fn enqueue(self, job: NewJob) -> impl Future<Output = Result<JobId>> + Send + 'c {
        insert(&DEFAULT_TABLE, self, job)
    }
}
