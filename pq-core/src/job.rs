//! Jobs: [`JobId`], a [`Job`] as handed out, and a [`NewJob`] about to be written.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};

use std::time::Duration;

use crate::error::{Error, Result};
use crate::lease::Claim;
use crate::sql::Statements;
use crate::timestamp::Timestamp;
use crate::when::When;

/// A job's id: the primary key of its row, unique across all queues of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<i64> for JobId {
    fn from(id: i64) -> Self {
        JobId(id)
    }
}

impl From<JobId> for i64 {
    fn from(id: JobId) -> Self {
        id.0
    }
}

/// A job handed out by [`get`](crate::Queue::get) or claimed by a worker.
///
/// Its `Display` reads like the original pq's:
/// `<pq.Job id=77709 size=1 enqueued_at="2014-02-21T16:22:06Z" schedule_at=None expected_at=None>`.
#[derive(Clone)]
pub struct Job {
    id: JobId,
    queue: Arc<str>,
    task: Option<Arc<str>>,
    data: String,
    attempts: u32,
    enqueued_at: DateTime<Utc>,
    schedule_at: Option<DateTime<Utc>>,
    expected_at: Option<DateTime<Utc>>,
    taken: Taken,
    /// What pq carries with it beside its data (see [`NewJob::meta`]), as JSON text.
    meta: Option<Box<str>>,
    sql: Arc<Statements>,
}

/// How a job was taken.
#[derive(Clone, Copy)]
enum Taken {
    /// By a `get`, at this time (its `dequeued_at`, which fences giving it back).
    Got(Timestamp),
    /// By a worker's claim.
    Claimed(ClaimInfo),
}

/// What a worker's claim knows of its job beyond the job itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimInfo {
    pub claim: Claim,
    pub rescues: u32,
    pub timeout: Option<Duration>,
}

/// The parts of a claimed job, as the claim decodes them.
pub(crate) struct ClaimedParts {
    pub id: JobId,
    pub queue: Arc<str>,
    pub task: Option<Arc<str>>,
    pub data: String,
    pub attempts: u32,
    pub rescues: u32,
    pub enqueued_at: DateTime<Utc>,
    pub schedule_at: Option<DateTime<Utc>>,
    pub expected_at: Option<DateTime<Utc>>,
    pub timeout: Option<Duration>,
    pub meta: Option<Box<str>>,
    pub claim: Claim,
    pub sql: Arc<Statements>,
}

impl Job {
    pub(crate) fn claimed(parts: ClaimedParts) -> Self {
        Self {
            id: parts.id,
            queue: parts.queue,
            task: parts.task,
            data: parts.data,
            attempts: parts.attempts,
            enqueued_at: parts.enqueued_at,
            schedule_at: parts.schedule_at,
            expected_at: parts.expected_at,
            taken: Taken::Claimed(ClaimInfo {
                claim: parts.claim,
                rescues: parts.rescues,
                timeout: parts.timeout,
            }),
            meta: parts.meta,
            sql: parts.sql,
        }
    }

    /// Decodes a job a `get` took, by position, in the order `job_columns` in `sql.rs` selects
    /// the columns. A row that other SQL wrote with what pq cannot read is `Unreadable`, with
    /// the reason, never a panic.
    pub(crate) fn got(row: &PgRow, sql: &Arc<Statements>) -> Result<Self> {
        let id: i64 = row.try_get_unchecked(0)?;
        let unreadable = |reason: String| Error::Unreadable { id, reason };
        let text = |i: usize, column: &str| -> Result<Option<String>> {
            match row.try_get_unchecked::<Option<&[u8]>, _>(i)? {
                None => Ok(None),
                Some(bytes) => String::from_utf8(bytes.to_vec())
                    .map(Some)
                    .map_err(|_| unreadable(format!("its {column} is not valid UTF-8 text"))),
            }
        };
        let time = |i: usize| -> Result<Option<Timestamp>> { Ok(row.try_get_unchecked(i)?) };
        let enqueued_at = time(5)?.unwrap_or(Timestamp::NEG_INFINITY);
        Ok(Self {
            id: JobId(id),
            queue: Arc::from(text(1, "queue")?.unwrap_or_default()),
            task: text(2, "task")?.map(Arc::from),
            data: text(3, "data")?.unwrap_or_default(),
            attempts: u32::try_from(row.try_get_unchecked::<i32, _>(4)?).unwrap_or(0),
            enqueued_at: enqueued_at.required("enqueued_at").map_err(unreadable)?,
            schedule_at: match time(6)? {
                Some(at) => at.finite("schedule_at").map_err(unreadable)?,
                None => None,
            },
            expected_at: match time(7)? {
                Some(at) => at.finite("expected_at").map_err(unreadable)?,
                None => None,
            },
            taken: Taken::Got(time(8)?.unwrap_or(Timestamp::NEG_INFINITY)),
            meta: None,
            sql: Arc::clone(sql),
        })
    }

