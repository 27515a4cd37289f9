//! Claims, the worker's side of the queue: claim ready jobs of many queues for a registered
//! worker ([`crate::WorkerId`]), then complete, fail or release them. Every call after the claim
//! is fenced by the claim: a run that is no longer the job's live one changes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::{Oid, PgInterval};
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgRow, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Row};

use crate::error::Result;
use crate::job::{check_queue_name, Job, JobId, Names};
use crate::pq::Pq;
use crate::timestamp::Timestamp;
use crate::when::MAX_DELAY;
use crate::workers::WorkerId;

/// One run of a job as claimed: the fence for everything done to it afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Claim {
    /// The job.
    pub id: JobId,
    /// The claim's number, drawn once per claim statement: it never repeats for a job, so a
    /// run that was released, rescued or retried since can never pass for the live one.
    pub number: i64,
    /// Where the claimed row version lies, if known.
    row: Option<RowVersion>,
}

impl Claim {
    /// The claim `number` of job `id`.
    pub fn new(id: JobId, number: i64) -> Self {
        Self {
            id,
            number,
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
    /// Queue it again after this delay without counting the attempt, nor recording an error:
    /// the run asked to wait. A job snoozed [`MAX_SNOOZES`] times fails for good instead.
    Snooze(Duration),
    /// End it `cancelled`, never retried: someone cancelled the job while it ran.
    Cancel,
}

/// How many times one job may snooze; the snooze after that fails it for good, so that a job
/// that always snoozes still ends.
pub const MAX_SNOOZES: u32 = 100;

/// A failed attempt to record: the claim, its error and what comes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The run that failed.
    pub claim: Claim,
    /// Why, as recorded on the job.
    pub error: String,
    /// Retry it, or give up.
    pub then: Failure,
}

/// A run that returned a value, to record with its job's completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned {
    /// The run.
    pub claim: Claim,
    /// What it returned, as JSON text.
    pub result: String,
    /// How long the job is kept with it once done; `None`: until an operator deletes it.
    pub keep: Option<Duration>,
}

/// Where a claim stopped in one queue's dequeue order: its last job's priority, ready time and
/// id, as the dequeue index orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    expected: Timestamp,
    ready: Timestamp,
    id: i64,
}

/// How long claims resume from where the last ones stopped before one starts from the top
/// again: a job that sorts before a claim's position (more urgent, retried, released,
/// rescued, or committed late) waits at most this long during a backlog.
pub const CURSOR_LIFETIME: Duration = Duration::from_secs(2);

/// The queues a worker claims from, and where its last claims in each stopped; its claimers
/// share one.
///
/// During a backlog, each claim resumes after the jobs the last one took instead of reading
/// the dequeue index from its start, past the entries of every job claimed since vacuum last
/// ran (which it does not while an older transaction stays open): otherwise each claim reads
/// more than the last and a drain slows as it goes. Claimers that share the positions step
/// over each other's jobs no more than once. Positions are forgotten when a claim finds fewer
/// jobs than it wanted (the backlog is drained) and every [`CURSOR_LIFETIME`]. The queues are
/// taken in turn, so that none starves the others.
#[derive(Debug)]
pub struct ClaimQueues {
    names: Vec<String>,
    /// Each queue's place in `names`, looked up for each claimed job: foldhash, at a fraction of
    /// SipHash's cost, for names that come from the worker's own settings.
    index: foldhash::HashMap<String, usize>,
    cursor: std::sync::Mutex<Cursor>,
}

/// Where the claims stopped, and whose turn it is.
#[derive(Debug)]
struct Cursor {
    positions: Vec<Option<Position>>,
    since: Option<Instant>,
    turn: usize,
}

