//! [`Queue`]: put jobs in, get them out, count and clear.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_core::Stream;
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgExecutor, Row};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::job::{check_queue_name, Enqueued, Job, JobId, NewJob, OnConflict};
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
        Put::new(&self.pq, Target::Pq, NewJob::new(&self.name, data))
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
            pq: &self.pq,
            target: Target::Pq,
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
        take_committed(self).await
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
        let sql = self.pq.statements().await?;
        let count: i64 = self
            .pq
            .with_connection("counting jobs", async |connection| {
                Ok(sql
                    .query_scalar(&sql.len)
                    .bind(&*self.name)
                    .fetch_one(connection)
                    .await?)
            })
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Whether no job is ready now.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// Removes every job of this queue, whatever its state; returns how many. Its jobs that
    /// others wait for are cancelled first, so that those settle as their policy says.
    pub async fn clear(&self) -> Result<u64> {
        let sql = self.pq.statements().await?;
        self.pq
            .with_connection("clearing a queue", async |connection| {
                // Committed before the delete: their children settle at that commit, by the
                // parents' rows.
                sql.query(&sql.cancel_parents_of_queue)
                    .bind(&*self.name)
                    .execute(&mut *connection)
                    .await?;
                let done = sql
                    .query(&sql.clear)
                    .bind(&*self.name)
                    .execute(connection)
                    .await?;
                Ok(done.rows_affected())
            })
            .await
    }

    /// Starts a transaction on this queue: jobs taken in it return to the queue, and jobs put
    /// in it vanish, unless it commits.
    pub async fn begin(&self) -> Result<Transaction> {
        Transaction::begin(self.clone()).await
    }
}

/// Takes one ready job in the caller's transaction on `connection`, marking it taken; a job
/// whose row pq cannot read is failed with the reason instead (in the same transaction), and the
/// next one taken.
pub(crate) async fn take(
    sql: &Arc<Statements>,
    connection: &mut PgConnection,
    queue: &str,
) -> Result<Option<Job>> {
    loop {
        let row = sql
            .query(&sql.get)
            .bind(queue)
            .fetch_optional(&mut *connection)
            .await?;
        let Some(row) = row else { return Ok(None) };
        match Job::got(&row, sql) {
            Err(Error::Unreadable { id, reason }) => {
                fail_unreadable(sql, connection, id, &reason).await?;
            }
            job => return job.map(Some),
        }
    }
}

async fn fail_unreadable(
    sql: &Statements,
    connection: &mut PgConnection,
    id: i64,
    reason: &str,
) -> Result<()> {
    tracing::error!(
        job_id = id,
        reason,
        "pq: a job's row cannot be read; it is failed"
    );
    sql.query(&sql.fail_unreadable)
        .bind(id)
        .bind(format!("cannot be read: {reason}"))
        .execute(connection)
        .await?;
    Ok(())
}

/// Takes one ready job outside any transaction of the caller's, so that it is never lost between
/// the database and the caller: the job is marked taken in a transaction of pq's own that
/// commits only once its row is in hand. Should the caller drop the call (a timeout, a
/// `select!`) while the commit is under way, or the commit's answer be lost, the job is given
/// back to the queue (see [`GiveBack`]); dropped earlier, the transaction rolls back with its
/// connection.
async fn take_committed(queue: &Queue) -> Result<Option<Job>> {
    let pq = &queue.pq;
    let sql = pq.statements().await?;
    let taken = pq
        .with_connection("a get", async |connection| loop {
            let mut tx = connection.begin().await?;
            let row = sql
                .query(&sql.get)
                .bind(&*queue.name)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                tx.commit().await?;
                return Ok(None);
            };
            let job = match Job::got(&row, sql) {
                Err(Error::Unreadable { id, reason }) => {
                    fail_unreadable(sql, &mut tx, id, &reason).await?;
                    tx.commit().await?;
                    continue;
                }
                job => job?,
            };
            let give_back = GiveBack::new(pq, &job);
            tx.commit().await?;
            return Ok(Some((job, give_back)));
        })
        .await?;
    // Committed once `with_connection` returns: behind a transaction pooler, the transaction
    // above is a savepoint of the one `with_connection` commits.
    Ok(taken.map(|(job, give_back)| {
        give_back.disarm();
        job
    }))
}

/// Gives a taken job back to its queue when dropped armed: its `get` was dropped or failed
/// while committing, so its caller never got it though the take may have committed. Fenced by
/// the time the job was taken, so that it never touches the job once someone took it again.
struct GiveBack {
    back: Option<(Pq, i64, crate::timestamp::Timestamp)>,
}

