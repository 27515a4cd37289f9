//! What `#[pq::task]` implements: the [`Task`] trait, a task's [`TaskOptions`], and the [`TaskCall`]
//! that calling a task function returns.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::future::Either;
use futures_util::{FutureExt, TryFutureExt};
use pq_core::{Enqueue, Enqueued, IntoWhen, JobHandle, JobId, NewJob, OnConflict, When};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use crate::context::TaskContext;
use crate::workflow::Parents;

/// A boxed, sendable future, as returned by [`Task::execute`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What running a task once yields: `Ok(())`, or the error that makes the attempt a failure.
pub type TaskResult = Result<(), TaskError>;

/// What running a job once yields, as the worker records it: the run's result as JSON text
/// when its job keeps one ([`FromEnqueued::KEEPS_RESULT`]), or its error.
pub type RunResult = Result<Option<String>, TaskError>;

/// Why one attempt of a task failed, as recorded on the job, and what should follow: by
/// default the task's retry policy decides; [`permanent`](TaskError::permanent),
/// [`retry_in`](TaskError::retry_in) and [`snooze`](TaskError::snooze) let the handler decide.
///
/// A handler returning `anyhow::Result` or `Result<_, Box<dyn Error + Send + Sync>>` may wrap
/// one of these: the worker finds it inside, context and all.
///
/// ```
/// # async fn send(_: &str) -> Result<(), Smtp> { Ok(()) }
/// # enum Smtp { Bounced, Greylisted, Down }
/// #[pq::task(max_retries = 5)]
/// async fn deliver(to: String) -> Result<(), pq::TaskError> {
///     match send(&to).await {
///         Ok(()) => Ok(()),
///         // Failed now, whatever retries are left.
///         Err(Smtp::Bounced) => Err(pq::TaskError::permanent(format!("{to} bounced"))),
///         // Again in ten minutes; this attempt does not count.
///         Err(Smtp::Greylisted) => Err(pq::TaskError::snooze("10m")),
///         // A retry like any other, but after the delay the server asked for.
///         Err(Smtp::Down) => Err(pq::TaskError::retry_in("5m", "the server is down")),
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    message: String,
    then: Then,
}

/// What a failed attempt asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Then {
    /// The task's retry policy decides.
    Policy,
    /// No retry.
    GiveUp,
    /// A retry if any is left, after this delay instead of the policy's.
    RetryIn(Duration),
    /// Run again after this delay, the attempt uncounted.
    Snooze(Duration),
}

impl TaskError {
    /// An error with this message: the task's retry policy decides what follows.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            then: Then::Policy,
        }
    }

    /// A failure no retry can mend (an address that bounced, a record that is gone): the job
    /// fails for good now, whatever retries it has left, with this error.
    pub fn permanent(error: impl fmt::Display) -> Self {
        Self {
            message: format!("{error:#}"),
            then: Then::GiveUp,
        }
    }

    /// A failure retried after `delay` (a `"90s"` string, a `Duration`, or a time) instead of
    /// the policy's delay, a `Retry-After` header's say: it counts as an attempt, and when
    /// `max_retries` are spent the job fails for good as usual.
    pub fn retry_in(delay: impl IntoWhen, error: impl fmt::Display) -> Self {
        match delay_of(delay) {
            Ok(delay) => Self {
                message: format!("{error:#}"),
                then: Then::RetryIn(delay),
            },
            Err(invalid) => Self::new(format!("{error:#} (and its retry delay is {invalid})")),
        }
    }

    /// Not a failure: run the job again after `delay` (a `"10m"` string, a `Duration`, or a
    /// time). The attempt does not count against `max_retries`, and no error is recorded. A job
    /// may snooze [`pq_core::MAX_SNOOZES`] times; the next snooze fails it for good. A delay
    /// that cannot be read is a failure saying so, which the retry policy handles.
    pub fn snooze(delay: impl IntoWhen) -> Self {
        match delay_of(delay) {
            Ok(delay) => Self {
                message: format!("snoozed for {}", humantime::format_duration(delay)),
                then: Then::Snooze(delay),
            },
            Err(invalid) => Self::new(format!("cannot snooze: the delay is {invalid}")),
        }
    }

    /// The message recorded on the job.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn then(&self) -> Then {
        self.then
    }

    pub(crate) fn into_message(self) -> String {
        self.message
    }

    /// This error as the handler's `error` has it, with whatever it asks for that `error`
    /// carries inside (a `TaskError` itself, or one inside an `anyhow::Error` or a boxed error).
    fn from_handler<E: fmt::Display + 'static>(error: E) -> Self {
        let any: &dyn std::any::Any = &error;
        let then = match within::<TaskError>(any) {
            Some(inner) => inner.then,
            None => within::<pq_core::Error>(any).map_or(Then::Policy, then_of),
        };
        Self {
            then,
            // `{:#}` gives anyhow's whole chain of causes on one line; other types ignore the flag.
            message: format!("{error:#}"),
        }
    }
}

