//! The operator's view of a queue table: counts per queue and state, listing and inspecting
//! jobs, re-queueing failed ones, cancelling, deleting and pruning. [`Pq::admin`] gives the
//! handle, [`Admin`].
//!
//! Every operation is one statement that touches only the rows it needs, through an index, and
//! none waits on or blocks running workers: bulk operations ([`Admin::retry_failed_batch`],
//! [`Admin::prune_batch`]) take a bounded batch with `FOR UPDATE SKIP LOCKED`, and the `*_all`
//! forms loop over batches so that no single statement runs long.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row};

use crate::error::{Error, Result};
use crate::job::{check_queue_name, JobId};
use crate::pq::Pq;
use crate::sql::TableName;

/// The state of a job as an operator sees it. The table stores `queued` for both
/// [`Ready`](JobState::Ready) and [`Scheduled`](JobState::Scheduled); which one a queued job is
/// depends on whether its `schedule_at` has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Queued, and may be handed out now.
    Ready,
    /// Queued, not to be handed out before its `schedule_at`.
    Scheduled,
    /// Claimed by a worker that holds its lease.
    Running,
    /// Completed (kept when workers keep completed jobs, and after a plain `get`).
    Done,
    /// Gave up after its last allowed attempt; see [`Admin::retry_failed`].
    Failed,
    /// Cancelled before it ran; see [`Admin::cancel`].
    Cancelled,
}

impl JobState {
    /// Every state, in the order a job goes through them.
    pub const ALL: [JobState; 6] = [
        JobState::Scheduled,
        JobState::Ready,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// Its name: `ready`, `scheduled`, `running`, `done`, `failed` or `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Ready => "ready",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The SQL condition that selects jobs in this state. Literal, not bound, so that the
    /// planner can match the partial indexes whose predicates name the states.
    fn condition(self) -> &'static str {
        match self {
            JobState::Ready => "state = 'queued' AND schedule_at <= statement_timestamp()",
            JobState::Scheduled => "state = 'queued' AND schedule_at > statement_timestamp()",
            JobState::Running => "state = 'running'",
            JobState::Done => "state = 'done'",
            JobState::Failed => "state = 'failed'",
            JobState::Cancelled => "state = 'cancelled'",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`JobState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown job state {0:?}, expected one of ready, scheduled, running, done, failed, cancelled"
)]
pub struct ParseJobStateError(pub String);

impl FromStr for JobState {
    type Err = ParseJobStateError;

    /// Parses a state's name, as [`JobState::as_str`] writes it.
    ///
    /// ```
    /// assert_eq!("failed".parse(), Ok(pq::JobState::Failed));
    /// assert!("lost".parse::<pq::JobState>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ParseJobStateError(s.to_owned()))
    }
}

/// One failed attempt, as recorded in a job's `errors` history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The attempt that failed (1 for the first run).
    pub attempt: u32,
    /// What it failed with.
    pub error: String,
    /// When it failed.
    pub at: DateTime<Utc>,
}

/// Everything stored about one job: what [`Admin::job`] and [`Admin::list`] return.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobInfo {
    /// Its id.
    pub id: JobId,
    /// Its queue.
    pub queue: String,
    /// The task that runs it, for jobs written by a task call.
    pub task: Option<String>,
    /// Its data (a task's arguments).
    pub data: serde_json::Value,
    /// Its state now.
    pub state: JobState,
    /// How many times it was handed to a worker.
    pub attempts: u32,
    /// When it was enqueued.
    pub enqueued_at: DateTime<Utc>,
    /// When it may run, if it was scheduled (or is waiting for a retry).
    pub schedule_at: Option<DateTime<Utc>>,
    /// Its priority: the time it is expected to be done by.
    pub expected_at: Option<DateTime<Utc>>,
    /// When it was last handed out.
    pub dequeued_at: Option<DateTime<Utc>>,
    /// Until when its running attempt's lease holds.
    pub locked_until: Option<DateTime<Utc>>,
    /// When it was done, failed or cancelled.
    pub finished_at: Option<DateTime<Utc>>,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
    /// Every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
}

