//! Leased claims, the worker's side of the queue: claim a batch of jobs for a while, renew the
//! lease while they run, then complete, fail or release them. Every call after the claim is
//! fenced by the attempt it claimed, so a worker that lost its lease changes nothing.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres};

use crate::error::Result;
use crate::job::{check_queue_name, Job, JobId, Names};
use crate::pq::Pq;
use crate::when::MAX_DELAY;

/// A job's attempt as claimed: the fence for everything done to it afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Claim {
    /// The job.
    pub id: JobId,
    /// The attempt the claim started.
    pub attempt: u32,
    /// Where the claimed row version lies, if known.
    row: Option<RowVersion>,
}

impl Claim {
    /// The claim of a job returned by [`Pq::claim`].
    pub fn of(job: &Job) -> Self {
        Self {
            id: job.id(),
            attempt: job.attempts(),
            row: job.row(),
        }
    }

    /// The claim of attempt `attempt` of job `id`.
    pub fn new(id: JobId, attempt: u32) -> Self {
        Self {
            id,
            attempt,
            row: None,
        }
    }
}

/// Where a row version lies: PostgreSQL's `tid` (a `ctid`), a block and an item in it. A row
/// moves when it is updated, so this only locates the version read, which the statement using
/// it checks is still the job's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RowVersion {
    block: u32,
    item: u16,
}

/// `tid`'s type id, fixed in PostgreSQL's catalog.
const TID: PgTypeInfo = PgTypeInfo::with_oid(Oid(27));

impl sqlx::Type<Postgres> for RowVersion {
    fn type_info() -> PgTypeInfo {
        TID
    }
}

impl PgHasArrayType for RowVersion {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(1010))
    }
}

impl<'r> Decode<'r, Postgres> for RowVersion {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        // The binary format: the block then the item, big-endian.
        match value.as_bytes()? {
            &[b0, b1, b2, b3, i0, i1] => Ok(Self {
                block: u32::from_be_bytes([b0, b1, b2, b3]),
                item: u16::from_be_bytes([i0, i1]),
            }),
            other => Err(format!("a tid is 6 bytes, not {}", other.len()).into()),
        }
    }
}

impl Encode<'_, Postgres> for RowVersion {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.block.to_be_bytes());
        buf.extend_from_slice(&self.item.to_be_bytes());
        Ok(IsNull::No)
    }
}

/// What to do with a job that failed an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Queue it again after this delay.
    RetryIn(Duration),
    /// Keep it in the `failed` state for inspection and manual re-queueing.
    GiveUp,
}

/// A lease or retry delay in microseconds, at most [`MAX_DELAY`]: as good as never. Without the
/// bound, `statement_timestamp()` plus `Duration::MAX` is out of PostgreSQL's range, the
/// statement fails on every try, and a worker retrying it stalls (pq-faults' bad input found
/// both a lease that never claimed and a retry delay that stopped a worker recording outcomes).
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.min(MAX_DELAY).as_micros()).unwrap_or(i64::MAX)
}

fn columns<'a>(claims: impl IntoIterator<Item = &'a Claim>) -> (Vec<i64>, Vec<i32>) {
    claims
        .into_iter()
        .map(|c| (c.id.0, i32::try_from(c.attempt).unwrap_or(i32::MAX)))
        .unzip()
}

/// The ids a fenced statement returned, as its one array.
fn ids(ids: Vec<i64>) -> Vec<JobId> {
    ids.into_iter().map(JobId).collect()
}

impl Pq {
    /// Claims up to `limit` ready jobs of `queue` in dequeue order, leased for `lease`: until
    /// then no one else gets them; after it, unless renewed, [`rescue`](Pq::rescue) returns them
    /// to the queue. Each claim counts an attempt.
    pub async fn claim(&self, queue: &str, limit: u32, lease: Duration) -> Result<Vec<Job>> {
        check_queue_name(queue)?;
        // All the rows, not a stream: the claim commits after its last row, and a job must not
        // start before (its completion would not find it claimed).
        let rows = self
            .with_connection(async |connection| {
                Ok(sqlx::query(&self.sql().claim)
                    .bind(queue)
                    .bind(i64::from(limit))
                    .bind(micros(lease))
                    .fetch_all(connection)
                    .await?)
            })
            .await?;
        let mut names = Names::default();
        let mut jobs = rows
            .iter()
            .map(|row| Job::decode(row, self.sql(), &mut names))
            .collect::<Result<Vec<_>>>()?;
        // RETURNING promises no order: restore the dequeue order.
        jobs.sort_unstable_by_key(|job| {
            (
                job.schedule_at(),
                job.expected_at().is_none(),
                job.expected_at(),
                job.id(),
            )
        });
        Ok(jobs)
    }