/// The `E` that a handler's error is, or carries inside an `anyhow::Error` or a boxed error.
fn within<E: std::error::Error + Send + Sync + 'static>(any: &dyn std::any::Any) -> Option<&E> {
    any.downcast_ref::<E>()
        .or_else(|| {
            any.downcast_ref::<anyhow::Error>()
                .and_then(|e| e.downcast_ref::<E>())
        })
        .or_else(|| {
            any.downcast_ref::<Box<dyn std::error::Error + Send + Sync>>()
                .and_then(|e| e.downcast_ref::<E>())
        })
}

/// A delay from now (a time already past is no delay), or why it cannot be read.
fn delay_of(delay: impl IntoWhen) -> Result<Duration, String> {
    match delay.into_when() {
        Ok(When::In(delay)) => Ok(delay),
        Ok(When::At(at)) => Ok((at - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO)),
        Err(error) => Err(error.to_string()),
    }
}

/// A database error in a handler (a durable step's record, say): a failure the task's retry
/// policy handles, as any other.
impl From<pq_core::Error> for TaskError {
    fn from(error: pq_core::Error) -> Self {
        Self {
            then: then_of(&error),
            message: error.to_string(),
        }
    }
}

/// What a pq error met by a handler asks for: a mistake in the handler's code (a step taken
/// while holding the transaction, a step's output that cannot be encoded or no longer
/// decodes) fails the job for good, as every retry would; anything else is the policy's.
fn then_of(error: &pq_core::Error) -> Then {
    match error {
        pq_core::Error::StepInTransaction { .. }
        | pq_core::Error::StepsOverlap { .. }
        | pq_core::Error::DecodeStep { .. }
        | pq_core::Error::Encode(_) => Then::GiveUp,
        _ => Then::Policy,
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}

/// How the delay before a retry grows with the attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// Every retry waits `retry_in`.
    Fixed,
    /// Retry `n` waits `retry_in * 2^(n-1)`, capped at a day, with up to 25% random jitter
    /// so that jobs that failed together do not retry together.
    Exponential,
}

/// A task's defaults, fixed by its `#[pq::task(...)]` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOptions {
    /// The queue the task's jobs go to (default `"default"`).
    pub queue: &'static str,
    /// Delay before a new job may run (default: none, it runs as soon as a worker is free).
    pub schedule_at: Option<Duration>,
    /// Priority as an expected completion delay: earlier first, jobs without one last.
    pub expected_at: Option<Duration>,
    /// How many times a failed job is run again (default 0): `max_retries = 2` means at most 3 runs.
    pub max_retries: u32,
    /// The delay before a retry (default 30 s), the base of the backoff.
    pub retry_in: Duration,
    /// How the delay grows from one retry to the next (default [`Backoff::Fixed`]).
    pub backoff: Backoff,
    /// How long one run may take (default: no limit): a run still going then is stopped (its
    /// future dropped, its transaction rolled back) and fails, retried as any failure is.
    pub timeout: Option<Duration>,
    /// What a cancelled run does (default [`OnCancel::Cooperate`]).
    pub on_cancel: OnCancel,
    /// For a unique task (`#[pq::task(unique = [..])]`), what a call does when a job with its
    /// key is waiting already (see [`NewJob::unique_key`]); `None` for other tasks.
    pub unique: Option<OnConflict>,
    /// How long a job whose task returns a value is kept `done` with its result (default a
    /// day; see [`JobHandle`]). A worker that keeps completed jobs keeps these for good.
    pub keep_result: Duration,
    /// For a recurring task (`#[pq::task(cron = "..")]`), its schedule; `None` for others.
    pub cron: Option<crate::cron::Cron>,
    /// Its flow policy (`limit`, `limit_key`, `sequence`, `rate`, `burst`), enforced by the
    /// claim over every worker; `None` for a task without one.
    pub flow: Option<pq_core::FlowPolicy>,
}