impl JobInfo {
    fn from_row(row: &PgRow) -> Result<Self> {
        let id: i64 = row.try_get("id")?;
        let decode = |error| Error::Decode { id, error };
        let data: String = row.try_get("data")?;
        let state: String = row.try_get("state")?;
        let errors: Option<String> = row.try_get("errors")?;
        Ok(Self {
            id: JobId(id),
            queue: row.try_get("q_name")?,
            task: row.try_get("task")?,
            data: serde_json::from_str(&data).map_err(decode)?,
            state: state
                .parse()
                .map_err(|e: ParseJobStateError| sqlx::Error::Decode(e.into()))?,
            attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
            enqueued_at: row.try_get("enqueued_at")?,
            schedule_at: row.try_get("schedule_at")?,
            expected_at: row.try_get("expected_at")?,
            dequeued_at: row.try_get("dequeued_at")?,
            locked_until: row.try_get("locked_until")?,
            finished_at: row.try_get("finished_at")?,
            last_error: row.try_get("last_error")?,
            errors: match errors {
                Some(errors) => serde_json::from_str(&errors).map_err(decode)?,
                None => Vec::new(),
            },
        })
    }
}

/// The jobs of one queue, counted by state: a row of [`Admin::stats`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Jobs that may be handed out now.
    pub ready: u64,
    /// Jobs waiting for their `schedule_at` (new scheduled jobs and retries).
    pub scheduled: u64,
    /// Jobs being run.
    pub running: u64,
    /// Jobs done and kept.
    pub done: u64,
    /// Jobs that gave up.
    pub failed: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// How long the oldest ready job has been ready: how far behind the workers are.
    #[serde(rename = "oldest_ready_seconds", serialize_with = "as_seconds")]
    pub oldest_ready: Option<Duration>,
}

fn as_seconds<S: Serializer>(duration: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    duration.map(|d| d.as_secs_f64()).serialize(s)
}

/// Which jobs [`Admin::list`] and [`Admin::retry_failed`] look at: all that match every field
/// set.
///
/// ```
/// let filter = pq::JobFilter::new().queue("mail").state(pq::JobState::Failed);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs of this queue.
    pub queue: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this task.
    pub task: Option<String>,
}

impl JobFilter {
    /// A filter that matches every job.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only jobs of this queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Only jobs in this state.
    pub fn state(mut self, state: JobState) -> Self {
        self.state = Some(state);
        self
    }

    /// Only jobs of this task.
    pub fn task(mut self, task: impl Into<String>) -> Self {
        self.task = Some(task.into());
        self
    }

    fn check(&self) -> Result<()> {
        match &self.queue {
            Some(queue) => check_queue_name(queue),
            None => Ok(()),
        }
    }

    /// Appends ` AND ...` for each field set, values bound.
    fn push_conditions(&self, sql: &mut QueryBuilder<'_, Postgres>) {
        if let Some(queue) = &self.queue {
            sql.push(" AND q_name = ").push_bind(queue.clone());
        }
        if let Some(task) = &self.task {
            sql.push(" AND task = ").push_bind(task.clone());
        }
        if let Some(state) = self.state {
            sql.push(" AND ").push(state.condition());
        }
    }
}

/// One page of [`Admin::list`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Page {
    /// The jobs, by id.
    pub jobs: Vec<JobInfo>,
    /// Where the next page starts (pass it as `after`), if this page was full.
    pub next_after: Option<JobId>,
}

/// What one batch of a bulk operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// How many jobs it changed or deleted.
    pub count: u64,
    /// The highest id it looked at, where the next batch starts; `None` when it found none.
    pub last: Option<JobId>,
}

/// The default batch of bulk operations: small enough that each statement is short.
pub const DEFAULT_BATCH_SIZE: u32 = 1000;

/// The longest age [`Admin::prune`] takes: older limits are surely mistakes.
const MAX_PRUNE_AGE: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// The columns of a [`JobInfo`]; the state as an operator sees it, ready or scheduled rather
/// than queued.
const JOB_INFO_COLUMNS: &str = "id, q_name, task, data::text AS data, \
     CASE WHEN state <> 'queued' THEN state \
          WHEN schedule_at > statement_timestamp() THEN 'scheduled' ELSE 'ready' END AS state, \
     attempts, enqueued_at, NULLIF(schedule_at, '-infinity') AS schedule_at, expected_at, \
     dequeued_at, locked_until, finished_at, last_error, errors::text AS errors";

/// The admin statements of one table, rendered from its quoted name. The list statement
/// depends on the filter and is built per call (see [`Admin::list`]).
#[derive(Debug)]
struct Statements {
    table: String,
    channel: String,
    stats: String,
    oldest_ready: String,
    job: String,
    retry_one: String,
    retry_batch: String,
    cancel: String,
    delete: String,
    prune_batch: String,
}