impl GiveBack {
    fn new(pq: &Pq, job: &Job) -> Self {
        Self {
            back: job.got_at().map(|at| (pq.clone(), job.id().0, at)),
        }
    }

    fn disarm(mut self) {
        self.back = None;
    }
}

impl Drop for GiveBack {
    fn drop(&mut self) {
        let Some((pq, id, taken_at)) = self.back.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                job_id = id,
                "pq: a job taken by a dropped get cannot be given back: no runtime"
            );
            return;
        };
        runtime.spawn(async move {
            // A minute of tries: the database may be the reason the get failed.
            let mut delay = Duration::from_millis(100);
            for _ in 0..10 {
                let sql = match pq.statements().await {
                    Ok(sql) => sql,
                    Err(_) => return,
                };
                let given = pq
                    .with_connection("giving a job back", async |connection| {
                        Ok(sql.query(&sql.give_back)
                            .bind(id)
                            .bind(taken_at)
                            .execute(connection)
                            .await?)
                    })
                    .await;
                match given {
                    Ok(_) => return,
                    Err(error) => {
                        tracing::warn!(job_id = id, %error, "pq: cannot give back a job a dropped get took; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            }
            tracing::error!(job_id = id, "pq: a job a dropped get took could not be given back; it stays done");
        });
    }
}

/// The blocking get: take a job, or wait for a notification, the earliest scheduled job, or
/// the timeout, whichever comes first. Takes in the caller's transaction on `connection` when
/// given one; registers as waiting on a connection of pq's own either way, whose transaction
/// ends with the statement, so that the wait lock never stays held.
pub(crate) async fn wait_for_job(
    queue: &Queue,
    mut connection: Option<&mut PgConnection>,
    timeout: Duration,
) -> Result<Option<Job>> {
    check_queue_name(&queue.name)?;
    let deadline = Instant::now() + timeout;
    let wake = queue.pq.listener().await?.subscribe(&[&queue.name]).await?;
    let mut idle = IdleDelay::default();
    loop {
        // Registered before looking, so a job put between the look and the wait still wakes us.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        if let Some(job) = look(queue, connection.as_deref_mut()).await? {
            return Ok(Some(job));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        let wait = queue.pq.register_waiting(&[queue.name.as_ref()]).await?;
        // Registered as waiting now, so every later put notifies; a put that committed before
        // did not, and this look finds it.
        if let Some(job) = look(queue, connection.as_deref_mut()).await? {
            return Ok(Some(job));
        }
        let mut sleep = deadline.saturating_duration_since(Instant::now());
        sleep = sleep.min(idle.next(wait, Duration::from_secs(1)));
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

async fn look(queue: &Queue, connection: Option<&mut PgConnection>) -> Result<Option<Job>> {
    match connection {
        Some(connection) => {
            let sql = queue.pq.statements().await?;
            take(sql, connection, &queue.name).await
        }
        None => take_committed(queue).await,
    }
}

/// How long a waiting consumer sleeps, from what [`Pq::register_waiting`] said: as long as it
/// allows, at most `poll`; or, when it could not make sure that every put it may have missed
/// has committed, 20 ms, doubling at each such look in a row, up to `poll`. A transaction that
/// enqueued and stays open then costs a few looks, not a spin.
#[derive(Debug, Default)]
pub struct IdleDelay {
    unproven: u32,
}

impl IdleDelay {
    /// The first delay after an unproven wait.
    const FIRST: Duration = Duration::from_millis(20);

    /// The sleep after a registration that said `registered`.
    pub fn next(&mut self, registered: Option<Duration>, poll: Duration) -> Duration {
        match registered {
            Some(wait) => {
                self.unproven = 0;
                wait.min(poll)
            }
            None => {
                let delay = Self::FIRST.saturating_mul(1 << self.unproven.min(16));
                self.unproven = self.unproven.saturating_add(1);
                delay.min(poll)
            }
        }
    }
}

impl Pq {
    /// Registers the caller as about to wait for jobs of `queues`, and returns how long it may
    /// sleep: until the earliest scheduled job of those queues is due, at most about 9 s (the
    /// registration lasts 10 s; call again to renew it). `None` when it could not make sure
    /// that a put it may have missed has committed (some transaction that enqueued is still
    /// open): look again shortly, longer each time (see docs/guarantees.md).
    ///
    /// Puts on a queue notify only while some consumer of it is registered (a NOTIFY
    /// serialises commits, so pq spares it while every consumer of the queue is busy). So an
    /// idle loop goes: claim; if nothing, call this; claim once more (it finds any job whose put
    /// committed before the registration and so did not notify); then sleep until notified or
    /// for the time returned.
    pub async fn register_waiting(&self, queues: &[&str]) -> Result<Option<Duration>> {
        let sql = self.statements().await?;
        let seconds: Option<f64> = self
            .with_connection("registering a wait", async |connection| {
                Ok(sql
                    .query_scalar(&sql.wait)
                    .bind(queues)
                    .fetch_one(connection)
                    .await?)
            })
            .await?;
        Ok(seconds.map(|s| Duration::from_secs_f64(s.clamp(0.0, 86_400.0))))
    }
}

/// A job being put: set its times, then await it (on the queue's pool) or
/// [`execute`](Put::execute) it on an executor of yours.
#[must_use = "nothing is put until the Put is awaited or executed"]
pub struct Put<'a> {
    pq: &'a Pq,
    target: Target<'a>,
    job: Result<NewJob>,
}

/// Where an awaited [`Put`] or [`PutMany`] runs.
pub(crate) enum Target<'a> {
    /// A connection of the table's own, through [`Pq::with_connection`].
    Pq,
    /// The caller's (a [`Transaction`]'s).
    Connection(&'a mut PgConnection),
}

impl<'a> Put<'a> {
    pub(crate) fn new(pq: &'a Pq, target: Target<'a>, job: Result<NewJob>) -> Self {
        Self { pq, target, job }
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
        let job = self.job?;
        Ok(insert(self.pq.statements().await?, executor, job)
            .await?
            .id())
    }
}

impl<'a> IntoFuture for Put<'a> {
    type Output = Result<JobId>;
    type IntoFuture = BoxFuture<'a, Result<JobId>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let job = self.job?;
            match self.target {
                Target::Pq => Ok(insert_warm(self.pq, job).await?.id()),
                Target::Connection(conn) => {
                    Ok(insert(self.pq.statements().await?, conn, job).await?.id())
                }
            }
        })
    }
}

