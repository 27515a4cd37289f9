//! Results: the [`JobHandle`] of a job whose task returns a value, and the one poll per
//! process that answers every wait for an outcome.
//!
//! A wait costs nothing when nobody waits: no notification is sent for a finished job, and
//! completions write nothing more for it. While some task of the process waits, one poll reads
//! the state of every job waited for in one statement, however many tasks wait: woken by the
//! notification that completions with results send while a process is registered as waiting
//! for results (as puts notify waiting consumers), and a few milliseconds apart at first, up to
//! 200 ms apart while nothing finishes, for every other outcome (a failure, a cancel) and for a
//! notification missed.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::admin::JobState;
use crate::error::{Error, Result};
use crate::job::JobId;
use crate::pq::Pq;

/// What completions with results notify, as puts notify a queue's name: no queue's name can
/// be it, since it begins with a control character.
pub(crate) const RESULTS: &str = "\u{1}pq results";

/// How often the poll renews its registration as waiting for results, which lasts 10 s.
const REGISTER_EVERY: Duration = Duration::from_secs(5);

/// The poll's first pause, after a wait begins or a job waited for finishes.
const FIRST_PAUSE: Duration = Duration::from_millis(5);

/// The poll's longest pause, reached while nothing it waits for finishes.
const LONGEST_PAUSE: Duration = Duration::from_millis(200);

/// A job whose task returns a `T`: what enqueueing a call of such a task answers
/// (`#[pq::task] async fn resize(..) -> anyhow::Result<Thumbnail>`).
///
/// The job is kept `done` with its result for the task's `keep_result` time (a day by
/// default), then deleted; [`result`](JobHandle::result) waits for it.
///
/// ```no_run
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Thumbnail { width: u32, bytes: usize }
///
/// #[pq::task]
/// async fn resize(image: String, width: u32) -> anyhow::Result<Thumbnail> {
///     Ok(Thumbnail { width, bytes: image.len() })
/// }
///
/// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
/// let handle: pq::JobHandle<Thumbnail> = resize("cat.png".into(), 200).enqueue(&pq).await?;
/// println!("job {} is {}", handle.id(), handle.status(&pq).await?);
/// let thumbnail = handle.result(&pq).await?; // once a worker ran it
/// assert_eq!(thumbnail.width, 200);
/// # Ok(()) }
/// ```
pub struct JobHandle<T> {
    id: JobId,
    duplicate: bool,
    output: PhantomData<fn() -> T>,
}

impl<T> JobHandle<T> {
    /// The handle of job `id`, whose task returns a `T`: to wait for a job enqueued elsewhere
    /// (in a transaction, by another process) by its id.
    pub fn new(id: JobId) -> Self {
        Self {
            id,
            duplicate: false,
            output: PhantomData,
        }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// For a unique task's call, whether the job is the one that was waiting with its key
    /// already, not a new one.
    pub fn is_duplicate(&self) -> bool {
        self.duplicate
    }

    /// The job's state now; [`Error::NoSuchJob`] once its result expired (or before the
    /// transaction that enqueued it commits).
    pub async fn status(&self, pq: &Pq) -> Result<JobState> {
        pq.status(self.id)
            .await?
            .ok_or(Error::NoSuchJob { id: self.id })
    }

    /// Waits until the job has an outcome, and returns its result: the value its run
    /// returned, or [`Error::JobFailed`] if it failed for good or was cancelled. A job not in
    /// the table is [`Error::NoSuchJob`] at once, not a wait that never ends: one enqueued in
    /// a transaction that has not committed yet, or whose result expired.
    ///
    /// Bound it with `tokio::time::timeout` to wait for a limited time; a dropped wait costs
    /// nothing more.
    pub async fn result(&self, pq: &Pq) -> Result<T>
    where
        T: DeserializeOwned,
    {
        let outcome = pq.outcome(self.id).await?;
        match outcome.state.as_str() {
            "done" => {
                let result = outcome.result.as_deref().unwrap_or("null");
                serde_json::from_str(result)
                    .map_err(|error| Error::DecodeResult { id: self.id, error })
            }
            state => Err(Error::JobFailed {
                id: self.id,
                cancelled: state == "cancelled",
                error: outcome.error.unwrap_or_default(),
            }),
        }
    }
}

impl<T> Clone for JobHandle<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for JobHandle<T> {}

impl<T> PartialEq for JobHandle<T> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<T> Eq for JobHandle<T> {}

impl<T> fmt::Debug for JobHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("id", &self.id)
            .field("duplicate", &self.duplicate)
            .field("output", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T> fmt::Display for JobHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.id.fmt(f)
    }
}

