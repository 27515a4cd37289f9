//! [`Queue`]: put jobs in, get them out, count and clear.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, Row};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::job::{check_queue_name, Job, JobId, NewJob};
use crate::pq::Pq;
use crate::sql::Statements;
use crate::transaction::Transaction;
use crate::when::{IntoWhen, When};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One named queue of a [`Pq`] table: a cheap handle, made by [`Pq::queue`].
///
/// ```no_run
/// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
/// let queue = pq.queue("apples");
/// queue.put(&serde_json::json!({"kind": "Cox"})).await?;
/// queue.put(&serde_json::json!({"kind": "Arthur Turner"})).schedule_at("5m").await?;
/// queue.put(&serde_json::json!({"kind": "Golden Delicious"})).expected_at("1m").await?;
///
/// while let Some(job) = queue.get().await? {
///     println!("{job}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Queue {
    pq: Pq,
    name: Arc<str>,
    timeout: Duration,
}

impl Queue {
    pub(crate) fn new(pq: Pq, name: &str, timeout: Duration) -> Self {
        Self {
            pq,
            name: name.into(),
            timeout,
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The table handle this queue belongs to.
    pub fn pq(&self) -> &Pq {
        &self.pq
    }

    /// This queue with another default timeout for blocking [`get`](Queue::get)s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Puts `data` (anything serde can write as JSON) on the queue; await the returned [`Put`]
    /// for the new job's id, after setting `schedule_at`/`expected_at` if wanted, or run it on
    /// an executor of your own with [`Put::execute`].
    pub fn put<T: Serialize + ?Sized>(&self, data: &T) -> Put<'_> {
        Put::new(
            self.pq.sql(),
            Target::Pq(&self.pq),
            NewJob::new(&self.name, data),
        )
    }

    /// Puts every item of `items` in one statement and one round trip; await it for their ids,
    /// in order.
    ///
    /// ```no_run
    /// # async fn example(queue: pq::Queue) -> Result<(), pq::Error> {
    /// let ids = queue.put_many(&[1, 2, 3]).schedule_at("1m").await?;
    /// assert_eq!(ids.len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn put_many<'a, T, I>(&'a self, items: I) -> PutMany<'a>
    where
        T: Serialize + 'a,
        I: IntoIterator<Item = &'a T>,
    {
        let data = check_queue_name(&self.name).and_then(|()| {
            items
                .into_iter()
                .map(|item| serde_json::to_string(item).map_err(Error::Encode))
                .collect()
        });
        PutMany {
            sql: self.pq.sql(),
            target: Target::Pq(&self.pq),
            queue: &self.name,
            data,
            schedule_at: None,
            expected_at: None,
        }
    }

    /// Takes the next ready job, waiting up to the queue's timeout (1 s by default) for one to
    /// be put or to become due; `None` if none came. The job is marked taken when this returns.
    pub async fn get(&self) -> Result<Option<Job>> {
        self.get_timeout(self.timeout).await
    }

    /// Like [`get`](Queue::get), waiting up to `timeout`.
    pub async fn get_timeout(&self, timeout: Duration) -> Result<Option<Job>> {
        wait_for_job(self, None, timeout).await
    }

    /// Takes the next ready job if there is one, without waiting.
    pub async fn try_get(&self) -> Result<Option<Job>> {
        check_queue_name(&self.name)?;
        self.pq
            .with_connection(async |connection| take(self.pq.sql(), connection, &self.name).await)
            .await
    }

    /// The jobs of this queue as an endless stream: it waits while the queue is empty, and
    /// ends only when an error is yielded and the stream is dropped.
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// # async fn example(queue: pq::Queue) -> Result<(), pq::Error> {
    /// let mut jobs = std::pin::pin!(queue.stream());
    /// while let Some(job) = jobs.next().await {
    ///     println!("{}", job?);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stream(&self) -> impl Stream<Item = Result<Job>> + Send + 'static {
        futures_util::stream::unfold(self.clone(), |queue| async move {
            loop {
                match queue.get().await {
                    Ok(Some(job)) => return Some((Ok(job), queue)),
                    Ok(None) => continue,
                    Err(e) => return Some((Err(e), queue)),
                }
            }
        })
    }

