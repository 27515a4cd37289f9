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
use crate::sql::{as_bytes, EXPECTED, OPERATOR_STATE, READY_AT};
use crate::timestamp::Timestamp;

/// The state of a job as an operator sees it. The table stores `queued` for both
/// [`Ready`](JobState::Ready) and [`Scheduled`](JobState::Scheduled); which one a queued job is
/// depends on whether its `schedule_at` has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for its parents to end (see [`Graph`](crate::Graph)); ready once they have.
    Waiting,
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
    pub const ALL: [JobState; 7] = [
        JobState::Waiting,
        JobState::Scheduled,
        JobState::Ready,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// Its name: `waiting`, `ready`, `scheduled`, `running`, `done`, `failed` or `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
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
            JobState::Waiting => "state = 'waiting'",
            JobState::Ready => {
                "state = 'queued' AND GREATEST(schedule_at, enqueued_at) <= statement_timestamp()"
            }
            JobState::Scheduled => {
                "state = 'queued' AND GREATEST(schedule_at, enqueued_at) > statement_timestamp()"
            }
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
    "unknown job state {0:?}, expected one of waiting, ready, scheduled, running, done, failed, cancelled"
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
    /// How many of those runs were lost with their worker (crashed, frozen, cut off); they do
    /// not count against its task's retries.
    pub rescues: u32,
    /// How many times its runs snoozed it (`TaskError::snooze`), none of them counted as
    /// attempts.
    pub snoozes: u32,
    /// The worker running it, for a running job.
    pub worker: Option<crate::WorkerId>,
    /// When it was enqueued.
    pub enqueued_at: DateTime<Utc>,
    /// When it may run, if it was scheduled (or is waiting for a retry).
    pub schedule_at: Option<DateTime<Utc>>,
    /// Its priority: the time it is expected to be done by.
    pub expected_at: Option<DateTime<Utc>>,
    /// When it was last handed out.
    pub dequeued_at: Option<DateTime<Utc>>,
    /// Until when its running attempt's lease holds: its worker's, unless that worker beats
    /// again.
    pub locked_until: Option<DateTime<Utc>>,
    /// When it was done, failed or cancelled.
    pub finished_at: Option<DateTime<Utc>>,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
    /// Every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
    /// What pq carries with it beside its data: its enqueuer's trace context, a recurring
    /// job's fire time (see [`NewJob::meta`](crate::NewJob::meta)).
    pub meta: Option<serde_json::Value>,
    /// Its unique key, while it waits (see [`NewJob::unique_key`](crate::NewJob::unique_key)).
    pub unique_key: Option<String>,
    /// What its run returned, for a done job whose task returns a value (see
    /// [`JobHandle`](crate::JobHandle)); [`Admin::job`] reads it, [`Admin::list`] does not.
    pub result: Option<serde_json::Value>,
    /// When the finished job is deleted: a job with a result is kept until then.
    pub expires_at: Option<DateTime<Utc>>,
}