/// What an enqueue did, as a handle: a duplicate when the job is the one that was waiting with
/// a unique call's key already.
impl<T> From<crate::Enqueued> for JobHandle<T> {
    fn from(enqueued: crate::Enqueued) -> Self {
        Self {
            id: enqueued.id(),
            duplicate: enqueued.is_duplicate(),
            output: PhantomData,
        }
    }
}

impl<T> From<JobHandle<T>> for JobId {
    fn from(handle: JobHandle<T>) -> Self {
        handle.id
    }
}

/// A finished job's row, as the poll read it.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    state: String,
    result: Option<String>,
    error: Option<String>,
}

/// The waits of one [`Pq`] handle (and its clones), and whether its poll runs.
#[derive(Default)]
pub(crate) struct Waits {
    inner: Mutex<WaitsInner>,
}

#[derive(Default)]
struct WaitsInner {
    waiting: HashMap<JobId, Vec<oneshot::Sender<Result<Outcome>>>>,
    polling: bool,
    /// When the process last registered as waiting for results: kept across polls, so that
    /// waits one after another do not each register again.
    registered: Option<tokio::time::Instant>,
    /// Whether a wait began since the poll's last round: the next comes soon again.
    began: bool,
}

impl Waits {
    fn lock(&self) -> std::sync::MutexGuard<'_, WaitsInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks the poll stopped if it ends before every wait is answered (its runtime shut down,
/// say), so that the next wait starts another.
struct Polling(Option<Arc<Waits>>);

impl Drop for Polling {
    fn drop(&mut self) {
        if let Some(waits) = self.0.take() {
            let mut inner = waits.lock();
            inner.polling = false;
            // Dropped senders tell their waits to register again, starting a new poll.
            inner.waiting.clear();
        }
    }
}

impl Pq {
    /// The state of job `id`, `None` if there is no such job.
    pub(crate) async fn status(&self, id: JobId) -> Result<Option<JobState>> {
        let sql = self.statements().await?;
        let state: Option<String> = self
            .with_connection("reading a job's state", async |connection| {
                Ok(sql
                    .query_scalar(&sql.status)
                    .bind(id.0)
                    .fetch_optional(connection)
                    .await?)
            })
            .await?;
        state
            .map(|state| {
                state.parse().map_err(|_| Error::Unreadable {
                    id: id.0,
                    reason: format!("its state {state:?} is not one pq knows"),
                })
            })
            .transpose()
    }