    /// How many jobs are ready now (scheduled ones count once due).
    pub async fn len(&self) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(&self.pq.sql().len)
            .bind(&*self.name)
            .fetch_one(self.pq.pool())
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Whether no job is ready now.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// Removes every job of this queue, whatever its state; returns how many.
    pub async fn clear(&self) -> Result<u64> {
        let done = sqlx::query(&self.pq.sql().clear)
            .bind(&*self.name)
            .execute(self.pq.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Starts a transaction on this queue: jobs taken in it return to the queue, and jobs put
    /// in it vanish, unless it commits.
    pub async fn begin(&self) -> Result<Transaction> {
        Transaction::begin(self.clone()).await
    }
}

/// Takes one ready job on `executor`, marking it taken.
pub(crate) async fn take<'e>(
    sql: &Arc<Statements>,
    executor: impl PgExecutor<'e>,
    queue: &str,
) -> Result<Option<Job>> {
    let row = sqlx::query(&sql.get)
        .bind(queue)
        .fetch_optional(executor)
        .await?;
    row.map(|row| Job::from_row(&row, sql)).transpose()
}

/// Seconds until the queue's earliest scheduled job is due, if it has one.
async fn seconds_to_next_due<'e>(
    sql: &Statements,
    executor: impl PgExecutor<'e>,
    queue: &str,
) -> Result<Option<f64>> {
    let seconds: Option<f64> = sqlx::query_scalar(&sql.next_due)
        .bind(queue)
        .fetch_one(executor)
        .await?;
    Ok(seconds)
}

/// The blocking get: take a job, or wait for a notification, the earliest scheduled job, or
/// the timeout, whichever comes first. On `connection` when inside a transaction; otherwise on
/// a connection of pq's own, held only while it looks.
pub(crate) async fn wait_for_job(
    queue: &Queue,
    mut connection: Option<&mut PgConnection>,
    timeout: Duration,
) -> Result<Option<Job>> {
    check_queue_name(&queue.name)?;
    let deadline = Instant::now() + timeout;
    let wake = queue.pq.listener().subscribe(&queue.name).await?;
    loop {
        // Registered before looking, so a job put between the look and the wait still wakes us.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let looked = match connection.as_deref_mut() {
            Some(conn) => look(queue, conn, deadline).await?,
            None => {
                queue
                    .pq
                    .with_connection(async |conn| look(queue, conn, deadline).await)
                    .await?
            }
        };
        let next_due = match looked {
            Look::Found(job) => return Ok(Some(job)),
            Look::TimedOut => return Ok(None),
            Look::Wait { next_due } => next_due,
        };
        let mut wait = deadline.saturating_duration_since(Instant::now());
        if let Some(seconds) = next_due {
            wait = wait.min(Duration::from_secs_f64(seconds.max(0.0)));
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// What one look of a blocking get found.
enum Look {
    Found(Job),
    TimedOut,
    /// Nothing: wait, at most this many seconds if a scheduled job is due then.
    Wait {
        next_due: Option<f64>,
    },
}

async fn look(queue: &Queue, conn: &mut PgConnection, deadline: Instant) -> Result<Look> {
    let sql = queue.pq.sql();
    if let Some(job) = take(sql, &mut *conn, &queue.name).await? {
        return Ok(Look::Found(job));
    }
    if Instant::now() >= deadline {
        return Ok(Look::TimedOut);
    }
    let next_due = seconds_to_next_due(sql, &mut *conn, &queue.name).await?;
    // Registered as waiting now, so every later put notifies; a put that committed before
    // did not, and this look finds it.
    if let Some(job) = take(sql, &mut *conn, &queue.name).await? {
        return Ok(Look::Found(job));
    }
    Ok(Look::Wait { next_due })
}

/// A job being put: set its times, then await it (on the queue's pool) or
/// [`execute`](Put::execute) it on an executor of yours.
#[must_use = "nothing is put until the Put is awaited or executed"]
pub struct Put<'a> {
    sql: &'a Arc<Statements>,
    target: Target<'a>,
    job: Result<NewJob>,
}

/// Where an awaited [`Put`] or [`PutMany`] runs.
pub(crate) enum Target<'a> {
    /// The table's own pool, through [`Pq::connection`].
    Pq(&'a Pq),
    Connection(&'a mut PgConnection),
}

impl<'a> Put<'a> {
    pub(crate) fn new(sql: &'a Arc<Statements>, target: Target<'a>, job: Result<NewJob>) -> Self {
        Self { sql, target, job }
    }

    /// Not handed out before this time: `"5m"`, a `DateTime<Utc>`, a `Duration`...
    pub fn schedule_at(mut self, when: impl IntoWhen) -> Self {
        self.job = self
            .job
            .and_then(|job| Ok(job.schedule_at(when.into_when()?)));
        self
    }

    /// Priority: handed out before jobs expected later, and before jobs with no expectation.
    pub fn expected_at(mut self, when: impl IntoWhen) -> Self {
        self.job = self
            .job
            .and_then(|job| Ok(job.expected_at(when.into_when()?)));
        self
    }

    /// Writes the job on `executor`: a pool, a connection, or `&mut *tx` inside the caller's
    /// own sqlx transaction, where the job exists only if that transaction commits.
    ///
    /// ```no_run
    /// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
    /// let mut tx = pq.pool().begin().await?;
    /// sqlx::query("UPDATE orders SET state = 'paid' WHERE id = $1").bind(7).execute(&mut *tx).await?;
    /// pq.queue("mail").put(&"receipt 7").execute(&mut *tx).await?;
    /// tx.commit().await?; // the order and the job, together or not at all
    /// # Ok(()) }
    /// ```
    pub async fn execute<'e>(self, executor: impl PgExecutor<'e>) -> Result<JobId> {
        insert(self.sql, executor, self.job?).await
    }
}

impl<'a> IntoFuture for Put<'a> {
    type Output = Result<JobId>;
    type IntoFuture = BoxFuture<'a, Result<JobId>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let job = self.job?;
            match self.target {
                Target::Pq(pq) => insert_warm(pq, job).await,
                Target::Connection(conn) => insert(self.sql, conn, job).await,
            }
        })
    }
}