impl ClaimQueues {
    /// These queues, from the top of each; an invalid name (empty, or with a NUL) is refused.
    pub fn new<I, S>(names: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut queues = Vec::new();
        for name in names {
            let name = name.into();
            check_queue_name(&name)?;
            if !queues.contains(&name) {
                queues.push(name);
            }
        }
        let index = queues
            .iter()
            .enumerate()
            .map(|(n, name)| (name.clone(), n))
            .collect();
        Ok(Self {
            cursor: std::sync::Mutex::new(Cursor {
                positions: vec![None; queues.len()],
                since: None,
                turn: 0,
            }),
            names: queues,
            index,
        })
    }

    /// The queues' names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Forgets where the last claims stopped: the next one takes the first jobs of each queue.
    pub fn restart(&self) {
        self.lock().restart();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cursor> {
        self.cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The statement's arrays, the queues starting at this claim's turn.
    #[allow(clippy::type_complexity)]
    fn arrays(
        &self,
    ) -> (
        Vec<&str>,
        Vec<Option<Timestamp>>,
        Vec<Option<Timestamp>>,
        Vec<Option<i64>>,
    ) {
        let mut cursor = self.lock();
        if cursor
            .since
            .is_some_and(|since| since.elapsed() >= CURSOR_LIFETIME)
        {
            cursor.restart();
        }
        let n = self.names.len();
        let start = cursor.turn % n.max(1);
        cursor.turn = cursor.turn.wrapping_add(1);
        let order = (0..n).map(|k| (start + k) % n);
        let mut arrays = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for q in order {
            let position = cursor.positions[q];
            arrays.0.push(self.names[q].as_str());
            arrays.1.push(position.map(|p| p.expected));
            arrays.2.push(position.map(|p| p.ready));
            arrays.3.push(position.map(|p| p.id));
        }
        arrays
    }

    /// Keeps where each queue's claim stopped, if it took every job it wanted (so more may be
    /// ready after them); forgets every position otherwise.
    fn advance(&self, taken: &[(usize, Position)], wanted: usize) {
        let mut cursor = self.lock();
        if taken.len() < wanted {
            cursor.restart();
            return;
        }
        for &(queue, position) in taken {
            let kept = &mut cursor.positions[queue];
            if kept.is_none_or(|kept| kept < position) {
                *kept = Some(position);
            }
        }
        cursor.since.get_or_insert_with(Instant::now);
    }
}

impl Cursor {
    fn restart(&mut self) {
        self.positions.iter_mut().for_each(|p| *p = None);
        self.since = None;
    }
}

/// What a claim took: jobs to run, and jobs whose rows pq cannot read, each with its claim and
/// the reason, for the caller to fail.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The jobs, in dequeue order within each queue.
    pub jobs: Vec<Job>,
    /// Claimed jobs whose rows hold what pq cannot read (written by other SQL): each must be
    /// failed with its reason, so that it fails alone.
    pub unreadable: Vec<(Claim, String)>,
    /// Whether a limit of a limited queue held back jobs that were ready (a queue's or a
    /// task's, see [`Queue::limits`](crate::Queue::limits)), and how soon to claim again: no
    /// notification says when a limit has room again.
    pub held_back: Option<Duration>,
}

/// A lease or retry delay in microseconds, at most [`MAX_DELAY`]: as good as never. Without the
/// bound, `statement_timestamp()` plus `Duration::MAX` is out of PostgreSQL's range, the
/// statement fails on every try, and a worker retrying it stalls.
pub(crate) fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.min(MAX_DELAY).as_micros()).unwrap_or(i64::MAX)
}

/// Claims sorted by id, as the fenced statements want them, and their two columns.
pub(crate) fn columns(claims: &[Claim]) -> (Vec<Claim>, Vec<i64>, Vec<i64>) {
    let mut sorted = claims.to_vec();
    sorted.sort_unstable_by_key(|claim| claim.id);
    let ids = sorted.iter().map(|claim| claim.id.0).collect();
    let numbers = sorted.iter().map(|claim| claim.number).collect();
    (sorted, ids, numbers)
}