/// How a run learns that its job was cancelled ([`TaskContext::cancelled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCancel {
    /// The handler is told, through its context, and stops when it chooses.
    Cooperate,
    /// The worker drops the run's future at once: for handlers that hold nothing an abrupt stop
    /// could leave half-done outside their transaction.
    Abort,
}

impl TaskOptions {
    /// The options of a task whose attribute sets none.
    pub const DEFAULT: TaskOptions = TaskOptions {
        queue: "default",
        schedule_at: None,
        expected_at: None,
        max_retries: 0,
        retry_in: Duration::from_secs(30),
        backoff: Backoff::Fixed,
        timeout: None,
        on_cancel: OnCancel::Cooperate,
        unique: None,
        keep_result: Duration::from_secs(24 * 3600),
        cron: None,
        flow: None,
    };
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A task: the arguments of one call of a `#[pq::task]` function, stored as the job's JSON data.
///
/// Implemented by the macro on the struct it generates beside the function; there is no need to
/// implement it by hand.
pub trait Task: Serialize + DeserializeOwned + Send + 'static {
    /// The task's stable name, the key that ties a queued job to its handler: by default the
    /// function's module path and name (`my_app::jobs::eat`), or the attribute's `name = "..."`.
    /// Renaming or moving a function changes it, so give long-lived tasks an explicit `name`.
    const NAME: &'static str;

    /// The task's defaults from its attribute.
    const OPTIONS: TaskOptions;

    /// What [`TaskCall::enqueue`] answers: a [`JobHandle`] for a task that returns a value
    /// (its job keeps it as its result), else a [`JobId`], or for a unique task an
    /// [`Enqueued`], which tells a new job from the one that was waiting with the same key.
    type Enqueued: FromEnqueued;

    /// What a successful run returns: stored as the job's result when [`Enqueued`] is a
    /// [`JobHandle`], which waits for it.
    ///
    /// [`Enqueued`]: Task::Enqueued
    type Output: Serialize + Send + 'static;

    /// Runs the task's body with these arguments.
    fn execute(self, ctx: TaskContext) -> BoxFuture<'static, Result<Self::Output, TaskError>>;

    /// Runs the task's body as a worker does: its result as its job keeps it (see
    /// [`RunResult`]).
    fn execute_job(self, ctx: TaskContext) -> BoxFuture<'static, RunResult>
    where
        Self: Sized,
    {
        let run = self.execute(ctx);
        Box::pin(async move { crate::registry::kept::<Self>(run.await) })
    }

    /// The unique key of these arguments, for a unique task: the JSON of the parameters its
    /// attribute names. `None` for other tasks.
    fn unique_key(&self) -> Option<String> {
        None
    }

    /// The flow key of these arguments, for a task whose policy is per key (`limit_key`,
    /// `sequence`): the JSON of the parameters its attribute names. `None` for other tasks.
    fn flow_key(&self) -> Option<String> {
        None
    }
}

/// A task with a `unique` key: its calls may set [`TaskCall::unique_key`] and
/// [`TaskCall::on_conflict`]. Implemented by the macro.
pub trait UniqueTask: Task {}

/// What an enqueue can answer: the id alone, the whole [`Enqueued`], or a [`JobHandle`] to
/// wait for the job's result.
pub trait FromEnqueued: Send + 'static {
    /// Whether the job keeps its run's result: only a handle can wait for it.
    const KEEPS_RESULT: bool = false;

    /// This answer, from what the enqueue did.
    fn from_enqueued(enqueued: Enqueued) -> Self;
}