impl JobInfo {
    /// Decodes a row by column name. What other SQL may have written that pq cannot read (a
    /// time out of range, text that is not UTF-8, a state pq does not know, data or an error
    /// history serde cannot read) is [`Error::Unreadable`], never a panic.
    pub(crate) fn from_row(row: &PgRow) -> Result<Self> {
        let id: i64 = row.try_get("id")?;
        let unreadable = |reason: String| Error::Unreadable { id, reason };
        let text = |column: &str| -> Result<Option<String>> {
            match row.try_get_unchecked::<Option<&[u8]>, _>(column)? {
                None => Ok(None),
                Some(bytes) => String::from_utf8(bytes.to_vec())
                    .map(Some)
                    .map_err(|_| unreadable(format!("its {column} is not valid UTF-8 text"))),
            }
        };
        let time = |column: &str| -> Result<Option<DateTime<Utc>>> {
            match row.try_get::<Option<Timestamp>, _>(column)? {
                None => Ok(None),
                Some(time) => time.finite(column).map_err(unreadable),
            }
        };
        let required = |column: &str| -> Result<DateTime<Utc>> {
            let time: Timestamp = row.try_get(column)?;
            time.required(column).map_err(unreadable)
        };
        let data = text("data")?.unwrap_or_default();
        let state = text("state")?.unwrap_or_default();
        let errors = text("errors")?;
        let meta = text("meta")?;
        let json = |value: Option<String>, what: &str| -> Result<Option<serde_json::Value>> {
            value
                .map(|value| {
                    serde_json::from_str(&value)
                        .map_err(|e| unreadable(format!("its {what} cannot be read as JSON: {e}")))
                })
                .transpose()
        };
        Ok(Self {
            id: JobId(id),
            queue: text("q_name")?.unwrap_or_default(),
            task: text("task")?,
            data: serde_json::from_str(&data)
                .map_err(|e| unreadable(format!("its data cannot be read as JSON: {e}")))?,
            state: state
                .parse()
                .map_err(|_| unreadable(format!("its state {state:?} is not one pq knows")))?,
            attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
            rescues: u32::try_from(row.try_get::<Option<i32>, _>("rescues")?.unwrap_or(0))
                .unwrap_or(0),
            snoozes: u32::try_from(row.try_get::<Option<i32>, _>("snoozes")?.unwrap_or(0))
                .unwrap_or(0),
            worker: row
                .try_get::<Option<i64>, _>("worker_id")?
                .map(crate::WorkerId),
            enqueued_at: required("enqueued_at")?,
            schedule_at: time("schedule_at")?,
            expected_at: time("expected_at")?,
            dequeued_at: time("dequeued_at")?,
            locked_until: time("locked_until")?,
            finished_at: time("finished_at")?,
            last_error: text("last_error")?,
            errors: match errors {
                Some(errors) => serde_json::from_str(&errors).map_err(|e| {
                    unreadable(format!("its errors are not a list of failed attempts: {e}"))
                })?,
                None => Vec::new(),
            },
            meta: json(meta, "meta")?,
            unique_key: text("unique_key")?,
            result: json(text("result")?, "result")?,
            expires_at: time("expires_at")?,
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
    /// Jobs waiting for their parents to end.
    pub waiting: u64,
    /// How long the oldest ready job has been ready: how far behind the workers are.
    #[serde(rename = "oldest_ready_seconds", serialize_with = "as_seconds")]
    pub oldest_ready: Option<Duration>,
    /// Whether it is paused ([`Admin::pause`]): its jobs wait, none starts.
    pub paused: bool,
}

/// Ready jobs of one queue and task that no live worker can run: a row of
/// [`Admin::unrunnable`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Unrunnable {
    /// Their queue.
    pub queue: String,
    /// Their task; `None` for jobs of no task (put by [`Queue::put`](crate::Queue::put)),
    /// which only [`Queue::get`](crate::Queue::get) takes.
    pub task: Option<String>,
    /// How many.
    pub jobs: u64,
    /// How long the oldest has been ready.
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
    /// The jobs of the page whose rows pq cannot read (written by other SQL), each with the
    /// reason; they count towards the page's size.
    pub unreadable: Vec<(JobId, String)>,
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

/// The columns of a [`JobInfo`] from table alias `t`; the state as an operator sees it, ready or
/// scheduled rather than queued, and a running job's lease its worker's.
pub(crate) fn job_info_columns(workers: &str, result: bool) -> String {
    format!(
        "t.id, {q_name} AS q_name, {task} AS task, {data} AS data, \
         {state} AS state, \
         t.attempts, t.rescues, t.snoozes, t.worker_id, t.enqueued_at, t.schedule_at, t.expected_at, \
         t.dequeued_at, \
         COALESCE(t.locked_until, (SELECT w.expires_at FROM {workers} AS w \
           WHERE w.id = t.worker_id AND t.state = 'running')) AS locked_until, \
         t.finished_at, {last_error} AS last_error, {errors} AS errors, \
         {meta} AS meta, {unique_key} AS unique_key, {result} AS result, t.expires_at",
        q_name = as_bytes("t.q_name"),
        task = as_bytes("t.task"),
        data = as_bytes("t.data::text"),
        state = as_bytes(OPERATOR_STATE),
        last_error = as_bytes("t.last_error"),
        errors = as_bytes("t.errors::text"),
        meta = as_bytes("t.meta::text"),
        unique_key = as_bytes("t.unique_key"),
        // A page of jobs leaves results out: each may be megabytes.
        result = if result { as_bytes("t.result::text") } else { "NULL".to_owned() },
    )
}

/// The admin statements of one table, rendered from its quoted name. The list statement
/// depends on the filter and is built per call (see [`Admin::list`]).
#[derive(Debug)]
struct Statements {
    /// The table's other statements, and how statements are prepared.
    core: std::sync::Arc<crate::sql::Statements>,
    channel: String,
    stats: String,
    oldest_ready: String,
    unrunnable: String,
    job: String,
    list: String,
    retry_one: String,
    retry_batch: String,
    cancel: String,
    cancel_batch: (String, String),
    pause: String,
    hold_claims: String,
    resume: String,
    delete: String,
    prune_batch: String,
    schedule_now: String,
    waiting_like: String,
}

impl Statements {
    fn new(core: std::sync::Arc<crate::sql::Statements>) -> Self {
        let table = &core.table;
        let t = table.qualified();
        let ready = JobState::Ready.condition();
        let workers = table.qualified_derived("workers");
        let columns = job_info_columns(&workers, false);
        let with_result = job_info_columns(&workers, true);
        let count = |state: JobState| format!("count(*) FILTER (WHERE {})", state.condition());
        // Counting every row is inherently a scan of the table; it takes no lock that a worker
        // waits on. Pruning keeps it small. A job whose ready time is infinite (other SQL's) has
        // no age.
        // Paused queues show even without jobs.
        let stats = format!(
            "SELECT {}, COALESCE(c.ready, 0), COALESCE(c.scheduled, 0), COALESCE(c.running, 0), \
               COALESCE(c.done, 0), COALESCE(c.failed, 0), COALESCE(c.cancelled, 0), c.age, \
               p.q_name IS NOT NULL, COALESCE(c.waiting, 0) \
             FROM (SELECT q_name, {} AS ready, {} AS scheduled, {} AS running, {} AS done, \
                 {} AS failed, {} AS cancelled, {} AS waiting, \
                 EXTRACT(EPOCH FROM statement_timestamp() \
                   - min({READY_AT}) FILTER (WHERE {ready} AND isfinite({READY_AT})))::float8 AS age \
               FROM {t} GROUP BY q_name) AS c \
             FULL JOIN (SELECT q_name FROM {queues} WHERE paused_at IS NOT NULL) AS p \
               ON p.q_name = c.q_name \
             ORDER BY COALESCE(c.q_name, p.q_name)",
            as_bytes("COALESCE(c.q_name, p.q_name)"),
            count(JobState::Ready),
            count(JobState::Scheduled),
            count(JobState::Running),
            count(JobState::Done),
            count(JobState::Failed),
            count(JobState::Cancelled),
            count(JobState::Waiting),
            queues = table.qualified_derived("queues"),
        );
        // Two reads of the dequeue index, each stopped after a bounded number of entries: the
        // oldest ready job without an expected time is the first of its range, exactly; among
        // the jobs with one (in priority order, not age), the oldest of the next 1,000.
        let oldest_ready = format!(
            "SELECT EXTRACT(EPOCH FROM statement_timestamp() - least( \
               (SELECT {READY_AT} FROM {t} \
                WHERE q_name = $1 AND state = 'queued' AND {EXPECTED} = 'infinity' \
                  AND {READY_AT} <= statement_timestamp() AND isfinite({READY_AT}) \
                ORDER BY {READY_AT}, id LIMIT 1), \
               (SELECT min(ready) FROM (SELECT {READY_AT} AS ready FROM {t} \
                WHERE q_name = $1 AND state = 'queued' AND {EXPECTED} < 'infinity' \
                  AND {READY_AT} <= statement_timestamp() \
                ORDER BY {EXPECTED}, {READY_AT}, id LIMIT 1000) AS next \
                WHERE isfinite(ready))))::float8"
        );
        // Failed jobs go back to the queue ready at once (behind the jobs ready before them),
        // with their attempts and rescues reset, so that their task's retries apply again; the
        // error history is kept. Their workers are woken as a put wakes them for new jobs.
        let requeue = |selected: &str| {
            format!(
                "WITH moved AS ( \
                   UPDATE {t} AS j SET state = 'queued', schedule_at = statement_timestamp(), \
                     attempts = 0, rescues = NULL, snoozes = NULL, worker_id = NULL, finished_at = NULL, \
                     locked_until = NULL, unique_key = NULL \
                   {selected} RETURNING j.id, j.q_name), \
                 woken AS ( \
                   SELECT pg_notify($1, CASE WHEN octet_length(q_name) < 8000 THEN q_name ELSE '' END) \
                   FROM (SELECT DISTINCT q_name FROM moved) AS queues) \
                 SELECT count(*), max(id), (SELECT count(*) FROM woken) FROM moved"
            )
        };
        let retry_one = requeue("WHERE j.id = $2 AND j.state = 'failed'");
        // Keyset over the index of jobs out of the queue: each batch starts after the last id
        // of the one before, and skips rows another session holds rather than wait for them.
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
        // The ready jobs of each queue ($1, every queue with one if NULL), or of the first $2
        // in line (all if NULL), that no live worker of their queue can run: it registered
        // other tasks (a worker that registered none takes any). Grouped before the workers are
        // looked at, once a group.
        let unrunnable = format!(
            "SELECT {}, {}, count(*), \
               EXTRACT(EPOCH FROM statement_timestamp() \
                 - min(j.ready) FILTER (WHERE isfinite(j.ready)))::float8 \
             FROM unnest(COALESCE($1, ARRAY(SELECT DISTINCT q_name FROM {t} WHERE {ready}))) AS q(name) \
             CROSS JOIN LATERAL (SELECT j.task, {READY_AT} AS ready FROM {t} AS j \
                 WHERE j.q_name = q.name AND j.state = 'queued' \
                   AND {READY_AT} <= statement_timestamp() \
                 ORDER BY {EXPECTED}, {READY_AT}, j.id LIMIT $2) AS j \
             GROUP BY q.name, j.task \
             HAVING NOT EXISTS (SELECT FROM {workers} AS w \
                 WHERE w.expires_at > statement_timestamp() AND q.name = ANY (w.queues) \
                   AND (w.tasks IS NULL OR j.task = ANY (w.tasks))) \
             ORDER BY q.name, j.task",
            as_bytes("q.name"),
            as_bytes("j.task"),
            workers = table.qualified_derived("workers"),
        );
        Self {
            channel: table.channel(),
            stats,
            oldest_ready,
            unrunnable,
            job: format!("SELECT {with_result} FROM {t} AS t WHERE id = $1"),
            list: format!("SELECT {columns} FROM {t} AS t WHERE id > "),
            // The filter's conditions follow.
            schedule_now: format!(
                "UPDATE {t} SET schedule_at = statement_timestamp() \
                 WHERE state = 'queued' AND {READY_AT} > statement_timestamp()"
            ),
            waiting_like: format!(
                "SELECT id FROM {t} WHERE state = 'queued' AND q_name = $1 \
                   AND task IS NOT DISTINCT FROM $2 AND data::jsonb = $3::jsonb ORDER BY id"
            ),
            retry_one,
            retry_batch,
            // A queued job is cancelled at once; a running one by asking its worker, whose
            // heartbeat reads the request (see `heartbeat` in sql.rs). The row is locked first,
            // so that a claim under way is waited for and its job asked of its new worker.
            cancel: format!(
                "WITH job AS ( \
                   SELECT id, state, worker_id FROM {t} \
                   WHERE id = $1 AND state IN ('queued', 'waiting', 'running') FOR NO KEY UPDATE), \
                 queued AS ( \
                   UPDATE {t} AS j SET state = 'cancelled', finished_at = statement_timestamp(), \
                     unique_key = NULL, waits = NULL \
                   FROM job WHERE j.id = job.id AND job.state <> 'running' RETURNING j.id), \
                 asked AS ( \
                   UPDATE {workers} AS w SET cancel = CASE \
                     WHEN job.id = ANY (COALESCE(w.cancel, '{{}}')) THEN w.cancel \
                     ELSE array_append(COALESCE(w.cancel, '{{}}'), job.id) END \
                   FROM job WHERE job.state = 'running' AND w.id = job.worker_id \
                   RETURNING job.id) \
                 SELECT id FROM queued UNION ALL SELECT id FROM asked",
                workers = table.qualified_derived("workers"),
            ),
            // The jobs not ended, in id order, locked as `cancel` locks its one; the filters go
            // between the two parts. Queued ones are cancelled, running ones asked of their
            // workers.
            cancel_batch: (
                format!(
                    "WITH batch AS (SELECT id, state, worker_id FROM {t} \
                       WHERE state IN ('queued', 'waiting', 'running') AND id > "
                ),
                format!(
                    " FOR NO KEY UPDATE), \
                     queued AS ( \
                       UPDATE {t} AS j SET state = 'cancelled', finished_at = statement_timestamp(), \
                         unique_key = NULL, waits = NULL \
                       FROM batch WHERE j.id = batch.id AND batch.state <> 'running' RETURNING j.id), \
                     asked AS ( \
                       UPDATE {workers} AS w SET cancel = ARRAY( \
                         SELECT DISTINCT c FROM unnest(COALESCE(w.cancel, '{{}}') || r.ids) AS c \
                         ORDER BY c) \
                       FROM (SELECT worker_id, array_agg(id) AS ids FROM batch \
                         WHERE state = 'running' GROUP BY worker_id) AS r \
                       WHERE w.id = r.worker_id RETURNING cardinality(r.ids) AS n) \
                     SELECT ((SELECT count(*) FROM queued) \
                       + COALESCE((SELECT sum(n) FROM asked), 0))::int8, \
                       (SELECT max(id) FROM batch)",
                    workers = table.qualified_derived("workers"),
                ),
            ),
            pause: format!(
                "INSERT INTO {queues} AS s (q_name, paused_at) VALUES ($1, statement_timestamp()) \
                 ON CONFLICT (q_name) DO UPDATE \
                   SET paused_at = COALESCE(s.paused_at, excluded.paused_at) \
                 RETURNING s.paused_at = statement_timestamp()",
                queues = table.qualified_derived("queues"),
            ),
            // Takes every worker's claims lock in turn, and so waits for each claim under way
            // (which may not have seen the pause) to end; claims hold it shared.
            hold_claims: format!(
                "SELECT count(*) FROM (SELECT pg_advisory_xact_lock({}, (id & 2147483647)::int4) \
                   FROM (SELECT id FROM {} ORDER BY id) AS w) AS held",
                table.claims_lock_key(),
                table.qualified_derived("workers"),
            ),
            resume: format!(
                "UPDATE {} SET paused_at = NULL WHERE q_name = $1 AND paused_at IS NOT NULL",
                table.qualified_derived("queues"),
            ),
            // Not a job that others wait for and has not ended (`Admin::delete` cancels it
            // first): deleted, it would leave them waiting.
            delete: format!(
                "DELETE FROM {t} WHERE id = $1 AND state <> 'running' \
                   AND NOT (COALESCE(releases, false) AND state IN ('queued', 'waiting'))"
            ),
            prune_batch,
            core,
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
    pub(crate) pq: Pq,
    /// Rendered on first use, once the table's schema is known.
    sql: std::sync::Arc<tokio::sync::OnceCell<Statements>>,
}

impl Pq {
    /// The admin handle of this table: counts, listing, re-queueing, cancelling, pruning.
    pub fn admin(&self) -> Admin {
        Admin {
            pq: self.clone(),
            sql: std::sync::Arc::default(),
        }
    }
}

impl Admin {
    async fn sql(&self) -> Result<&Statements> {
        let core = self.pq.statements().await?;
        Ok(self
            .sql
            .get_or_init(|| async { Statements::new(std::sync::Arc::clone(core)) })
            .await)
    }

    /// Every registered worker, by id: where it runs, what it works, how many jobs it is
    /// running, and whether its heartbeat holds. A worker that stopped is gone; one that died
    /// shows `alive: false` for a minute after its lease ran out, until a live worker reaps it.
    ///
    /// ```no_run
    /// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
    /// for worker in pq.admin().workers().await? {
    ///     println!("{} on {} (pid {}): {} running", worker.id, worker.host, worker.pid, worker.running);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn workers(&self) -> Result<Vec<crate::WorkerRow>> {
        self.pq.workers().await
    }

    /// Every recurring job's schedule, by name: its expression, time zone and policy, its next
    /// and last fire, whether it is paused, and whether it is orphaned (no running worker
    /// defines it any more).
    ///
    /// ```no_run
    /// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
    /// for schedule in pq.admin().schedules().await? {
    ///     println!("{} ({}): next at {}", schedule.name, schedule.expression, schedule.next_at);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn schedules(&self) -> Result<Vec<crate::ScheduleInfo>> {
        self.pq.schedules().await
    }

    /// Pauses schedule `name`: it writes no job until [`resume_schedule`](Admin::resume_schedule);
    /// the fires it misses meanwhile follow its `on_missed` policy once it resumes. `Some(false)`
    /// if it was paused already, `None` if there is no such schedule.
    pub async fn pause_schedule(&self, name: &str) -> Result<Option<bool>> {
        self.pq.pause_schedule(name, true).await
    }

    /// Resumes a paused schedule; `Some(false)` if it was not paused, `None` if there is none.
    pub async fn resume_schedule(&self, name: &str) -> Result<Option<bool>> {
        self.pq.pause_schedule(name, false).await
    }

    /// Writes a job of schedule `name` now, paused or not, beside its fire times (which it
    /// does not move); its id, or `None` if there is no such schedule.
    pub async fn trigger_schedule(&self, name: &str) -> Result<Option<JobId>> {
        self.pq.trigger_schedule(name).await
    }

    /// Deletes schedule `name`, an orphaned one say; whether there was one. A worker that still
    /// defines it declares it again.
    pub async fn delete_schedule(&self, name: &str) -> Result<bool> {
        self.pq.delete_schedule(name).await
    }

    /// Every queue of the table with its jobs counted by state and the age of its oldest ready
    /// job, by queue name. Reads the whole table, without blocking anyone.
    pub async fn stats(&self) -> Result<Vec<QueueStats>> {
        let sql = self.sql().await?;
        let rows = self
            .pq
            .with_connection("counting jobs", async |connection| {
                Ok(sql.core.query(&sql.stats).fetch_all(connection).await?)
            })
            .await?;
        let count = |row: &PgRow, i| -> Result<u64> {
            Ok(u64::try_from(row.try_get::<i64, _>(i)?).unwrap_or(0))
        };
        rows.iter()
            .map(|row| {
                // Shown as best it can be, should other SQL have written a name that is not
                // UTF-8: one queue's name must not hide every queue's counts.
                let queue = String::from_utf8_lossy(row.try_get_unchecked::<&[u8], _>(0)?);
                Ok(QueueStats {
                    queue: queue.into_owned(),
                    ready: count(row, 1)?,
                    scheduled: count(row, 2)?,
                    running: count(row, 3)?,
                    done: count(row, 4)?,
                    failed: count(row, 5)?,
                    cancelled: count(row, 6)?,
                    oldest_ready: seconds(row.try_get(7)?),
                    paused: row.try_get(8)?,
                    waiting: count(row, 9)?,
                })
            })
            .collect()
    }

    /// How long the oldest ready job of `queue` has been waiting, `None` if none is ready: how
    /// far behind its workers are. Two short reads of the dequeue index, cheap enough for a
    /// health check at any backlog: exact among the jobs without an `expected_at`, and among
    /// those with one (served by priority, not age) the oldest of the next 1,000 in line.
    pub async fn oldest_ready(&self, queue: &str) -> Result<Option<Duration>> {
        check_queue_name(queue)?;
        let sql = self.sql().await?;
        let age: Option<f64> = self
            .pq
            .with_connection("reading the oldest ready job", async |connection| {
                Ok(sql
                    .core
                    .query_scalar(&sql.oldest_ready)
                    .bind(queue)
                    .fetch_one(connection)
                    .await?)
            })
            .await?;
        Ok(seconds(age))
    }

    /// The ready jobs that no live worker can run, by queue and task: no worker working their
    /// queue registered their task (a worker claims only the jobs of its own tasks, so that
    /// during a rolling deploy a job of a task new or gone waits for a binary that knows it).
    /// Reads every ready job.
    ///
    /// ```no_run
    /// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
    /// for stuck in pq.admin().unrunnable().await? {
    ///     eprintln!("{} jobs of {:?} in {} wait for a worker", stuck.jobs, stuck.task, stuck.queue);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn unrunnable(&self) -> Result<Vec<Unrunnable>> {
        self.unrunnable_in(None, None).await
    }

    /// [`unrunnable`](Self::unrunnable) among the first `head` ready jobs of each of `queues`:
    /// a bounded read, for a worker's periodic look at its own queues.
    #[doc(hidden)]
    pub async fn unrunnable_in(
        &self,
        queues: Option<&[String]>,
        head: Option<u32>,
    ) -> Result<Vec<Unrunnable>> {
        let sql = self.sql().await?;
        let rows = self
            .pq
            .with_connection("looking for jobs no worker can run", async |connection| {
                Ok(sql
                    .core
                    .query(&sql.unrunnable)
                    .bind(queues)
                    .bind(head.map(i64::from))
                    .fetch_all(connection)
                    .await?)
            })
            .await?;
        rows.iter()
            .map(|row| {
                let text = |i| -> Result<Option<String>> {
                    let bytes: Option<&[u8]> = row.try_get_unchecked(i)?;
                    Ok(bytes.map(|bytes| String::from_utf8_lossy(bytes).into_owned()))
                };
                Ok(Unrunnable {
                    queue: text(0)?.unwrap_or_default(),
                    task: text(1)?,
                    jobs: u64::try_from(row.try_get::<i64, _>(2)?).unwrap_or(0),
                    oldest_ready: seconds(row.try_get(3)?),
                })
            })
            .collect()
    }

    /// The job of this id, `None` if there is none; [`Error::Unreadable`] if its row holds what
    /// pq cannot read (written by other SQL), with the reason.
    pub async fn job(&self, id: JobId) -> Result<Option<JobInfo>> {
        let sql = self.sql().await?;
        let row = self
            .pq
            .with_connection("reading a job", async |connection| {
                Ok(sql
                    .core
                    .query(&sql.job)
                    .bind(id.0)
                    .fetch_optional(connection)
                    .await?)
            })
            .await?;
        row.as_ref().map(JobInfo::from_row).transpose()
    }

    /// Up to `limit` jobs matching `filter` with ids above `after`, by id; a job whose row pq
    /// cannot read is reported in [`Page::unreadable`] instead. Pages are keyed on the id, not
    /// counted with `OFFSET`, so each page costs the same however deep it is:
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
        let sql = self.sql().await?;
        let mut query = QueryBuilder::<Postgres>::new(&sql.list);
        query.push_bind(after.map_or(0, |id| id.0));
        filter.push_conditions(&mut query);
        query
            .push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(limit));
        let rows = self
            .pq
            .with_connection("listing jobs", async |connection| {
                Ok(query
                    .build()
                    .persistent(sql.core.prepared)
                    .fetch_all(connection)
                    .await?)
            })
            .await?;
        let mut page = Page {
            jobs: Vec::with_capacity(rows.len()),
            unreadable: Vec::new(),
            next_after: None,
        };
        let mut last = None;
        for row in &rows {
            last = Some(JobId(row.try_get::<i64, _>("id")?));
            match JobInfo::from_row(row) {
                Ok(job) => page.jobs.push(job),
                Err(Error::Unreadable { id, reason }) => page.unreadable.push((JobId(id), reason)),
                Err(error) => return Err(error),
            }
        }
        if rows.len() == limit as usize {
            page.next_after = last;
        }
        Ok(page)
    }