/// The claims of `claims` whose job is not in `done`: those a statement passed over.
fn missed(claims: &[Claim], done: &[JobId]) -> Vec<Claim> {
    let found: std::collections::HashSet<JobId> = done.iter().copied().collect();
    claims
        .iter()
        .filter(|claim| !found.contains(&claim.id))
        .copied()
        .collect()
}

/// The ids a fenced statement returned, as its one array.
fn ids(ids: Vec<i64>) -> Vec<JobId> {
    ids.into_iter().map(JobId).collect()
}

impl Pq {
    /// Claims up to `limit` ready jobs of `queues` for `worker`, in one statement: until the
    /// worker's heartbeat runs out, no one else gets them; after it, [`rescue`](Pq::rescue)
    /// returns them to the queue. Each claim counts an attempt.
    pub async fn claim(
        &self,
        worker: WorkerId,
        queues: &ClaimQueues,
        limit: u32,
    ) -> Result<Claimed> {
        if limit == 0 || queues.names.is_empty() {
            return Ok(Claimed::default());
        }
        let sql = self.statements().await?;
        let (names, expected, ready, after) = queues.arrays();
        // All the rows, not a stream: the claim commits after its last row, and a job must not
        // start before (its completion would not find it claimed).
        let (rows, mut large, held_back) = self
            .with_connection("a claim", async |connection| {
                let mut rows = sql
                    .query(&sql.claim)
                    .bind(worker.0)
                    .bind(&names)
                    .bind(i32::try_from(limit).unwrap_or(i32::MAX))
                    .bind(&expected)
                    .bind(&ready)
                    .bind(&after)
                    .fetch_all(&mut *connection)
                    .await?;
                let held_back = held_back(&mut rows)?;
                let large = large_data(sql, connection, &rows).await?;
                Ok((rows, large, held_back))
            })
            .await?;
        drop(names);
        let mut claimed = Claimed {
            held_back,
            ..Claimed::default()
        };
        let mut taken = Vec::with_capacity(rows.len());
        let mut jobs = Vec::with_capacity(rows.len());
        let mut names = Names::default();
        for row in &rows {
            let decoded = decode_claimed(row, sql, &mut names, &mut large)?;
            if let Some(&queue) = queues.index.get(&*decoded.queue) {
                taken.push((queue, decoded.position));
            }
            match decoded.job {
                Ok(job) => jobs.push((decoded.position, job)),
                Err(reason) => claimed.unreadable.push((decoded.claim, reason)),
            }
        }
        queues.advance(&taken, limit as usize);
        // RETURNING promises no order: restore the dequeue order.
        jobs.sort_unstable_by_key(|(position, _)| *position);
        claimed.jobs = jobs.into_iter().map(|(_, job)| job).collect();
        Ok(claimed)
    }

    /// Claims up to `limit` of these jobs for `worker`, those that are ready (due, not
    /// running), in whatever queue, paused or not: a test's run of one job
    /// (`pq::testing::run_job`), not a worker's claim.
    #[doc(hidden)]
    pub async fn claim_jobs(&self, worker: WorkerId, ids: &[JobId], limit: u32) -> Result<Claimed> {
        let sql = self.statements().await?;
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        let (rows, mut large) = self
            .with_connection("a claim", async |connection| {
                let mut tx = sqlx::Connection::begin(&mut *connection).await?;
                sql.query(&sql.claim_lock)
                    .bind(worker.0)
                    .execute(&mut *tx)
                    .await?;
                let rows = sql
                    .query(&sql.claim_jobs)
                    .bind(worker.0)
                    .bind(&ids)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                let large = large_data(sql, &mut tx, &rows).await?;
                tx.commit().await?;
                Ok((rows, large))
            })
            .await?;
        let mut claimed = Claimed::default();
        let mut names = Names::default();
        for row in &rows {
            let decoded = decode_claimed(row, sql, &mut names, &mut large)?;
            match decoded.job {
                Ok(job) => claimed.jobs.push(job),
                Err(reason) => claimed.unreadable.push((decoded.claim, reason)),
            }
        }
        Ok(claimed)
    }