impl<T: Send + 'static> FromEnqueued for JobHandle<T> {
    const KEEPS_RESULT: bool = true;

    fn from_enqueued(enqueued: Enqueued) -> Self {
        JobHandle::from(enqueued)
    }
}

impl FromEnqueued for JobId {
    fn from_enqueued(enqueued: Enqueued) -> Self {
        enqueued.id()
    }
}

impl FromEnqueued for Enqueued {
    fn from_enqueued(enqueued: Enqueued) -> Self {
        enqueued
    }
}

/// What a task's function may return: `()`, or `Result<T, E>` for any `E: Display`
/// (`anyhow::Error`, `Box<dyn Error>`, your own error type...) and a `T` that is `()` or, for a
/// task whose job keeps its result, `Serialize`.
#[diagnostic::on_unimplemented(
    message = "a task must return `()` or `Result<T, E>` where `E: Display`, not `{Self}`",
    label = "unsupported return type"
)]
pub trait IntoTaskResult {
    /// What a successful run returns.
    type Output;

    /// Converts the function's return value into the attempt's outcome.
    fn into_task_result(self) -> Result<Self::Output, TaskError>;
}

impl IntoTaskResult for () {
    type Output = ();

    fn into_task_result(self) -> Result<(), TaskError> {
        Ok(())
    }
}

impl<T, E: fmt::Display + 'static> IntoTaskResult for Result<T, E> {
    type Output = T;

    fn into_task_result(self) -> Result<T, TaskError> {
        self.map_err(TaskError::from_handler)
    }
}

/// One call of a task, ready to be enqueued: what calling a `#[pq::task]` function returns.
///
/// Nothing is written until [`enqueue`](TaskCall::enqueue) runs. `schedule_at`, `expected_at` and
/// `queue` override the task's defaults for this call only.
///
/// ```no_run
/// #[pq::task(queue = "apples", max_retries = 2)]
/// async fn eat(kind: String) -> anyhow::Result<()> {
///     println!("umm, {kind} apples taste good");
///     Ok(())
/// }
///
/// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
/// let id = eat("Cox".into()).schedule_at("1m").expected_at("2m").enqueue(&pq).await?;
/// # Ok(()) }
/// ```
#[must_use = "a task call does nothing until it is enqueued"]
pub struct TaskCall<T: Task> {
    args: T,
    queue: Cow<'static, str>,
    schedule_at: Option<Result<When, pq_core::Error>>,
    expected_at: Option<Result<When, pq_core::Error>>,
    timeout: Option<Result<Duration, pq_core::Error>>,
    /// A unique task's key and way with a waiting duplicate, where the call sets them.
    unique_key: Option<String>,
    on_conflict: Option<OnConflict>,
    /// The flow key, where the call sets it.
    flow_key: Option<String>,
    /// The jobs it waits for (see [`TaskCall::after`]).
    pub(crate) parents: Parents,
}

impl<T: UniqueTask> TaskCall<T> {
    /// Keys this call's job by `key` instead of the parameters the task's `unique` names
    /// (within the task: two tasks never share a key). Keys built from arguments are their
    /// JSON, so arguments that encode differently each time (a `HashMap`'s order) make poor
    /// keys: give such a call a key of its own.
    ///
    /// ```no_run
    /// #[pq::task(unique = [user])]
    /// async fn welcome(user: i64, address: String) {}
    ///
    /// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
    /// let sent = welcome(7, "a@example.com".into())
    ///     .unique_key("welcome 7 (second address)")
    ///     .on_conflict(pq::OnConflict::Replace)
    ///     .enqueue(&pq)
    ///     .await?;
    /// println!("job {} ({})", sent.id(), if sent.is_duplicate() { "waiting already" } else { "new" });
    /// # Ok(()) }
    /// ```
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Meets a job waiting with the same key as `on_conflict` says, instead of as the task's
    /// attribute does (its `on_conflict` or `debounce`; skip by default).
    pub fn on_conflict(mut self, on_conflict: OnConflict) -> Self {
        self.on_conflict = Some(on_conflict);
        self
    }
}