    /// Queues the failed job `id` again, ready at once (behind the jobs ready before it);
    /// `false` if there is no failed job of this id. It starts over: its attempts, rescues and
    /// snoozes are reset, so its task's retries apply again, while its `last_error` and `errors` history
    /// are kept.
    pub async fn retry(&self, id: JobId) -> Result<bool> {
        let sql = self.sql().await?;
        let query = sql.core.query(&sql.retry_one).bind(&sql.channel).bind(id.0);
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
        let sql = self.sql().await?;
        let query = sql
            .core
            .query(&sql.retry_batch)
            .bind(&sql.channel)
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
        in_batches(|after| self.retry_failed_batch(filter, after, DEFAULT_BATCH_SIZE)).await
    }

    /// Runs a re-queue statement (`$1` the channel, bound here first by the caller): how many
    /// jobs it moved and the highest id among them.
    async fn requeue(
        &self,
        query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<(u64, Option<JobId>)> {
        let row = self
            .pq
            .with_connection("re-queueing jobs", async |connection| {
                Ok(query.fetch_one(connection).await?)
            })
            .await?;
        let count: i64 = row.try_get(0)?;
        let last: Option<i64> = row.try_get(1)?;
        Ok((u64::try_from(count).unwrap_or(0), last.map(JobId)))
    }

    /// Cancels a job that has not ended: it stays in the table, `cancelled`, and never runs
    /// again. A waiting, ready or scheduled job is cancelled at once (its children then settle
    /// as their policy for a cancelled parent says). A running job is cancelled by its
    /// worker, which hears of it at its next heartbeat (within a third of its lease, 10 s by
    /// default): the run is told through `ctx.cancelled()` (its `TaskContext`), or stopped at once for a
    /// task with `on_cancel = "abort"`; either way its transaction is rolled back and it is
    /// not retried. A run that ends before its worker hears of it, or that succeeds without
    /// looking, ends as it would have; one cut short by its worker's shutdown, or lost with
    /// its worker, ends cancelled.
    /// `false` if no queued or running job has this id.
    pub async fn cancel(&self, id: JobId) -> Result<bool> {
        self.one_job("cancelling a job", |sql| &sql.cancel, id)
            .await
    }

    /// Cancels, like [`cancel`](Admin::cancel), up to `limit` jobs matching `filter` that have
    /// not ended, with ids above `after`: `count` says how many were cancelled or asked of
    /// their workers. A filter on a state that has ended matches nothing. Call it again from
    /// the returned [`Batch::last`] until that is `None`, or use
    /// [`cancel_matching`](Admin::cancel_matching).
    pub async fn cancel_batch(
        &self,
        filter: &JobFilter,
        after: Option<JobId>,
        limit: u32,
    ) -> Result<Batch> {
        filter.check()?;
        if filter.state.is_some_and(|state| {
            !matches!(
                state,
                JobState::Ready | JobState::Scheduled | JobState::Running
            )
        }) {
            return Ok(Batch {
                count: 0,
                last: None,
            });
        }
        let sql = self.sql().await?;
        let (head, tail) = &sql.cancel_batch;
        let mut query = QueryBuilder::<Postgres>::new(head);
        query.push_bind(after.map_or(0, |id| id.0));
        filter.push_conditions(&mut query);
        query
            .push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(limit))
            .push(tail);
        let row = self
            .pq
            .with_connection("cancelling jobs", async |connection| {
                Ok(query
                    .build()
                    .persistent(sql.core.prepared)
                    .fetch_one(connection)
                    .await?)
            })
            .await?;
        let count: i64 = row.try_get(0)?;
        let last: Option<i64> = row.try_get(1)?;
        Ok(Batch {
            count: u64::try_from(count).unwrap_or(0),
            last: last.map(JobId),
        })
    }