    /// Marks these claimed jobs done on `connection` (the handler's own transaction, say), in
    /// one statement: deleted, or kept in the `done` state when `keep` is set (a job that
    /// others wait for is always kept). Returns the ids it completed; a job missing from it was
    /// no longer this claim's.
    pub async fn complete(
        &self,
        connection: &mut sqlx::PgConnection,
        claims: &[Claim],
        keep: bool,
    ) -> Result<Vec<JobId>> {
        let sql = self.statements().await?;
        let statement = if keep {
            &sql.complete_keep
        } else {
            &sql.complete_delete
        };
        let (sorted, ids_column, numbers) = columns(claims);
        let mut done = ids(sql
            .query_scalar(statement)
            .bind(ids_column)
            .bind(numbers)
            .fetch_one(&mut *connection)
            .await?);
        if done.len() < claims.len() && !keep {
            // The parents among them (and the jobs lost to their claim, missed again).
            let (_, missed, numbers) = columns(&missed(&sorted, &done));
            done.extend(ids(sql
                .query_scalar(&sql.complete_parents)
                .bind(missed)
                .bind(numbers)
                .fetch_one(&mut *connection)
                .await?));
        }
        Ok(done)
    }

    /// Completes a batch of claims, as [`complete`](Pq::complete) does, on a connection of
    /// pq's own, finding each job by the row version its claim returned (no index lookup), and
    /// by id any job whose row other SQL moved since.
    pub async fn complete_claims(&self, claims: &[Claim], keep: bool) -> Result<Vec<JobId>> {
        let sql = self.statements().await?;
        let statement = if keep {
            &sql.complete_keep_by_row
        } else {
            &sql.complete_delete_by_row
        };
        let (sorted, _, _) = columns(claims);
        let located: Vec<&Claim> = sorted.iter().filter(|claim| claim.row.is_some()).collect();
        let ids_column: Vec<i64> = located.iter().map(|claim| claim.id.0).collect();
        let numbers: Vec<i64> = located.iter().map(|claim| claim.number).collect();
        let rows: Vec<RowVersion> = located.iter().filter_map(|claim| claim.row).collect();
        self.with_connection("a completion", async |connection| {
            let mut done = if located.is_empty() {
                Vec::new()
            } else {
                ids(sql
                    .query_scalar(statement)
                    .bind(&ids_column)
                    .bind(&numbers)
                    .bind(&rows)
                    .fetch_one(&mut *connection)
                    .await?)
            };
            if done.len() < claims.len() {
                let moved = missed(&sorted, &done);
                done.extend(self.complete(&mut *connection, &moved, keep).await?);
            }
            Ok(done)
        })
        .await
    }