impl<T: Task> TaskCall<T> {
    /// Puts this call's job under the key `key` of its task's flow policy (a per-key limit,
    /// a sequence) instead of the parameters its attribute names (within the task: two tasks
    /// never share a key). A task without a policy ignores it.
    ///
    /// ```no_run
    /// #[pq::task(limit_key = [customer], limit = 1)]
    /// async fn sync(customer: i64, full: bool) {}
    ///
    /// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
    /// sync(7, true).flow_key("customer 7 and its parent").enqueue(&pq).await?;
    /// # Ok(()) }
    /// ```
    pub fn flow_key(mut self, key: impl Into<String>) -> Self {
        self.flow_key = Some(key.into());
        self
    }

    /// A call with these arguments and the task's defaults.
    pub fn new(args: T) -> Self {
        let options = T::OPTIONS;
        Self {
            args,
            queue: Cow::Borrowed(options.queue),
            schedule_at: options.schedule_at.map(|d| Ok(When::from(d))),
            expected_at: options.expected_at.map(|d| Ok(When::from(d))),
            timeout: None,
            unique_key: None,
            on_conflict: None,
            flow_key: None,
            parents: Parents::default(),
        }
    }

    /// The call's arguments.
    pub fn args(&self) -> &T {
        &self.args
    }

    /// Runs the task's body here with `ctx`, as a worker would but with no job behind it: a
    /// unit test's call (see [`TaskContext::new`] and [`TaskContext::with_attempt`]). What it
    /// writes through `ctx.transaction()` is rolled back: no worker commits it.
    ///
    /// ```no_run
    /// #[pq::task]
    /// async fn greet(ctx: pq::TaskContext, name: String) -> anyhow::Result<()> {
    ///     anyhow::ensure!(ctx.attempt() < 3, "giving up on {name}");
    ///     Ok(())
    /// }
    ///
    /// # async fn example(pq: pq::Pq) {
    /// let ctx = pq::TaskContext::new(pq, pq::JobId(1), "greet", "default").with_attempt(3);
    /// assert!(greet("Ada".into()).run_with(ctx).await.is_err());
    /// # }
    /// ```
    pub async fn run_with(self, ctx: TaskContext) -> Result<T::Output, TaskError> {
        self.args.execute(ctx).await
    }

    /// Do not run before this time: a duration string (`"90s"`, `"1h30m"`), a
    /// `chrono::DateTime<Utc>`, or a `std::time::Duration`/`chrono::Duration` from now.
    pub fn schedule_at(mut self, when: impl IntoWhen) -> Self {
        self.schedule_at = Some(when.into_when());
        self
    }

    /// Priority: jobs expected earlier run first; jobs with no expectation run last.
    pub fn expected_at(mut self, when: impl IntoWhen) -> Self {
        self.expected_at = Some(when.into_when());
        self
    }

    /// Limits each run of this call's job to `timeout` (a duration string such as `"5m"`, or a
    /// `std::time::Duration`), instead of the task's `timeout`.
    ///
    /// ```no_run
    /// #[pq::task(timeout = "1m")]
    /// async fn render(page: u32) {}
    ///
    /// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
    /// render(7).timeout("10m").enqueue(&pq).await?; // a long page
    /// # Ok(()) }
    /// ```
    pub fn timeout(mut self, timeout: impl IntoWhen) -> Self {
        self.timeout = Some(timeout.into_when().and_then(|when| match when {
            When::In(delay) => Ok(delay),
            When::At(at) => Err(pq_core::Error::InvalidTime {
                input: at.to_rfc3339(),
                reason: "a timeout is a duration, not a point in time".into(),
            }),
        }));
        self
    }