    pub(crate) fn claimed_info(&self) -> Option<&ClaimInfo> {
        match &self.taken {
            Taken::Claimed(info) => Some(info),
            Taken::Got(_) => None,
        }
    }

    /// When a `get` took this job, to give it back if it cannot be handed over.
    pub(crate) fn got_at(&self) -> Option<Timestamp> {
        match self.taken {
            Taken::Got(at) => Some(at),
            Taken::Claimed(_) => None,
        }
    }

    /// How many of its runs were lost with their worker (crashed, frozen, cut off) before this
    /// one, for a job a worker claimed. These do not count against its task's retries.
    pub fn rescues(&self) -> u32 {
        self.claimed_info().map_or(0, |info| info.rescues)
    }

    /// The time limit its enqueuer set on each of its runs, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.claimed_info().and_then(|info| info.timeout)
    }

    /// What pq carries with the job beside its data, as the JSON text of an object (see
    /// [`NewJob::meta`]): `None` for a plain job, and for a job taken by a `get`.
    pub fn meta(&self) -> Option<&str> {
        self.meta.as_deref()
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The queue it came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The queue it came from, as a string the jobs of one claim share: cloning it allocates
    /// nothing.
    pub fn shared_queue(&self) -> Arc<str> {
        Arc::clone(&self.queue)
    }

    /// The task it runs, for jobs written by a `#[pq::task]` call.
    pub fn task(&self) -> Option<&str> {
        self.task.as_deref()
    }

    /// Its data decoded into `T`.
    ///
    /// ```no_run
    /// # async fn example(queue: pq::Queue) -> Result<(), pq::Error> {
    /// #[derive(serde::Deserialize)]
    /// struct Apple { kind: String }
    ///
    /// if let Some(job) = queue.get().await? {
    ///     let apple: Apple = job.data()?;
    ///     println!("umm, {} apples taste good", apple.kind);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn data<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.data).map_err(|error| Error::Decode {
            id: self.id.0,
            error,
        })
    }

    /// Its data as stored: the JSON text, byte for byte.
    pub fn raw_data(&self) -> &str {
        &self.data
    }

    /// Its data as a JSON value.
    pub fn json(&self) -> Result<serde_json::Value> {
        self.data()
    }

    /// The size of its data in bytes.
    pub fn size(&self) -> usize {
        self.data.len()
    }

    /// How many times it was handed to a worker, this time included (0 for plain `get`s).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When it was enqueued.
    pub fn enqueued_at(&self) -> DateTime<Utc> {
        self.enqueued_at
    }

    /// When it became ready, if it was scheduled.
    pub fn schedule_at(&self) -> Option<DateTime<Utc>> {
        self.schedule_at
    }

    /// Its priority: the time it was expected to be done by.
    pub fn expected_at(&self) -> Option<DateTime<Utc>> {
        self.expected_at
    }

    /// Replaces the job's data, in its row and in this value. Runs on `executor`: the pool, or
    /// the transaction the job was taken in.
    ///
    /// ```no_run
    /// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
    /// let queue = pq.queue("apples");
    /// if let Some(mut job) = queue.get().await? {
    ///     job.update(pq.pool(), &serde_json::json!({"kind": "Cox", "eaten": true})).await?;
    ///     assert_eq!(job.size(), job.raw_data().len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn update<'e, T: Serialize + ?Sized>(
        &mut self,
        executor: impl PgExecutor<'e>,
        data: &T,
    ) -> Result<()> {
        let data = serde_json::to_string(data).map_err(Error::Encode)?;
        self.sql
            .query(&self.sql.update_data)
            .bind(self.id.0)
            .bind(&data)
            .execute(executor)
            .await?;
        self.data = data;
        Ok(())
    }
}