    /// Completes claimed jobs whose runs returned a value on `executor`, in one statement: each
    /// is kept `done` with its result for its [`keep`](Returned::keep) time, then a worker's
    /// maintenance ([`expire`](Pq::expire)) deletes it. Returns the ids it completed; a job
    /// missing from it was no longer this claim's.
    pub async fn complete_returned<'e>(
        &self,
        executor: impl sqlx::PgExecutor<'e>,
        returned: &[Returned],
    ) -> Result<Vec<JobId>> {
        let sql = self.statements().await?;
        let mut sorted: Vec<&Returned> = returned.iter().collect();
        sorted.sort_unstable_by_key(|returned| returned.claim.id);
        let ids_column: Vec<i64> = sorted.iter().map(|r| r.claim.id.0).collect();
        let numbers: Vec<i64> = sorted.iter().map(|r| r.claim.number).collect();
        let results: Vec<&str> = sorted.iter().map(|r| r.result.as_str()).collect();
        let keep: Vec<Option<i64>> = sorted.iter().map(|r| r.keep.map(micros)).collect();
        let (touched, _notified): (Vec<i64>, Option<bool>) = sql
            .query_as(&sql.complete_returned)
            .bind(ids_column)
            .bind(numbers)
            .bind(results)
            .bind(keep)
            .fetch_one(executor)
            .await?;
        Ok(ids(touched))
    }

    /// Completes claimed jobs whose runs returned a value, as
    /// [`complete_returned`](Pq::complete_returned) does, on a connection of pq's own.
    pub async fn complete_results(&self, returned: &[Returned]) -> Result<Vec<JobId>> {
        self.with_connection("a completion", async |connection| {
            self.complete_returned(connection, returned).await
        })
        .await
    }

    /// Deletes up to `limit` finished jobs whose keep time ran out (a result's, see
    /// [`complete_returned`](Pq::complete_returned)), oldest first; returns how many. Workers
    /// run it as part of their maintenance.
    pub async fn expire(&self, limit: u32) -> Result<u64> {
        let sql = self.statements().await?;
        self.with_connection("expiring finished jobs", async |connection| {
            Ok(sql
                .query(&sql.expire)
                .bind(i64::from(limit))
                .execute(connection)
                .await?
                .rows_affected())
        })
        .await
    }

    /// Records failed attempts with their errors, in one statement for each kind of outcome
    /// among them (failed, snoozed, cancelled), each queued again or ended as it says. Returns
    /// the ids whose claim still held.
    pub async fn fail(&self, failures: &[Failed]) -> Result<Vec<JobId>> {
        let mut sorted: Vec<&Failed> = failures.iter().collect();
        sorted.sort_unstable_by_key(|failed| failed.claim.id);
        let (mut failed, mut snoozed, mut cancelled) = (Vec::new(), Vec::new(), Vec::new());
        for failure in sorted {
            match failure.then {
                Failure::RetryIn(_) | Failure::GiveUp => failed.push(failure),
                Failure::Snooze(_) => snoozed.push(failure),
                Failure::Cancel => cancelled.push(failure),
            }
        }
        let column = |of: &[&Failed], f: fn(&Failed) -> i64| -> Vec<i64> {
            of.iter().map(|&failed| f(failed)).collect()
        };
        // PostgreSQL's text cannot hold NUL: a message with one would be refused on every try.
        let errors = |of: &[&Failed]| -> Vec<String> {
            of.iter().map(|f| f.error.replace('\0', "\\0")).collect()
        };
        let retry_in: Vec<Option<i64>> = failed
            .iter()
            .map(|f| match f.then {
                Failure::RetryIn(delay) | Failure::Snooze(delay) => Some(micros(delay)),
                Failure::GiveUp | Failure::Cancel => None,
            })
            .collect();
        let delays = column(&snoozed, |f| match f.then {
            Failure::Snooze(delay) | Failure::RetryIn(delay) => micros(delay),
            Failure::GiveUp | Failure::Cancel => 0,
        });
        let sql = self.statements().await?;
        let record = async |connection: &mut sqlx::PgConnection| -> Result<Vec<JobId>> {
            let mut touched = Vec::new();
            if !failed.is_empty() {
                touched.extend(ids(sql
                    .query_scalar(&sql.fail)
                    .bind(column(&failed, |f| f.claim.id.0))
                    .bind(column(&failed, |f| f.claim.number))
                    .bind(errors(&failed))
                    .bind(&retry_in)
                    .fetch_one(&mut *connection)
                    .await?));
            }
            if !snoozed.is_empty() {
                touched.extend(ids(sql
                    .query_scalar(&sql.snooze)
                    .bind(column(&snoozed, |f| f.claim.id.0))
                    .bind(column(&snoozed, |f| f.claim.number))
                    .bind(&delays)
                    .bind(i32::try_from(MAX_SNOOZES).unwrap_or(i32::MAX))
                    .bind(format!(
                        "snoozed {MAX_SNOOZES} times, the most a job may: failed for good"
                    ))
                    .fetch_one(&mut *connection)
                    .await?));
            }
            if !cancelled.is_empty() {
                touched.extend(ids(sql
                    .query_scalar(&sql.cancel_running)
                    .bind(column(&cancelled, |f| f.claim.id.0))
                    .bind(column(&cancelled, |f| f.claim.number))
                    .bind(errors(&cancelled))
                    .fetch_one(&mut *connection)
                    .await?));
            }
            Ok(touched)
        };
        let kinds = [&failed, &snoozed, &cancelled];
        let several = kinds.iter().filter(|kind| !kind.is_empty()).count() > 1;
        self.with_connection("recording failures", async |connection| {
            if !several {
                return record(connection).await;
            }
            // All or none, so that a retry of the whole after an error repeats nothing.
            let mut tx = sqlx::Connection::begin(connection).await?;
            let touched = record(&mut tx).await?;
            tx.commit().await?;
            Ok(touched)
        })
        .await
    }

    /// Gives claimed jobs back to the queue without counting the attempt (a worker that stops
    /// before running them), waking their consumers; returns the ids released.
    pub async fn release(&self, claims: &[Claim]) -> Result<Vec<JobId>> {
        let (_, ids_column, numbers) = columns(claims);
        let sql = self.statements().await?;
        let released: Vec<(i64, String)> = self
            .with_connection("a release", async |connection| {
                Ok(sql
                    .query_as(&sql.release)
                    .bind(&ids_column)
                    .bind(&numbers)
                    .fetch_all(connection)
                    .await?)
            })
            .await?;
        let (ids, queues): (Vec<i64>, Vec<String>) = released.into_iter().unzip();
        self.wake(queues).await?;
        Ok(ids.into_iter().map(JobId).collect())
    }
}