    /// Cancels every job matching `filter` that has not ended, in batches of
    /// [`DEFAULT_BATCH_SIZE`]; returns how many were cancelled or asked of their workers.
    ///
    /// ```no_run
    /// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
    /// let stopped = pq.admin().cancel_matching(&pq::JobFilter::new().queue("mail")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn cancel_matching(&self, filter: &JobFilter) -> Result<u64> {
        in_batches(|after| self.cancel_batch(filter, after, DEFAULT_BATCH_SIZE)).await
    }

    /// Pauses `queue`: once this returns, no worker takes a job of it, until
    /// [`resume`](Admin::resume). Runs already going finish; jobs are still enqueued, and wait.
    /// The pause is in the table: it holds across restarts, for every worker, and shows in
    /// [`stats`](Admin::stats). `get` and `try_get` are not workers and still take its jobs.
    /// `false` if it was paused already. A queue may be paused before it has jobs.
    ///
    /// ```no_run
    /// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
    /// pq.admin().pause("mail").await?;
    /// // ...no mail job starts here, on any worker...
    /// pq.admin().resume("mail").await?;
    /// # Ok(()) }
    /// ```
    pub async fn pause(&self, queue: &str) -> Result<bool> {
        crate::job::check_queue_name(queue)?;
        let sql = self.sql().await?;
        let paused: bool = self
            .pq
            .with_connection("pausing a queue", async |connection| {
                Ok(sql
                    .core
                    .query_scalar(&sql.pause)
                    .bind(queue)
                    .fetch_one(connection)
                    .await?)
            })
            .await?;
        // Committed: claims from now on see it. Those already under way may not have; they
        // end before this does.
        self.hold_claims().await?;
        Ok(paused)
    }

    /// Waits for every claim under way to end: those that start after see what was committed
    /// before.
    pub(crate) async fn hold_claims(&self) -> Result<()> {
        let sql = self.sql().await?;
        self.pq
            .with_connection("waiting for the claims under way", async |connection| {
                sql.core.query(&sql.hold_claims).execute(connection).await?;
                Ok(())
            })
            .await
    }

    /// Its handle on the table.
    pub(crate) fn pq(&self) -> &Pq {
        &self.pq
    }

    /// Resumes a paused `queue`, waking its workers; `false` if it was not paused.
    pub async fn resume(&self, queue: &str) -> Result<bool> {
        crate::job::check_queue_name(queue)?;
        let sql = self.sql().await?;
        let resumed = self
            .pq
            .with_connection("resuming a queue", async |connection| {
                Ok(sql
                    .core
                    .query(&sql.resume)
                    .bind(queue)
                    .execute(&mut *connection)
                    .await?
                    .rows_affected())
            })
            .await?;
        if resumed == 0 {
            return Ok(false);
        }
        self.pq.wake(vec![queue.to_owned()]).await?;
        Ok(true)
    }

    /// Makes the scheduled jobs matching `filter` ready now, retries waiting for their delay
    /// included, and wakes their workers; returns how many, in one statement. In a test,
    /// to run at once what would run later; for an operator, to run a delayed job now.
    ///
    /// ```no_run
    /// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
    /// pq.admin().schedule_now(&pq::JobFilter::new().queue("mail")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn schedule_now(&self, filter: &JobFilter) -> Result<u64> {
        filter.check()?;
        let sql = self.sql().await?;
        let mut query = QueryBuilder::<Postgres>::new(&sql.schedule_now);
        filter.push_conditions(&mut query);
        self.make_ready(sql, query).await
    }

    /// Makes job `id` ready now, as [`schedule_now`](Admin::schedule_now) does; `false` if it
    /// is not scheduled.
    pub async fn schedule_job_now(&self, id: JobId) -> Result<bool> {
        let sql = self.sql().await?;
        let mut query = QueryBuilder::<Postgres>::new(&sql.schedule_now);
        query.push(" AND id = ").push_bind(id.0);
        Ok(self.make_ready(sql, query).await? == 1)
    }

    async fn make_ready(
        &self,
        sql: &Statements,
        mut query: QueryBuilder<'_, Postgres>,
    ) -> Result<u64> {
        query.push(" RETURNING q_name");
        let queues: Vec<String> = self
            .pq
            .with_connection("scheduling jobs now", async |connection| {
                let rows = query
                    .build_query_scalar()
                    .persistent(sql.core.prepared)
                    .fetch_all(connection)
                    .await?;
                Ok(rows)
            })
            .await?;
        let count = queues.len() as u64;
        self.pq.wake(queues).await?;
        Ok(count)
    }

    /// The waiting jobs (ready or scheduled) with `job`'s queue, task and arguments, by id: in
    /// a test, what a call enqueued (see `pq::testing::enqueued`).
    pub async fn waiting_like(&self, job: &crate::NewJob) -> Result<Vec<JobId>> {
        let sql = self.sql().await?;
        let ids: Vec<i64> = self
            .pq
            .with_connection("finding jobs", async |connection| {
                Ok(sql
                    .core
                    .query_scalar(&sql.waiting_like)
                    .bind(&job.queue)
                    .bind(job.task.as_deref())
                    .bind(&job.data)
                    .fetch_all(connection)
                    .await?)
            })
            .await?;
        Ok(ids.into_iter().map(JobId).collect())
    }

    /// Deletes a job that is not running; `false` if there is no such job. A job that others
    /// wait for is cancelled first, so that they settle as their policy says.
    pub async fn delete(&self, id: JobId) -> Result<bool> {
        let sql = self.sql().await?;
        let deleted = self
            .pq
            .with_connection("deleting a job", async |connection| {
                // Committed before the delete: its children settle at that commit, by its row.
                sql.core
                    .query(&sql.core.cancel_parent)
                    .bind(id.0)
                    .execute(&mut *connection)
                    .await?;
                let done = sql
                    .core
                    .query(&sql.delete)
                    .bind(id.0)
                    .execute(connection)
                    .await?;
                Ok(done.rows_affected())
            })
            .await?;
        Ok(deleted == 1)
    }

    async fn one_job(
        &self,
        what: &'static str,
        statement: fn(&Statements) -> &String,
        id: JobId,
    ) -> Result<bool> {
        let sql = self.sql().await?;
        let done = self
            .pq
            .with_connection(what, async |connection| {
                Ok(sql
                    .core
                    .query(statement(sql))
                    .bind(id.0)
                    .execute(connection)
                    .await?)
            })
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes up to `limit` done, failed or cancelled jobs that finished more than
    /// `older_than` ago, oldest first; returns how many. Call it until it returns 0, or use
    /// [`prune`](Admin::prune).
    pub async fn prune_batch(&self, older_than: Duration, limit: u32) -> Result<u64> {
        let older_than = prune_age(older_than)?;
        let sql = self.sql().await?;
        let done = self
            .pq
            .with_connection("pruning jobs", async |connection| {
                Ok(sql
                    .core
                    .query(&sql.prune_batch)
                    .bind(older_than)
                    .bind(i64::from(limit))
                    .execute(connection)
                    .await?)
            })
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

/// Runs `batch` from the start of the table (`None`), then from where each batch ended, until
/// one finds nothing: how many jobs the batches moved.
async fn in_batches<F, Fut>(mut batch: F) -> Result<u64>
where
    F: FnMut(Option<JobId>) -> Fut,
    Fut: std::future::Future<Output = Result<Batch>>,
{
    let (mut total, mut after) = (0, None);
    loop {
        let Batch { count, last } = batch(after).await?;
        total += count;
        match last {
            Some(last) => after = Some(last),
            None => return Ok(total),
        }
    }
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
        assert!(
            err.contains("expected one of waiting, ready, scheduled"),
            "{err}"
        );
    }

    #[test]
    fn absurd_prune_ages_are_refused() {
        assert!(prune_age(Duration::from_secs(7 * 24 * 3600)).is_ok());
        let err = prune_age(Duration::MAX).unwrap_err().to_string();
        assert!(err.contains("at most 100 years"), "{err}");
    }
}