/// Writes one job on a connection of `pq`'s own, returning its id.
pub(crate) async fn insert_warm(pq: &Pq, job: NewJob) -> Result<JobId> {
    pq.with_connection(async |connection| insert(pq.sql(), connection, job).await)
        .await
}

/// Writes one job, returning its id.
pub(crate) async fn insert<'e>(
    sql: &Statements,
    executor: impl PgExecutor<'e>,
    job: NewJob,
) -> Result<JobId> {
    job.check()?;
    let id: i64 = sqlx::query_scalar(&sql.put)
        .bind(&job.queue)
        .bind(&job.task)
        .bind(&job.data)
        .bind(job.schedule_at.and_then(When::at))
        .bind(job.schedule_at.and_then(When::in_micros))
        .bind(job.expected_at.and_then(When::at))
        .bind(job.expected_at.and_then(When::in_micros))
        .fetch_one(executor)
        .await?;
    Ok(JobId(id))
}

/// A batch of jobs being put; see [`Queue::put_many`].
#[must_use = "nothing is put until the PutMany is awaited or executed"]
pub struct PutMany<'a> {
    sql: &'a Arc<Statements>,
    target: Target<'a>,
    queue: &'a str,
    /// Each job's data, as JSON text.
    data: Result<Vec<String>>,
    schedule_at: Option<Result<When>>,
    expected_at: Option<Result<When>>,
}

impl<'a> PutMany<'a> {
    /// Every job of the batch is scheduled at this time.
    pub fn schedule_at(mut self, when: impl IntoWhen) -> Self {
        self.schedule_at = Some(when.into_when());
        self
    }

    /// Every job of the batch is expected at this time.
    pub fn expected_at(mut self, when: impl IntoWhen) -> Self {
        self.expected_at = Some(when.into_when());
        self
    }

    /// Writes the batch on `executor`, in one statement.
    pub async fn execute<'e>(self, executor: impl PgExecutor<'e>) -> Result<Vec<JobId>> {
        let (batch, _) = self.prepare()?;
        insert_many(executor, &batch).await
    }

    fn prepare(self) -> Result<(Batch<'a>, Target<'a>)> {
        let batch = Batch {
            sql: self.sql,
            queue: self.queue,
            data: self.data?,
            schedule_at: self.schedule_at.transpose()?,
            expected_at: self.expected_at.transpose()?,
        };
        for when in [batch.schedule_at, batch.expected_at].into_iter().flatten() {
            when.checked()?;
        }
        Ok((batch, self.target))
    }
}

impl<'a> IntoFuture for PutMany<'a> {
    type Output = Result<Vec<JobId>>;
    type IntoFuture = BoxFuture<'a, Result<Vec<JobId>>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let (batch, target) = self.prepare()?;
            match target {
                Target::Pq(pq) => {
                    pq.with_connection(async |connection| insert_many(connection, &batch).await)
                        .await
                }
                Target::Connection(conn) => insert_many(conn, &batch).await,
            }
        })
    }
}

/// A checked batch: jobs of one queue, with the same times.
struct Batch<'a> {
    sql: &'a Statements,
    queue: &'a str,
    data: Vec<String>,
    schedule_at: Option<When>,
    expected_at: Option<When>,
}

/// Writes a batch in one statement, returning the ids in order. The queue and the times go
/// once, not once a job: only the data is an array.
async fn insert_many<'e>(executor: impl PgExecutor<'e>, batch: &Batch<'_>) -> Result<Vec<JobId>> {
    if batch.data.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(&batch.sql.put_many)
        .bind(batch.queue)
        .bind(&batch.data)
        .bind(batch.schedule_at.and_then(When::at))
        .bind(batch.schedule_at.and_then(When::in_micros))
        .bind(batch.expected_at.and_then(When::at))
        .bind(batch.expected_at.and_then(When::in_micros))
        .fetch_all(executor)
        .await?;
    let mut ids = rows
        .iter()
        .map(|row| row.try_get::<i64, _>(0).map(JobId))
        .collect::<Result<Vec<_>, _>>()?;
    // One statement draws its ids in row order; sorting guards against RETURNING's order,
    // which SQL does not promise.
    ids.sort_unstable();
    Ok(ids)
}