/// Takes out the row by which the limited path says that a limit held back ready jobs
/// (`claim_limited.sql`: no claim number; claim.sql returns it last), and answers how soon to
/// claim again.
fn held_back(rows: &mut Vec<PgRow>) -> Result<Option<Duration>> {
    let Some(last) = rows.last() else {
        return Ok(None);
    };
    if !matches!(last.try_get_unchecked::<Option<i64>, _>(0), Ok(None)) {
        return Ok(None);
    }
    let again: Option<PgInterval> = rows.pop().map(|row| row.try_get(11)).transpose()?.flatten();
    let micros = again.map_or(0, |again| again.microseconds);
    Ok(Some(Duration::from_micros(
        u64::try_from(micros).unwrap_or(0),
    )))
}

/// The data of the claimed jobs that the claim left out (large ones, see
/// `sql/functions/claim.sql`), by id: read once they are claimed, as their bytes.
async fn large_data(
    sql: &crate::sql::Statements,
    connection: &mut sqlx::PgConnection,
    rows: &[PgRow],
) -> Result<HashMap<i64, Vec<u8>>> {
    let mut ids = Vec::new();
    let mut number = 0;
    for row in rows {
        if row.try_get_unchecked::<Option<&[u8]>, _>(7)?.is_none() {
            ids.push(row.try_get_unchecked::<i64, _>(1)?);
            number = row.try_get_unchecked::<i64, _>(0)?;
        }
    }
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let found: Vec<(i64, Vec<u8>)> = sql
        .query_as(&sql.claimed_data)
        .bind(&ids)
        .bind(number)
        .fetch_all(connection)
        .await?;
    Ok(found.into_iter().collect())
}

/// One row of a claim, decoded as far as it can be.
struct ClaimedRow {
    claim: Claim,
    queue: Arc<str>,
    position: Position,
    /// The job, or why its row cannot be read.
    job: std::result::Result<Job, String>,
}