impl Statements {
    fn new(table: &TableName) -> Self {
        let t = table.qualified();
        let ready = JobState::Ready.condition();
        // A job has been ready since it was enqueued or, if it was scheduled later, since then.
        let ready_since = "GREATEST(enqueued_at, schedule_at)";
        let count = |state: JobState| format!("count(*) FILTER (WHERE {})", state.condition());
        // Counting every row is inherently a scan of the table; it takes no lock that a worker
        // waits on. Pruning keeps it small.
        let stats = format!(
            "SELECT q_name, {}, {}, {}, {}, {}, {}, \
               EXTRACT(EPOCH FROM statement_timestamp() \
                 - min({ready_since}) FILTER (WHERE {ready}))::float8 \
             FROM {t} GROUP BY q_name ORDER BY q_name",
            count(JobState::Ready),
            count(JobState::Scheduled),
            count(JobState::Running),
            count(JobState::Done),
            count(JobState::Failed),
            count(JobState::Cancelled),
        );
        // Reads only the ready part of the queue on the dequeue index.
        let oldest_ready = format!(
            "SELECT EXTRACT(EPOCH FROM statement_timestamp() - min({ready_since}))::float8 \
             FROM {t} WHERE q_name = $1 AND {ready}"
        );
        // Failed jobs go back to the queue ready at once with their attempts reset, since the
        // worker gives up on a job past its task's last attempt; the error history is kept.
        // Their workers are woken as a put wakes them for new jobs.
        let requeue = |selected: &str| {
            format!(
                "WITH moved AS ( \
                   UPDATE {t} AS j SET state = 'queued', schedule_at = '-infinity', attempts = 0, \
                     finished_at = NULL, locked_until = NULL \
                   {selected} RETURNING j.id, j.q_name), \
                 woken AS ( \
                   SELECT pg_notify($1, CASE WHEN octet_length(q_name) < 8000 THEN q_name ELSE '' END) \
                   FROM (SELECT DISTINCT q_name FROM moved) AS queues) \
                 SELECT count(*), max(id), (SELECT count(*) FROM woken) FROM moved"
            )
        };
        let retry_one = requeue("WHERE j.id = $2 AND j.state = 'failed'");
        // Keyset over the failed-jobs index: each batch starts after the last id of the one
        // before, and skips rows another session holds rather than wait for them.
        let retry_batch = requeue(&format!(
            "FROM (SELECT id FROM {t} \
               WHERE state = 'failed' AND id > $2 \
                 AND ($3::text IS NULL OR q_name = $3) AND ($4::text IS NULL OR task = $4) \
               ORDER BY id LIMIT $5 FOR UPDATE SKIP LOCKED) AS batch \
             WHERE j.id = batch.id"
        ));
        // In the order of the index of jobs out of the queue (migration 8), so that a batch
        // stops as soon as it has its jobs: the oldest ids first, mostly the oldest jobs.
        let prune_batch = format!(
            "WITH old AS ( \
               SELECT id FROM {t} \
               WHERE state IN ('done', 'failed', 'cancelled') \
                 AND finished_at < statement_timestamp() - $1 * interval '1 microsecond' \
               ORDER BY state, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             DELETE FROM {t} AS j USING old WHERE j.id = old.id"
        );
        Self {
            channel: table.channel(),
            stats,
            oldest_ready,
            job: format!("SELECT {JOB_INFO_COLUMNS} FROM {t} WHERE id = $1"),
            retry_one,
            retry_batch,
            cancel: format!(
                "UPDATE {t} SET state = 'cancelled', finished_at = statement_timestamp() \
                 WHERE id = $1 AND state = 'queued'"
            ),
            delete: format!("DELETE FROM {t} WHERE id = $1 AND state <> 'running'"),
            prune_batch,
            table: t,
        }
    }
}

/// The operator's handle on a queue table; see [`Pq::admin`]. Cheap to clone.
///
/// Operations on one job by id return `Ok(false)` (or `Ok(None)`) when no job has that id or
/// when the job is not in a state the operation applies to, and never an error for it; look
/// the job up with [`job`](Admin::job) to tell which. Errors are for bad input (an invalid
/// queue name, an absurd age) and for the database.
///
/// ```no_run
/// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
/// let admin = pq.admin();
/// for queue in admin.stats().await? {
///     println!("{}: {} ready, {} failed", queue.queue, queue.ready, queue.failed);
/// }
/// let failed = pq::JobFilter::new().state(pq::JobState::Failed);
/// let page = admin.list(&failed, None, 50).await?;
/// for job in &page.jobs {
///     println!("{} {:?}: {:?}", job.id, job.task, job.last_error);
/// }
/// let requeued = admin.retry_failed(&pq::JobFilter::new().queue("mail")).await?;
/// let pruned = admin.prune(std::time::Duration::from_secs(7 * 24 * 3600)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Admin {
    pq: Pq,
    sql: std::sync::Arc<Statements>,
}