    /// Waits for job `id` to finish (done, failed or cancelled) through the handle's one poll.
    async fn outcome(&self, id: JobId) -> Result<Outcome> {
        loop {
            let (sender, receiver) = oneshot::channel();
            let start = {
                let mut inner = self.waits().lock();
                inner.waiting.entry(id).or_default().push(sender);
                inner.began = true;
                !std::mem::replace(&mut inner.polling, true)
            };
            if start {
                // Made before the spawn: a task dropped before its first poll (its runtime
                // shutting down) still marks the poll stopped.
                let polling = Polling(Some(Arc::clone(self.waits())));
                tokio::spawn(poll(self.clone(), polling));
            }
            if let Ok(outcome) = receiver.await {
                return outcome;
            }
            // The poll ended unanswered (its runtime shut down): a turn before another, so
            // that a runtime shutting down drops this wait rather than spin it.
            tokio::task::yield_now().await;
        }
    }
}

/// Reads the outcome of every job waited for, one statement a round, until no wait is left.
async fn poll(pq: Pq, mut polling: Polling) {
    let mut pause = FIRST_PAUSE;
    // Woken by completions with results; without a listener (behind a transaction pooler
    // without a direct URL) never, and the pauses alone bound a wait.
    let woken = match pq.listener().await {
        Ok(listener) => listener.subscribe(&[RESULTS]).await.ok(),
        Err(_) => None,
    };
    let mut first = true;
    loop {
        // Registered after the first read (which may answer every wait at once), and renewed
        // as it runs out. Failing, the pauses still bound every wait: tried again next round.
        let renew = {
            let inner = pq.waits().lock();
            inner
                .registered
                .is_none_or(|at| at.elapsed() >= REGISTER_EVERY)
        };
        if woken.is_some()
            && renew
            && !std::mem::take(&mut first)
            && pq.register_waiting(&[RESULTS]).await.is_ok()
        {
            pq.waits().lock().registered = Some(tokio::time::Instant::now());
        }
        let read_at = tokio::time::Instant::now();
        let notified = woken.as_ref().map(|woken| {
            let mut notified = Box::pin(Arc::clone(woken).notified_owned());
            notified.as_mut().enable();
            notified
        });
        let ids: Vec<i64> = {
            let mut inner = pq.waits().lock();
            inner.waiting.retain(|_, waits| {
                waits.retain(|wait| !wait.is_closed());
                !waits.is_empty()
            });
            if inner.waiting.is_empty() {
                // Under the lock: a wait that registers after this starts a poll of its own.
                inner.polling = false;
                polling.0 = None;
                return;
            }
            if std::mem::take(&mut inner.began) {
                pause = FIRST_PAUSE;
            }
            inner.waiting.keys().map(|id| id.0).collect()
        };
        match read_outcomes(&pq, &ids).await {
            Ok(mut found) => {
                let mut inner = pq.waits().lock();
                let mut answered = false;
                for id in ids.into_iter().map(JobId) {
                    let answer = match found.remove(&id) {
                        None => Err(()),
                        Some(outcome)
                            if ["done", "failed", "cancelled"].contains(&&*outcome.state) =>
                        {
                            Ok(outcome)
                        }
                        Some(_) => continue,
                    };
                    answered = true;
                    for wait in inner.waiting.remove(&id).unwrap_or_default() {
                        let _ = wait.send(match &answer {
                            Ok(outcome) => Ok(outcome.clone()),
                            Err(()) => Err(Error::NoSuchJob { id }),
                        });
                    }
                }
                pause = if answered {
                    FIRST_PAUSE
                } else {
                    (pause * 2).min(LONGEST_PAUSE)
                };
            }
            // A closed pool never opens again: the waits end with it.
            Err(error) if error.is_transient() && !closed(&error) => {
                tracing::warn!(%error, "pq: cannot read the outcomes of the jobs waited for; trying again");
                pause = LONGEST_PAUSE;
            }
            Err(error) => {
                // It would fail again on every round: each wait is told, not kept waiting.
                let mut inner = pq.waits().lock();
                for (id, waits) in inner.waiting.drain() {
                    for wait in waits {
                        let _ = wait.send(Err(Error::Unreadable {
                            id: id.0,
                            reason: format!("cannot read its outcome: {error}"),
                        }));
                    }
                }
            }
        }
        match notified {
            Some(notified) => {
                if tokio::time::timeout(pause, notified).await.is_ok() {
                    // Woken by any completion with a result, of jobs waited for or not: at
                    // most one read per first pause, however many arrive.
                    pause = FIRST_PAUSE;
                    tokio::time::sleep_until(read_at + FIRST_PAUSE).await;
                }
            }
            None => tokio::time::sleep(pause).await,
        }
    }
}

fn closed(error: &Error) -> bool {
    matches!(
        error,
        Error::Database(sqlx::Error::PoolClosed)
            | Error::Unreachable {
                error: sqlx::Error::PoolClosed,
                ..
            }
    )
}

async fn read_outcomes(pq: &Pq, ids: &[i64]) -> Result<HashMap<JobId, Outcome>> {
    let sql = pq.statements().await?;
    let rows: Vec<(i64, String, Option<String>, Option<String>)> = pq
        .with_connection("reading the outcomes of jobs", async |connection| {
            Ok(sql
                .query_as(&sql.outcomes)
                .bind(ids)
                .fetch_all(connection)
                .await?)
        })
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, state, result, error)| {
            (
                JobId(id),
                Outcome {
                    state,
                    result,
                    error,
                },
            )
        })
        .collect())
}