/// Writes one job on a connection of `pq`'s own.
pub(crate) async fn insert_warm(pq: &Pq, job: NewJob) -> Result<Enqueued> {
    let sql = pq.statements().await?;
    pq.with_connection("an enqueue", async |connection| {
        insert(sql, connection, job).await
    })
    .await
}

/// Writes one job: a new one, or for a unique job, maybe the one waiting with its key.
pub(crate) async fn insert<'e>(
    sql: &Statements,
    executor: impl PgExecutor<'e>,
    job: NewJob,
) -> Result<Enqueued> {
    job.check()?;
    let scheduled = job.scheduled();
    let statement = match &job.unique {
        None => &sql.put,
        Some(_) => &sql.put_unique,
    };
    let query = sql
        .query_as::<(i64, Option<bool>)>(statement)
        .bind(&job.queue)
        .bind(&job.task)
        .bind(&job.data)
        .bind(scheduled.and_then(When::at))
        .bind(scheduled.and_then(When::in_micros))
        .bind(job.expected_at.and_then(When::at))
        .bind(job.expected_at.and_then(When::in_micros))
        .bind(job.timeout.map(crate::lease::micros))
        .bind(job.meta_json());
    let query = match &job.unique {
        None => query,
        Some((key, on_conflict)) => {
            let (code, max) = on_conflict.code();
            query.bind(key.as_str()).bind(code).bind(max)
        }
    };
    // A plain put's second column is whether it notified; a unique put's, whether it is new.
    let (id, inserted) = query
        .fetch_one(executor)
        .await
        .map_err(|error| Error::from(error).or_no_table(|| sql.table.qualified()))?;
    Ok(match (&job.unique, inserted) {
        (Some(_), Some(false)) => Enqueued::Duplicate(JobId(id)),
        _ => Enqueued::New(JobId(id)),
    })
}