impl Pq {
    /// The admin handle of this table: counts, listing, re-queueing, cancelling, pruning.
    pub fn admin(&self) -> Admin {
        Admin {
            pq: self.clone(),
            sql: std::sync::Arc::new(Statements::new(&self.sql().table)),
        }
    }
}

impl Admin {
    /// Every queue of the table with its jobs counted by state and the age of its oldest ready
    /// job, by queue name. Reads the whole table, without blocking anyone.
    pub async fn stats(&self) -> Result<Vec<QueueStats>> {
        let rows = sqlx::query(&self.sql.stats)
            .fetch_all(self.pq.pool())
            .await?;
        let count = |row: &PgRow, i| -> Result<u64> {
            Ok(u64::try_from(row.try_get::<i64, _>(i)?).unwrap_or(0))
        };
        rows.iter()
            .map(|row| {
                Ok(QueueStats {
                    queue: row.try_get(0)?,
                    ready: count(row, 1)?,
                    scheduled: count(row, 2)?,
                    running: count(row, 3)?,
                    done: count(row, 4)?,
                    failed: count(row, 5)?,
                    cancelled: count(row, 6)?,
                    oldest_ready: seconds(row.try_get(7)?),
                })
            })
            .collect()
    }

    /// How long the oldest ready job of `queue` has been waiting, `None` if none is ready. Reads
    /// only the queue's ready jobs: cheap enough for a health check.
    pub async fn oldest_ready(&self, queue: &str) -> Result<Option<Duration>> {
        check_queue_name(queue)?;
        let age: Option<f64> = sqlx::query_scalar(&self.sql.oldest_ready)
            .bind(queue)
            .fetch_one(self.pq.pool())
            .await?;
        Ok(seconds(age))
    }

    /// The job of this id, `None` if there is none.
    pub async fn job(&self, id: JobId) -> Result<Option<JobInfo>> {
        let row = sqlx::query(&self.sql.job)
            .bind(id.0)
            .fetch_optional(self.pq.pool())
            .await?;
        row.as_ref().map(JobInfo::from_row).transpose()
    }