    /// The queue this call's job goes to.
    pub(crate) fn queue_name(&self) -> &Cow<'static, str> {
        &self.queue
    }

    /// Sends this call to another queue than the task's default.
    pub fn queue(mut self, queue: impl Into<Cow<'static, str>>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Writes the job and returns its id. `target` is a `&Pq`, a `&mut pq::Transaction`, or
    /// `pq.on(&mut *tx)` for a caller's own sqlx transaction: the job then exists only if that
    /// transaction commits.
    pub fn enqueue<'c>(
        self,
        target: impl Enqueue<'c> + Send + 'c,
    ) -> impl Future<Output = Result<T::Enqueued, pq_core::Error>> + Send + 'c {
        // A plain future, not an `async fn`: a generator generic over `'c` would not be provably
        // `Send` inside a task body (rust-lang/rust#100013), where follow-ups are enqueued.
        // Its span begins when it is first polled, under whatever span is current then.
        let queue = self.queue.clone();
        if self.waits() {
            let written = match self.into_graph() {
                Ok(graph) => Either::Left(target.enqueue_graph(graph)),
                Err(error) => Either::Right(std::future::ready(Err(error))),
            };
            return Either::Left(written.map_ok(move |written| {
                crate::metrics::job_enqueued(T::NAME, queue);
                T::Enqueued::from_enqueued(Enqueued::New(written.jobs[0]))
            }));
        }
        let job = self.into_job();
        Either::Right(
            futures_util::future::lazy(move |_| {
                let span = crate::trace::send(&queue, T::NAME);
                let written = match job {
                    Ok(job) => Either::Left(target.enqueue(crate::trace::carry(&span, job))),
                    Err(error) => Either::Right(std::future::ready(Err(error))),
                };
                let sent = span.clone();
                written
                    .map_ok(move |enqueued| {
                        sent.record("messaging.message.id", enqueued.id().0);
                        if !enqueued.is_duplicate() {
                            crate::metrics::job_enqueued(T::NAME, queue);
                        }
                        T::Enqueued::from_enqueued(enqueued)
                    })
                    .instrument(span)
            })
            .flatten(),
        )
    }

    /// The job this call writes.
    pub fn into_job(self) -> Result<NewJob, pq_core::Error> {
        if self.waits() {
            return Err(pq_core::Error::InvalidGraph {
                reason: format!(
                    "a call of {} waits for other jobs: enqueue it alone, or add it to a pq::Workflow",
                    T::NAME
                ),
            });
        }
        let args = serde_json::to_string(&self.args).map_err(pq_core::Error::Encode)?;
        let mut job = NewJob::from_json(&self.queue, args)?.task(T::NAME);
        if let Some(when) = self.schedule_at {
            job = job.schedule_at(when?);
        }
        if let Some(when) = self.expected_at {
            job = job.expected_at(when?);
        }
        if let Some(timeout) = self.timeout {
            job = job.timeout(timeout?);
        }
        if let Some(on_conflict) = self.on_conflict.or(T::OPTIONS.unique) {
            let key = match self.unique_key {
                Some(key) => Some(serde_json::Value::String(key).to_string()),
                None => self.args.unique_key(),
            };
            if let Some(key) = key {
                job = job.unique_key(stored_key(T::NAME, &key), on_conflict);
            }
        }
        if T::OPTIONS.flow.is_some() {
            let key = flow_key(T::NAME, self.args.flow_key(), self.flow_key);
            job = job.flow_key(key);
        }
        Ok(job)
    }
}

/// The flow key of a job of a task with a policy: the call's own key, or the JSON of the
/// arguments its attribute names, within the task; `[task]` for a policy without keys.
pub(crate) fn flow_key(task: &str, from_arguments: Option<String>, set: Option<String>) -> String {
    match (set, from_arguments) {
        (Some(key), _) => stored_key(task, &serde_json::Value::String(key).to_string()),
        (None, Some(key)) => stored_key(task, &key),
        (None, None) => format!("[{}]", serde_json::Value::from(task)),
    }
}

/// The key a unique task's job is stored under: the JSON array of the task's name and the
/// key's JSON, so that two tasks never share a key, and no key holds a NUL.
pub(crate) fn stored_key(task: &str, key_json: &str) -> String {
    format!("[{},{key_json}]", serde_json::Value::from(task))
}

impl<T: Task + fmt::Debug> fmt::Debug for TaskCall<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskCall")
            .field("task", &T::NAME)
            .field("args", &self.args)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}