    /// Marks these claimed jobs done, in one statement: deleted, or kept in the `done` state
    /// when `keep` is set. Returns the ids it completed; a job missing from it had lost its lease.
    pub async fn complete<'e>(
        &self,
        executor: impl sqlx::PgExecutor<'e>,
        claims: &[Claim],
        keep: bool,
    ) -> Result<Vec<JobId>> {
        let sql = self.sql();
        let statement = if keep {
            &sql.complete_keep
        } else {
            &sql.complete_delete
        };
        let (ids_column, attempts) = columns(claims);
        let touched = sqlx::query_scalar(statement)
            .bind(ids_column)
            .bind(attempts)
            .fetch_one(executor)
            .await?;
        Ok(ids(touched))
    }

    /// Completes a batch of claims, as [`complete`](Pq::complete) does, on a connection of
    /// pq's own, finding each job by the row version its claim returned (no index lookup), and
    /// by id the jobs whose row moved since (a renewed lease).
    pub async fn complete_claims(&self, claims: &[Claim], keep: bool) -> Result<Vec<JobId>> {
        let sql = self.sql();
        let statement = if keep {
            &sql.complete_keep_by_row
        } else {
            &sql.complete_delete_by_row
        };
        let located: Vec<&Claim> = claims.iter().filter(|claim| claim.row.is_some()).collect();
        let (ids_column, attempts) = columns(located.iter().copied());
        let rows: Vec<RowVersion> = located.iter().filter_map(|claim| claim.row).collect();
        self.with_connection(async |connection| {
            let mut done = if located.is_empty() {
                Vec::new()
            } else {
                ids(sqlx::query_scalar(statement)
                    .bind(ids_column)
                    .bind(attempts)
                    .bind(rows)
                    .fetch_one(&mut *connection)
                    .await?)
            };
            if done.len() < claims.len() {
                let found: HashSet<JobId> = done.iter().copied().collect();
                let moved: Vec<Claim> = claims
                    .iter()
                    .filter(|claim| !found.contains(&claim.id))
                    .copied()
                    .collect();
                done.extend(self.complete(&mut *connection, &moved, keep).await?);
            }
            Ok(done)
        })
        .await
    }

    /// Records a failed attempt with its error, then queues the job again or gives it up.
    /// Returns whether the claim still held.
    pub async fn fail(&self, claim: Claim, error: &str, then: Failure) -> Result<bool> {
        // PostgreSQL's text cannot hold NUL: a message with one would be refused on every try.
        let error = error.replace('\0', "\\0");
        let (ids_column, attempts) = columns(&[claim]);
        let retry_in = match then {
            Failure::RetryIn(delay) => Some(micros(delay)),
            Failure::GiveUp => None,
        };
        let rows = sqlx::query(&self.sql().fail)
            .bind(ids_column)
            .bind(attempts)
            .bind(&error)
            .bind(retry_in)
            .fetch_all(self.pool())
            .await?;
        Ok(!rows.is_empty())
    }

    /// Extends the leases of these claims to `lease` from now; returns the ids still held.
    pub async fn renew(&self, claims: &[Claim], lease: Duration) -> Result<Vec<JobId>> {
        let (ids_column, attempts) = columns(claims);
        let touched = sqlx::query_scalar(&self.sql().renew)
            .bind(ids_column)
            .bind(attempts)
            .bind(micros(lease))
            .fetch_one(self.pool())
            .await?;
        Ok(ids(touched))
    }

    /// Gives claimed jobs back to the queue without counting the attempt (a worker that stops
    /// before running them); returns the ids released.
    pub async fn release(&self, claims: &[Claim]) -> Result<Vec<JobId>> {
        let (ids_column, attempts) = columns(claims);
        let touched = sqlx::query_scalar(&self.sql().release)
            .bind(ids_column)
            .bind(attempts)
            .fetch_one(self.pool())
            .await?;
        Ok(ids(touched))
    }

    /// Returns up to `limit` jobs whose lease ran out (their worker died or hung) to the queue,
    /// waking the workers of their queues; returns how many. Any process may call it; workers
    /// do so periodically.
    pub async fn rescue(&self, limit: u32) -> Result<u64> {
        let sql = self.sql();
        let queues: Vec<String> = sqlx::query_scalar(&sql.rescue)
            .bind(i64::from(limit))
            .bind("lease expired: the worker running this attempt was lost")
            .fetch_all(self.pool())
            .await?;
        if !queues.is_empty() {
            let mut distinct = queues.clone();
            distinct.sort_unstable();
            distinct.dedup();
            sqlx::query(&sql.notify)
                .bind(&sql.channel)
                .bind(distinct)
                .execute(self.pool())
                .await?;
        }
        Ok(queues.len() as u64)
    }

    /// Registers the caller as about to wait for jobs of `queue`, and returns how long it may
    /// sleep: until the earliest scheduled job is due, at most about 9 s (the registration
    /// lasts 10 s; call again to renew it).
    ///
    /// Puts on `queue` notify only while some consumer of it is registered (a NOTIFY
    /// serialises commits, so pq spares it while every consumer of the queue is busy). So an
    /// idle loop goes: claim; if nothing, call this; claim once more (it finds any job whose put
    /// committed before the registration and so did not notify); then sleep until notified or
    /// for the time returned.
    pub async fn seconds_to_next_due(&self, queue: &str) -> Result<Option<f64>> {
        self.with_connection(async |connection| {
            Ok(sqlx::query_scalar(&self.sql().next_due)
                .bind(queue)
                .fetch_one(connection)
                .await?)
        })
        .await
    }

    /// Notifications for `queue`: woken when a job is put on it, when a rescued job returns to
    /// it, or when notifications may have been lost. Take [`Subscription::notified`] before
    /// looking for jobs, so that one put in between still wakes the wait.
    pub async fn subscribe(&self, queue: &str) -> Result<Subscription> {
        Ok(Subscription(self.listener().subscribe(queue).await?))
    }
}

/// Wake-ups for one queue; see [`Pq::subscribe`].
#[derive(Debug, Clone)]
pub struct Subscription(std::sync::Arc<tokio::sync::Notify>);

impl Subscription {
    /// A future that completes at the next wake-up after it was created and enabled
    /// (`Notified::enable`) or first polled. Spurious wake-ups happen; look again after one.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.notified()
    }
}