/// Decodes a claim's row by position, in the order the claim function returns its columns
/// (`sql/functions/claim.sql`). The claim's own columns (its number, the job's id, where its
/// row lies) are pq's and always decode; the job's, written by whoever enqueued it, may not,
/// and then only that job is unreadable.
fn decode_claimed(
    row: &PgRow,
    sql: &Arc<crate::sql::Statements>,
    names: &mut Names,
    large: &mut HashMap<i64, Vec<u8>>,
) -> Result<ClaimedRow> {
    let number: i64 = row.try_get_unchecked(0)?;
    let id: i64 = row.try_get_unchecked(1)?;
    let claim = Claim {
        id: JobId(id),
        number,
        row: row.try_get_unchecked(4)?,
    };
    let queue = names.queue(row.try_get_unchecked::<&str, _>(5)?);
    let enqueued_at: Option<Timestamp> = row.try_get_unchecked(8)?;
    let schedule_at: Option<Timestamp> = row.try_get_unchecked(9)?;
    let expected_at: Option<Timestamp> = row.try_get_unchecked(10)?;
    // The job's place in `ready_idx`: `COALESCE(expected_at, 'infinity')`, then
    // `GREATEST(schedule_at, enqueued_at)`, which passes over a NULL as `Option::max` does.
    let position = Position {
        expected: expected_at.unwrap_or(Timestamp::INFINITY),
        ready: enqueued_at
            .max(schedule_at)
            .unwrap_or(Timestamp::NEG_INFINITY),
        id,
    };
    let job = (|| {
        let text = |i: usize, column: &str| -> std::result::Result<Option<&str>, String> {
            match row.try_get_unchecked::<Option<&[u8]>, _>(i) {
                Ok(None) => Ok(None),
                Ok(Some(bytes)) => std::str::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| format!("its {column} is not valid UTF-8 text")),
                Err(e) => Err(format!("its {column} cannot be read: {e}")),
            }
        };
        let task = text(6, "task")?;
        let data = match text(7, "data")? {
            Some(data) => data.to_owned(),
            None => String::from_utf8(large.remove(&id).unwrap_or_default())
                .map_err(|_| "its data is not valid UTF-8 text".to_owned())?,
        };
        let timeout: Option<PgInterval> = row
            .try_get_unchecked(11)
            .map_err(|e| format!("its timeout cannot be read: {e}"))?;
        Ok(Job::claimed(crate::job::ClaimedParts {
            id: JobId(id),
            queue: Arc::clone(&queue),
            task: task.map(|task| names.task(task)),
            data,
            attempts: u32::try_from(row.try_get_unchecked::<i32, _>(2).unwrap_or(0)).unwrap_or(0),
            rescues: u32::try_from(row.try_get_unchecked::<i32, _>(3).unwrap_or(0)).unwrap_or(0),
            enqueued_at: enqueued_at
                .ok_or("its enqueued_at is NULL")?
                .required("enqueued_at")?,
            schedule_at: schedule_at
                .ok_or("its schedule_at is NULL")?
                .finite("schedule_at")?,
            expected_at: match expected_at {
                Some(time) => time.finite("expected_at")?,
                None => None,
            },
            timeout: timeout.map(interval_duration),
            // Unreadable meta is pq's loss, not the job's: it runs without it.
            meta: row
                .try_get_unchecked::<Option<&[u8]>, _>(12)
                .ok()
                .flatten()
                .and_then(|bytes| std::str::from_utf8(bytes).ok())
                .map(Box::from),
            claim,
            sql: Arc::clone(sql),
        }))
    })();
    Ok(ClaimedRow {
        claim,
        queue,
        position,
        job,
    })
}

/// An interval as a duration: months of 30 days, days of 24 hours; negative parts count as
/// nothing, and the whole is at most [`MAX_DELAY`].
fn interval_duration(interval: PgInterval) -> Duration {
    let days = i64::from(interval.months.max(0)) * 30 + i64::from(interval.days.max(0));
    let micros = days
        .saturating_mul(86_400_000_000)
        .saturating_add(interval.microseconds.max(0));
    Duration::from_micros(u64::try_from(micros).unwrap_or(0)).min(MAX_DELAY)
}

impl Job {
    /// The claim this job was taken under, for jobs a worker claimed.
    pub fn claim(&self) -> Option<Claim> {
        self.claimed_info().map(|info| info.claim)
    }
}