/// Writes `jobs` (of any queues and tasks) in one statement (one per way of meeting a waiting
/// job, in a transaction, should unique calls of a batch differ in that), answering each in
/// order.
pub(crate) async fn insert_jobs(
    sql: &Statements,
    connection: &mut PgConnection,
    jobs: Vec<NewJob>,
) -> Result<Vec<Enqueued>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    // Each key goes in once: a later call with a key the batch holds meets that row, as it
    // would meet a waiting job (the statement cannot write one row twice).
    let mut rows: Vec<NewJob> = Vec::with_capacity(jobs.len());
    let mut answered_by = Vec::with_capacity(jobs.len());
    let mut keyed: HashMap<String, usize> = HashMap::new();
    for job in jobs {
        job.check()?;
        if let Some((key, on_conflict)) = &job.unique {
            if let Some(&row) = keyed.get(key) {
                answered_by.push((row, true));
                if *on_conflict != OnConflict::Skip {
                    rows[row] = job;
                }
                continue;
            }
            keyed.insert(key.clone(), rows.len());
        }
        answered_by.push((rows.len(), false));
        rows.push(job);
    }
    let fail = |error: Error| error.or_no_table(|| sql.table.qualified());
    let answers = if keyed.is_empty() {
        write_rows(sql, &mut *connection, rows, None)
            .await
            .map_err(fail)?
    } else {
        // By way of meeting a waiting job, then by key, so that concurrent batches meet
        // waiting jobs in one order and cannot deadlock; plain rows go with the first group.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        let way = |row: usize| {
            let unique = rows[row].unique.as_ref();
            unique.map(|(key, c)| (c.code(), key.as_str()))
        };
        order.sort_by(|&a, &b| way(a).cmp(&way(b)));
        let mut taken: Vec<Option<NewJob>> = rows.into_iter().map(Some).collect();
        let mut groups: Groups = Vec::new();
        for row in order {
            let job = taken[row].take().expect("each row once");
            let code = job.unique.as_ref().map(|(_, c)| c.code());
            match groups.last_mut() {
                Some((last, group)) if *last == code || last.is_none() => {
                    *last = last.or(code);
                    group.push((row, job));
                }
                _ => groups.push((code, vec![(row, job)])),
            }
        }
        if groups.len() > 1 {
            let mut tx = Connection::begin(&mut *connection).await?;
            let answers = write_groups(sql, &mut tx, groups, taken.len()).await;
            let answers = answers.map_err(fail)?;
            tx.commit().await?;
            answers
        } else {
            write_groups(sql, connection, groups, taken.len())
                .await
                .map_err(fail)?
        }
    };
    answered_by
        .into_iter()
        .map(|(row, repeated)| match answers[row] {
            Some(answer) if repeated => Ok(Enqueued::Duplicate(answer.id())),
            Some(answer) => Ok(answer),
            None => Err(Error::Database(sqlx::Error::Protocol(
                "an enqueue returned fewer rows than it wrote".into(),
            ))),
        })
        .collect()
}

/// The rows of a keyed batch and where each goes in the batch, grouped by their way of meeting
/// a waiting job (plain rows with the first).
type Groups = Vec<(Option<(i32, Option<i64>)>, Vec<(usize, NewJob)>)>;

/// Writes each group in a statement of its own; answers the `rows` rows by place.
async fn write_groups(
    sql: &Statements,
    connection: &mut PgConnection,
    groups: Groups,
    rows: usize,
) -> Result<Vec<Option<Enqueued>>> {
    let mut answers = vec![None; rows];
    for (code, group) in groups {
        let (places, jobs): (Vec<usize>, Vec<NewJob>) = group.into_iter().unzip();
        let written =
            write_rows(sql, &mut *connection, jobs, Some(code.unwrap_or((0, None)))).await?;
        for (place, answer) in places.into_iter().zip(written) {
            answers[place] = answer;
        }
    }
    Ok(answers)
}

/// Jobs as the arrays of a statement that writes many: one array a column.
pub(crate) struct JobColumns {
    pub queues: Vec<String>,
    pub tasks: Vec<Option<String>>,
    pub data: Vec<String>,
    pub schedule_at: Vec<Option<DateTime<Utc>>>,
    pub schedule_in: Vec<Option<i64>>,
    pub expected_at: Vec<Option<DateTime<Utc>>>,
    pub expected_in: Vec<Option<i64>>,
    pub timeouts: Vec<Option<i64>>,
    pub metas: Vec<Option<String>>,
    /// Each job's unique key.
    pub keys: Vec<Option<String>>,
    /// Whether any job sets a time, a timeout or meta.
    pub detailed: bool,
}