fn fmt_time(f: &mut fmt::Formatter<'_>, name: &str, time: Option<DateTime<Utc>>) -> fmt::Result {
    match time {
        Some(time) => write!(
            f,
            " {name}=\"{}\"",
            time.to_rfc3339_opts(SecondsFormat::Secs, true)
        ),
        None => write!(f, " {name}=None"),
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<pq.Job id={} size={}", self.id, self.size())?;
        fmt_time(f, "enqueued_at", Some(self.enqueued_at))?;
        fmt_time(f, "schedule_at", self.schedule_at)?;
        fmt_time(f, "expected_at", self.expected_at)?;
        f.write_str(">")
    }
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("queue", &self.queue)
            .field("task", &self.task)
            .field("data", &self.data)
            .field("attempts", &self.attempts)
            .field("enqueued_at", &self.enqueued_at)
            .field("schedule_at", &self.schedule_at)
            .field("expected_at", &self.expected_at)
            .field("claim", &self.claimed_info().map(|info| info.claim))
            .finish()
    }
}

/// The queue and task names of the jobs decoded last: the jobs of a claim mostly share them,
/// and so share one copy of each.
#[derive(Default)]
pub(crate) struct Names {
    queue: Name,
    task: Name,
}

impl Names {
    pub(crate) fn queue(&mut self, name: &str) -> Arc<str> {
        self.queue.share(name)
    }

    pub(crate) fn task(&mut self, name: &str) -> Arc<str> {
        self.task.share(name)
    }
}

#[derive(Default)]
struct Name(Option<Arc<str>>);

impl Name {
    fn share(&mut self, name: &str) -> Arc<str> {
        match &self.0 {
            Some(last) if **last == *name => Arc::clone(last),
            _ => Arc::clone(self.0.insert(Arc::from(name))),
        }
    }
}

/// A job about to be written: its queue, data and times. [`Put`](crate::Put) and task calls build
/// one; [`Enqueue`](crate::Enqueue) writes it.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub(crate) queue: String,
    pub(crate) task: Option<String>,
    pub(crate) data: String,
    pub(crate) schedule_at: Option<When>,
    pub(crate) expected_at: Option<When>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) meta: Option<serde_json::Map<String, serde_json::Value>>,
    pub(crate) unique: Option<(String, OnConflict)>,
}

/// What a unique job's enqueue does when a job with its key is already waiting (queued or
/// scheduled): see [`NewJob::unique_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// The waiting job stays as it is; the call is answered with its id.
    Skip,
    /// The waiting job takes the call's arguments, queue, times and timeout.
    Replace,
    /// A trailing debounce: the job runs `delay` after the latest call, with its arguments,
    /// but never later than `max` after the first call that is still waiting (unbounded when
    /// `None`).
    Debounce {
        /// How long after the latest call the job runs.
        delay: Duration,
        /// How long after the first call it runs at the latest.
        max: Option<Duration>,
    },
}

impl OnConflict {
    /// The code `put_unique` (pq-core/src/sql.rs) takes, and the bound of a debounce.
    pub(crate) fn code(self) -> (i32, Option<i64>) {
        match self {
            OnConflict::Skip => (0, None),
            OnConflict::Replace => (1, None),
            OnConflict::Debounce { max, .. } => (2, max.map(crate::lease::micros)),
        }
    }
}

/// What an enqueue did: wrote a new job, or met a job that was already waiting with the same
/// unique key (which it then kept, replaced or debounced, as its [`OnConflict`] says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Enqueued {
    /// A new job, with this id.
    New(JobId),
    /// The job that was waiting with the same key, with this id.
    Duplicate(JobId),
}

impl Enqueued {
    /// The job's id, new or waiting.
    pub fn id(self) -> JobId {
        match self {
            Enqueued::New(id) | Enqueued::Duplicate(id) => id,
        }
    }

    /// Whether a job with the same key was waiting already.
    pub fn is_duplicate(self) -> bool {
        matches!(self, Enqueued::Duplicate(_))
    }
}

impl NewJob {
    /// A job on `queue` whose data is `data` encoded as JSON.
    pub fn new<T: Serialize + ?Sized>(queue: &str, data: &T) -> Result<Self> {
        Self::from_json(queue, serde_json::to_string(data).map_err(Error::Encode)?)
    }

    /// A job on `queue` whose data is this JSON text, stored as it is (the database checks
    /// that it is JSON).
    pub fn from_json(queue: &str, json: String) -> Result<Self> {
        check_queue_name(queue)?;
        Ok(Self {
            queue: queue.to_owned(),
            task: None,
            data: json,
            schedule_at: None,
            expected_at: None,
            timeout: None,
            meta: None,
            unique: None,
        })
    }