    /// Up to `limit` jobs matching `filter` with ids above `after`, by id. Pages are keyed on
    /// the id, not counted with `OFFSET`, so each page costs the same however deep it is:
    ///
    /// ```no_run
    /// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
    /// let filter = pq::JobFilter::new().queue("mail");
    /// let mut after = None;
    /// loop {
    ///     let page = pq.admin().list(&filter, after, 100).await?;
    ///     for job in &page.jobs {
    ///         println!("{} {}", job.id, job.state);
    ///     }
    ///     match page.next_after {
    ///         Some(next) => after = Some(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list(&self, filter: &JobFilter, after: Option<JobId>, limit: u32) -> Result<Page> {
        filter.check()?;
        let mut sql = QueryBuilder::<Postgres>::new(format!(
            "SELECT {JOB_INFO_COLUMNS} FROM {} WHERE id > ",
            self.sql.table
        ));
        sql.push_bind(after.map_or(0, |id| id.0));
        filter.push_conditions(&mut sql);
        sql.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
        let rows = sql.build().fetch_all(self.pq.pool()).await?;
        let jobs = rows
            .iter()
            .map(JobInfo::from_row)
            .collect::<Result<Vec<_>>>()?;
        let next_after = match jobs.last() {
            Some(last) if jobs.len() == limit as usize => Some(last.id),
            _ => None,
        };
        Ok(Page { jobs, next_after })
    }

    /// Queues the failed job `id` again, ready at once; `false` if there is no failed job of
    /// this id. It starts over: its attempts are reset, so its task's retries apply again,
    /// while its `last_error` and `errors` history are kept.
    pub async fn retry(&self, id: JobId) -> Result<bool> {
        let query = sqlx::query(&self.sql.retry_one)
            .bind(&self.sql.channel)
            .bind(id.0);
        let (count, _) = self.requeue(query).await?;
        Ok(count == 1)
    }

    /// Queues again, like [`retry`](Admin::retry), up to `limit` failed jobs matching `filter`
    /// (its state is ignored) with ids above `after`. Call it again from the returned
    /// [`Batch::last`] until that is `None`, or use [`retry_failed`](Admin::retry_failed).
    pub async fn retry_failed_batch(
        &self,
        filter: &JobFilter,
        after: Option<JobId>,
        limit: u32,
    ) -> Result<Batch> {
        filter.check()?;
        let query = sqlx::query(&self.sql.retry_batch)
            .bind(&self.sql.channel)
            .bind(after.map_or(0, |id| id.0))
            .bind(filter.queue.as_deref())
            .bind(filter.task.as_deref())
            .bind(i64::from(limit));
        let (count, last) = self.requeue(query).await?;
        Ok(Batch { count, last })
    }

    /// Queues again every failed job matching `filter` (its state is ignored), in batches of
    /// [`DEFAULT_BATCH_SIZE`]; returns how many.
    pub async fn retry_failed(&self, filter: &JobFilter) -> Result<u64> {
        let mut total = 0;
        let mut after = None;
        loop {
            let batch = self
                .retry_failed_batch(filter, after, DEFAULT_BATCH_SIZE)
                .await?;
            total += batch.count;
            match batch.last {
                Some(last) => after = Some(last),
                None => return Ok(total),
            }
        }
    }

    /// Runs a re-queue statement (`$1` the channel, bound here first by the caller): how many
    /// jobs it moved and the highest id among them.
    async fn requeue(
        &self,
        query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<(u64, Option<JobId>)> {
        let row = query.fetch_one(self.pq.pool()).await?;
        let count: i64 = row.try_get(0)?;
        let last: Option<i64> = row.try_get(1)?;
        Ok((u64::try_from(count).unwrap_or(0), last.map(JobId)))
    }

    /// Cancels a ready or scheduled job: it stays in the table, `cancelled`, and never runs.
    /// `false` if no queued job has this id (a running job cannot be cancelled: let it finish,
    /// or fail it from the task).
    pub async fn cancel(&self, id: JobId) -> Result<bool> {
        let done = sqlx::query(&self.sql.cancel)
            .bind(id.0)
            .execute(self.pq.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a job that is not running; `false` if there is no such job.
    pub async fn delete(&self, id: JobId) -> Result<bool> {
        let done = sqlx::query(&self.sql.delete)
            .bind(id.0)
            .execute(self.pq.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes up to `limit` done, failed or cancelled jobs that finished more than
    /// `older_than` ago, oldest first; returns how many. Call it until it returns 0, or use
    /// [`prune`](Admin::prune).
    pub async fn prune_batch(&self, older_than: Duration, limit: u32) -> Result<u64> {
        let older_than = prune_age(older_than)?;
        let done = sqlx::query(&self.sql.prune_batch)
            .bind(older_than)
            .bind(i64::from(limit))
            .execute(self.pq.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Deletes every done, failed or cancelled job that finished more than `older_than` ago,
    /// in batches of [`DEFAULT_BATCH_SIZE`]; returns how many.
    pub async fn prune(&self, older_than: Duration) -> Result<u64> {
        let mut total = 0;
        loop {
            let count = self.prune_batch(older_than, DEFAULT_BATCH_SIZE).await?;
            total += count;
            if count < u64::from(DEFAULT_BATCH_SIZE) {
                return Ok(total);
            }
        }
    }
}

/// The age in microseconds, refused when it is past any sensible retention.
fn prune_age(older_than: Duration) -> Result<i64> {
    if older_than > MAX_PRUNE_AGE {
        return Err(Error::InvalidTime {
            input: format!("{older_than:?}"),
            reason: "a prune age must be at most 100 years".into(),
        });
    }
    Ok(i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX))
}

fn seconds(seconds: Option<f64>) -> Option<Duration> {
    seconds.map(|s| Duration::from_secs_f64(s.max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse(), Ok(state));
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{state}\"")
            );
        }
        let err = "queued".parse::<JobState>().unwrap_err().to_string();
        assert!(err.contains("expected one of ready, scheduled"), "{err}");
    }

    #[test]
    fn absurd_prune_ages_are_refused() {
        assert!(prune_age(Duration::from_secs(7 * 24 * 3600)).is_ok());
        let err = prune_age(Duration::MAX).unwrap_err().to_string();
        assert!(err.contains("at most 100 years"), "{err}");
    }
}