pub(crate) fn job_columns(rows: Vec<NewJob>) -> JobColumns {
    let n = rows.len();
    let mut columns = JobColumns {
        queues: Vec::with_capacity(n),
        tasks: Vec::with_capacity(n),
        data: Vec::with_capacity(n),
        schedule_at: Vec::with_capacity(n),
        schedule_in: Vec::with_capacity(n),
        expected_at: Vec::with_capacity(n),
        expected_in: Vec::with_capacity(n),
        timeouts: Vec::with_capacity(n),
        metas: Vec::with_capacity(n),
        keys: Vec::with_capacity(n),
        detailed: false,
    };
    for job in rows {
        let meta = job.meta_json();
        let scheduled = job.scheduled();
        columns.detailed |= scheduled.is_some()
            || job.expected_at.is_some()
            || job.timeout.is_some()
            || meta.is_some();
        columns.schedule_at.push(scheduled.and_then(When::at));
        columns
            .schedule_in
            .push(scheduled.and_then(When::in_micros));
        columns.expected_at.push(job.expected_at.and_then(When::at));
        columns
            .expected_in
            .push(job.expected_at.and_then(When::in_micros));
        columns.timeouts.push(job.timeout.map(crate::lease::micros));
        columns.metas.push(meta);
        columns.keys.push(job.unique.map(|(key, _)| key));
        columns.queues.push(job.queue);
        columns.tasks.push(job.task);
        columns.data.push(job.data);
    }
    columns
}

/// Writes `rows` in one statement: with keys meeting waiting jobs as `unique` says (its code
/// and bound), or plain. Answers each row in order (`None` for a row the statement did not
/// return).
async fn write_rows(
    sql: &Statements,
    connection: &mut PgConnection,
    rows: Vec<NewJob>,
    unique: Option<(i32, Option<i64>)>,
) -> Result<Vec<Option<Enqueued>>> {
    let n = rows.len();
    let JobColumns {
        queues,
        tasks,
        data,
        schedule_at,
        schedule_in,
        expected_at,
        expected_in,
        timeouts,
        metas,
        keys,
        detailed,
    } = job_columns(rows);
    let Some((code, bound)) = unique else {
        let query = if detailed {
            sql.query_scalar(&sql.put_jobs)
                .bind(queues)
                .bind(tasks)
                .bind(data)
                .bind(schedule_at)
                .bind(schedule_in)
                .bind(expected_at)
                .bind(expected_in)
                .bind(timeouts)
                .bind(metas)
        } else {
            sql.query_scalar(&sql.put_jobs_now)
                .bind(queues)
                .bind(tasks)
                .bind(data)
        };
        let mut ids: Vec<i64> = query.fetch_all(connection).await?;
        // The sequence numbered the rows in their order, whatever order RETURNING gives them in.
        ids.sort_unstable();
        return Ok(ids
            .into_iter()
            .map(|id| Some(Enqueued::New(JobId(id))))
            .collect());
    };
    let returned: Vec<(i64, bool, Option<i64>)> = sql
        .query_as(&sql.put_jobs_unique)
        .bind(queues)
        .bind(tasks)
        .bind(data)
        .bind(schedule_at)
        .bind(schedule_in)
        .bind(expected_at)
        .bind(expected_in)
        .bind(timeouts)
        .bind(metas)
        .bind(&keys)
        .bind(code)
        .bind(bound)
        .fetch_all(connection)
        .await?;
    // A keyed row says its place; the others were numbered in their order.
    let mut answers: Vec<Option<Enqueued>> = vec![None; n];
    let mut plain = Vec::new();
    for (id, inserted, place) in returned {
        let answer = match inserted {
            true => Enqueued::New(JobId(id)),
            false => Enqueued::Duplicate(JobId(id)),
        };
        let row = place.and_then(|place| usize::try_from(place - 1).ok());
        match row.filter(|&row| row < n) {
            Some(row) => answers[row] = Some(answer),
            None => plain.push(id),
        }
    }
    plain.sort_unstable();
    let mut plain = plain.into_iter();
    for (row, key) in keys.iter().enumerate() {
        if key.is_none() {
            answers[row] = plain.next().map(|id| Enqueued::New(JobId(id)));
        }
    }
    Ok(answers)
}

/// A batch of jobs being put; see [`Queue::put_many`].
#[must_use = "nothing is put until the PutMany is awaited or executed"]
pub struct PutMany<'a> {
    pq: &'a Pq,
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
        let sql = self.pq.statements().await?;
        let (batch, _) = self.prepare(sql)?;
        insert_many(executor, &batch).await
    }

    fn prepare(self, sql: &'a Statements) -> Result<(Batch<'a>, Target<'a>)> {
        let batch = Batch {
            sql,
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
            let pq = self.pq;
            let sql = pq.statements().await?;
            let (batch, target) = self.prepare(sql)?;
            match target {
                Target::Pq => {
                    pq.with_connection("an enqueue", async |connection| {
                        insert_many(connection, &batch).await
                    })
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
    let rows = batch
        .sql
        .query(&batch.sql.put_many)
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
