//! The `#[pq::task]` attribute. Use it through the `pq` crate, which re-exports it and the
//! runtime its expansion names.

mod args;
mod errors;
mod expand;
mod signature;

use proc_macro::TokenStream;

/// Turns a function into a task: calling it enqueues a job, and a worker runs the body.
///
/// ```no_run
/// #[pq::task(queue = "apples", max_retries = 2, retry_in = "10s")]
/// async fn eat(ctx: pq::TaskContext, kind: String, count: u32) -> anyhow::Result<()> {
///     println!("job {}: eating {count} {kind}", ctx.job_id());
///     Ok(())
/// }
///
/// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
/// // Calling the function writes nothing: it returns a `pq::TaskCall`, which `enqueue` writes.
/// let id = eat("Cox".into(), 3).enqueue(&pq).await?;
/// // The attribute's defaults can be overridden per call.
/// eat("Cox".into(), 3).schedule_at("1m").expected_at("2m").enqueue(&pq).await?;
/// # Ok(()) }
/// ```
///
/// # Arguments
///
/// Every argument is optional and is written `key = literal`, at most once:
///
/// | Argument | Value | Default |
/// |---|---|---|
/// | `queue` | the queue the jobs go to, `"apples"` | `"default"` |
/// | `name` | the task's stable name, `"billing::charge"` (see [Task names](#task-names)) | the function's module path and name |
/// | `schedule_at` | a delay before a new job may run, `"1h"` | none: it runs as soon as a worker is free |
/// | `expected_at` | priority, as an expected completion delay: earlier first, jobs without one last | none |
/// | `max_retries` | how many times a failed job runs again, an integer: `2` means at most 3 runs | `0` |
/// | `retry_in` | the delay before a retry, `"10s"`; zero is allowed | `"30s"` |
/// | `backoff` | `"fixed"` (every retry waits `retry_in`) or `"exponential"` (retry `n` waits `retry_in * 2^(n-1)`, with jitter) | `"fixed"` |
/// | `timeout` | how long one run may take, `"5m"`: the worker then drops its future, rolls back its transaction, and records the failure, retried as any other | none |
/// | `on_cancel` | what a run of a cancelled job does: `"cooperate"` (it hears of it through `ctx.cancelled()` and stops when it chooses) or `"abort"` (the worker drops its future at once); either way the job ends `cancelled`, its transaction rolled back | `"cooperate"` |
/// | `unique` | the arguments that make a job unique, `[user_id]`: at most one job waits per value of them (see [Unique tasks](#unique-tasks)) | none: every call writes a job |
/// | `on_conflict` | what a call does when a job with its key waits: `"skip"` (the waiting job stays as it is) or `"replace"` (it takes the call's arguments and times) | `"skip"` |
/// | `debounce` | a trailing debounce instead: each call replaces the waiting job's arguments and pushes its time to this long after the call, `"30s"` | none |
/// | `debounce_max` | the latest a debounced job runs, after the first call that is still waiting, `"5m"` | none: unbounded |
/// | `cron` | a recurring task's schedule, five fields (minute hour day-of-month month day-of-week) or six (seconds first), `"0 3 * * *"`, checked at compile time (see [Recurring tasks](#recurring-tasks)) | none |
/// | `timezone` | the IANA time zone its `cron` is read in, `"Europe/Berlin"`, checked at compile time | `"UTC"` |
/// | `on_missed` | what fire times missed while no worker ran come to: `"coalesce"` (one run, told how many it stands for), `"catch_up"` (a run each, the latest 100 at most) or `"skip"` (none; only a fire time found within a minute runs) | `"coalesce"` |
/// | `keep_result` | for a task returning `Result<T, E>`, how long its job is kept `done` with what the run returned, `"7d"` | `"1d"` |
///
/// Durations are strings in the format of the [`humantime`](https://docs.rs/humantime) crate,
/// which pq also uses to parse durations at run time: numbers with units, such as `"90s"`,
/// `"5m"`, `"1h30m"` or `"2d"` (units `ns`, `us`, `ms`, `s`, `m`, `h`, `d`, `w`, `M` and `y`,
/// or long forms like `secs` and `hours`). They are checked at compile time and registered as
/// constants.
///
/// # The function
///
/// - **Parameters.** The first parameter may be a `pq::TaskContext` (the running job: its id,
///   attempt and queue, and the `Pq` handle to enqueue follow-ups) or a `pq::JobId`, recognised
///   by the last segment of the type's path; the worker supplies it. Every other parameter is
///   one of the task's arguments, stored in the job as a JSON object keyed by parameter name.
///   Each is a plain name with an owned type that is `Serialize + DeserializeOwned + Send +
///   'static` (`String`, not `&str`).
/// - **Parents' results.** An argument marked `#[parent]` takes the result of a job its job
///   waits for: the call function takes, in its place, an `impl pq::ResultOf<T>` (a
///   `pq::Node<T>` of a `pq::Workflow`, or a `pq::JobHandle<T>`), so a parent of another type
///   does not compile. `#[parents] xs: Vec<T>` takes a list of them, in order (a fan-in). An
///   `Option<T>` (or a `Vec<Option<T>>`) takes a parent that returns `T`, and gets `None` for
///   one that failed when the job runs anyway (`OnParentFailure::Run`); to take a parent that
///   returns `Option<U>` itself, write `Option<Option<U>>`.
/// - **Return type.** Nothing, or `Result<(), E>` for any `E: Display` (`anyhow::Result<()>`,
///   your own error type...). An `Err` fails the attempt, and the job is retried if it has
///   retries left. `Result<T, E>` with a `T: Serialize` other than `()` (`anyhow::Result<T>`)
///   makes the job keep what a run returns, for `keep_result` (a day by default): enqueueing a
///   call then answers a `pq::JobHandle<T>`, which waits for it. The type is spelled out, so
///   that which it is shows in the signature: an alias without parameters is refused.
/// - **`async fn` or `fn`.** An `async fn` runs on the worker's runtime; a plain `fn` runs on
///   tokio's blocking thread pool, so it may block.
/// - **Not supported**, each a compile error at the offending token: generic or lifetime
///   parameters, `self`, reference or `impl Trait` arguments, patterns other than a name
///   (`(a, b): (i32, i32)`, `_`), variadics, and `const`, `unsafe` or `extern` functions.
///
/// The function keeps its visibility, doc comments and attributes; a `#[cfg]` applies to
/// everything generated.
///
/// # Calling a task, and calling its body
///
/// Calling `eat(kind, count)` returns a `pq::TaskCall<eat>`, which does nothing until
/// `.enqueue(..)` writes the job, through a `&Pq`, a `&mut pq::Transaction`, or `pq.on(&mut
/// *tx)` within a transaction of your own: the job then exists only if the transaction commits.
/// Its `.schedule_at(..)`, `.expected_at(..)`, `.timeout(..)` and `.queue(..)` override the
/// attribute's defaults for that call.
///
/// ```no_run
/// #[pq::task]
/// async fn send_receipt(order: i64) {}
///
/// # async fn example(pq: pq::Pq) -> anyhow::Result<()> {
/// let mut tx = pq.pool().begin().await?;
/// // ... write the order in `tx` ...
/// send_receipt(42).enqueue(pq.on(&mut tx)).await?;
/// tx.commit().await?; // the receipt is sent only if the order is stored
/// # Ok(()) }
/// ```
///
/// The body stays callable directly, without a database, as `eat::run`: it takes the function's
/// own parameters, the supplied one included, and returns what the function returns.
///
/// ```
/// #[pq::task]
/// fn tally(job_id: pq::JobId, n: i64) -> Result<(), String> {
///     if n < 0 {
///         return Err(format!("job {job_id}: negative tally {n}"));
///     }
///     Ok(())
/// }
///
/// assert_eq!(tally::run(pq::JobId::from(7), -1), Err("job 7: negative tally -1".into()));
/// ```
///
/// # Unique tasks
///
/// With `unique = [..]`, at most one job of the task waits (queued or scheduled) per value of
/// the named arguments, across every process, PostgreSQL's unique index deciding. Such a
/// task's `enqueue` answers a `pq::Enqueued`: `New(id)`, or
/// `Duplicate(id)` with the id of the job that was waiting. A name that is not one of the
/// task's arguments is a compile error at that name.
///
/// ```no_run
/// #[pq::task(unique = [user_id])]
/// async fn send_welcome(user_id: i64, address: String) -> anyhow::Result<()> {
///     Ok(())
/// }
///
/// #[pq::task(unique = [account], debounce = "30s", debounce_max = "5m")]
/// async fn reindex(account: String) -> anyhow::Result<()> {
///     Ok(())
/// }
///
/// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
/// match send_welcome(7, "a@example.com".into()).enqueue(&pq).await? {
///     pq::Enqueued::New(id) => println!("job {id} will welcome user 7"),
///     pq::Enqueued::Duplicate(id) => println!("job {id} waits to welcome user 7 already"),
/// }
/// // Runs once, 30 s after the last of a burst of calls (5 min after the first at most).
/// reindex("acme".into()).enqueue(&pq).await?;
/// # Ok(()) }
/// ```
///
/// The key covers waiting jobs only: a job gives up its key when a worker claims it, so a
/// request that comes while the job runs is not lost but waits, and a job that returns to the
/// queue (a retry, a rescue, an operator's retry) is never refused, even if another job with
/// its key waits by then (both run). `TaskCall::unique_key` and `TaskCall::on_conflict` set
/// a call's own key and way with a duplicate; `pq::TaskBatch` answers each call of a batch,
/// calls with one key within the batch meeting as they would meet a waiting job.
///
/// # Recurring tasks
///
/// With `cron = ".."`, every worker whose program defines the task (and that is not in burst
/// mode) declares its schedule in the table, and each fire time gets one job, however many
/// workers define it: the worker that locks the schedule's row first writes the job and moves
/// the schedule on in one transaction, on the database's clock. The task takes no arguments
/// (a `TaskContext` may be supplied); `ctx.scheduled_at()` is the fire time the run is for,
/// `ctx.fires()` how many it stands for. A task with arguments is scheduled with
/// `Worker::periodic`. `pq cron list` shows the schedules; `pause`, `resume`, `trigger` and
/// `delete` steer them.
///
/// ```no_run
/// #[pq::task(cron = "0 3 * * *", timezone = "Europe/Berlin", on_missed = "coalesce")]
/// async fn nightly_report(ctx: pq::TaskContext) -> anyhow::Result<()> {
///     let fired_for = ctx.scheduled_at(); // the fire time this run is for
///     println!("report for {fired_for:?}, standing for {} night(s)", ctx.fires());
///     Ok(())
/// }
/// ```
///
/// # Task names
///
/// A job stores its task's name, and a worker finds the function to run by that name. The
/// default, `concat!(module_path!(), "::", "eat")`, changes when the function is renamed or
/// moved to another module, and jobs already queued under the old name then find no task. Give
/// long-lived tasks an explicit `name = "..."` that stays put. Two tasks with one name are
/// reported when the worker's `pq::Registry` is built.
///
/// # What it expands to
///
/// For `#[pq::task(queue = "apples", max_retries = 2, retry_in = "10s")]` on
/// `pub async fn eat(ctx: pq::TaskContext, kind: String, count: u32) -> anyhow::Result<()>`,
/// in outline:
///
/// ```rust,ignore
/// /// (the function's doc comments)
/// #[derive(Serialize, Deserialize)]
/// pub struct eat { pub kind: String, pub count: u32 } // the job's arguments
///
/// impl eat {
///     pub async fn run(ctx: pq::TaskContext, kind: String, count: u32) -> anyhow::Result<()> {
///         // the function's body
///     }
/// }
///
/// impl pq::Task for eat {
///     const NAME: &'static str = concat!(module_path!(), "::", "eat");
///     const OPTIONS: pq::TaskOptions = pq::TaskOptions {
///         queue: "apples",
///         schedule_at: pq::TaskOptions::DEFAULT.schedule_at, // not set: the runtime's default
///         expected_at: pq::TaskOptions::DEFAULT.expected_at,
///         max_retries: 2,
///         retry_in: Duration::new(10, 0),
///         backoff: pq::TaskOptions::DEFAULT.backoff,
///         timeout: pq::TaskOptions::DEFAULT.timeout,
///         on_cancel: pq::TaskOptions::DEFAULT.on_cancel,
///         // ...
///     };
///     type Enqueued = pq::JobId; // a `pq::JobHandle<T>` for a task returning `Result<T, E>`
///     type Output = ();
///     fn execute(self, ctx: pq::TaskContext) -> pq::BoxFuture<'static, Result<(), pq::TaskError>> {
///         let eat { kind, count } = self;
///         // A plain `fn` is run by `run_blocking(move || ...)` instead.
///         Box::pin(async move { eat::run(ctx, kind, count).await.into_task_result() })
///     }
/// }
///
/// /// (the function's doc comments)
/// pub fn eat(kind: String, count: u32) -> pq::TaskCall<eat> {
///     pq::TaskCall::new(eat { kind, count })
/// }
///
/// inventory::submit! { pq::TaskDefinition::of::<eat>(concat!(file!(), ":", line!())) }
/// ```
///
/// The struct has a braced body, so it lives in the type namespace only and shares its name
/// with the function. The generated code names only `::pq::...` paths, so a crate using the
/// attribute needs no dependency but `pq`.
///
/// # Errors
///
/// Every mistake in the attribute and the signature is reported at once, each at the token that
/// caused it: an unknown or duplicate argument, a value of the wrong kind, a duration that does
/// not parse, an unsupported signature. An argument type that cannot be stored and an
/// unsupported return type are reported by the compiler, on that type. The function is still
/// emitted unchanged beside the errors, so the rest of the crate keeps compiling against it.
///
/// ```compile_fail
/// #[pq::task(retry_in = "10x")] // invalid duration "10x": unknown unit `x`, ...
/// fn eat(kind: String) {}
/// ```
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::task(args.into(), item.into()).into()
}