    /// Names the task that runs this job.
    pub fn task(mut self, task: &str) -> Self {
        self.task = Some(task.to_owned());
        self
    }

    /// Not handed out before this time.
    pub fn schedule_at(mut self, when: When) -> Self {
        self.schedule_at = Some(when);
        self
    }

    /// Handed out before jobs expected later, and before all jobs with no expectation.
    pub fn expected_at(mut self, when: When) -> Self {
        self.expected_at = Some(when);
        self
    }

    /// Each run may take at most this long: a worker stops it then and records the failure.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Carries `value` under `key` with the job, beside its data: in the `meta` column, a JSON
    /// object, which a worker's claim returns with the job ([`Job::meta`]). pq keeps its own
    /// keys there (the enqueuer's `traceparent`, with the `otel` feature); a plain job has none,
    /// and its row stores NULL.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.meta
            .get_or_insert_with(serde_json::Map::new)
            .insert(key.into(), value.into());
        self
    }

    /// Puts the job under its task's flow policy with this key (a per-key limit, a sequence):
    /// the jobs of one key count against one limit, or run one at a time in enqueue order. A
    /// task with a policy sets it itself (`#[pq::task(limit_key = [..])]`, `sequence = [..]`);
    /// the key is JSON `[task, values...]`. A job with a flow key is claimed only from a
    /// limited queue (see [`Admin::limit`](crate::Admin::limit)); it travels in the job's
    /// meta, as `pq.flow`. A key of over 1,000 bytes is stored as its MD5 digest.
    pub fn flow_key(self, key: impl Into<String>) -> Self {
        self.meta("pq.flow", key.into())
    }

    /// Makes the job unique by `key` among waiting jobs (queued or scheduled, not running): if
    /// one with the same key waits already, the enqueue meets it as `on_conflict` says, and
    /// answers [`Enqueued::Duplicate`] with its id. PostgreSQL enforces it (a unique index), so
    /// it holds across processes and inside transactions. A job gives up its key once a worker
    /// claims it: a job may wait while another with its key runs, and a job that returns to
    /// the queue (a retry, a rescue, a release, an operator's retry) waits without its key, so
    /// it is never refused. A debounce sets the job's `schedule_at` itself. A key of over 1,000
    /// bytes is stored as its MD5 digest; one with a NUL character is refused
    /// ([`Error::InvalidUniqueKey`]). A lock on the waiting job is held from the enqueue until
    /// its transaction ends, so a duplicate enqueued in a long transaction holds that job back
    /// from workers meanwhile.
    pub fn unique_key(mut self, key: impl Into<String>, on_conflict: OnConflict) -> Self {
        self.unique = Some((key.into(), on_conflict));
        self
    }

    /// When the job may run: a debounced job `delay` from now, whatever its `schedule_at`.
    pub(crate) fn scheduled(&self) -> Option<When> {
        match self.unique {
            Some((_, OnConflict::Debounce { delay, max })) => {
                Some(When::In(max.map_or(delay, |max| delay.min(max))))
            }
            _ => self.schedule_at,
        }
    }

    /// The meta object as JSON text, to bind; `None` for a plain job.
    pub(crate) fn meta_json(&self) -> Option<String> {
        self.meta.as_ref().map(|meta| {
            serde_json::to_string(meta).expect("a map of JSON values always serialises")
        })
    }
}

impl NewJob {
    /// Refuses what the database would choke on: delays beyond [`crate::when::MAX_DELAY`].
    pub(crate) fn check(&self) -> Result<()> {
        for when in [self.scheduled(), self.expected_at].into_iter().flatten() {
            when.checked()?;
        }
        if let Some((key, _)) = &self.unique {
            if key.contains('\0') {
                return Err(Error::InvalidUniqueKey {
                    key: key.chars().take(100).collect(),
                    reason: "it contains a NUL character, which PostgreSQL's text cannot hold",
                });
            }
        }
        Ok(())
    }
}

/// Any non-empty name that PostgreSQL's `text` can hold.
pub(crate) fn check_queue_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.contains('\0') {
        "it contains a NUL character"
    } else {
        return Ok(());
    };
    Err(Error::InvalidQueueName {
        name: name.chars().take(100).collect(),
        reason,
    })
}
