//! The `#[pq::task]` attribute. Use it through the `pq` crate, which re-exports it and the
//! runtime its expansion names.

mod args;
mod errors;
mod expand;
mod signature;

use proc_macro::TokenStream;

/// Turns a function into a task: calling it enqueues a job, and a worker runs the body.
///
/// ```rust,ignore
/// #[pq::task(queue = "apples", max_retries = 2, retry_in = "10s")]
/// async fn eat(ctx: pq::TaskContext, kind: String, count: u32) -> anyhow::Result<()> {
///     println!("job {}: eating {count} {kind}", ctx.job_id());
///     Ok(())
/// }
///
/// // Calling the function writes nothing yet: it returns a `pq::TaskCall`.
/// let id = eat("Cox".into(), 3).enqueue(&pq).await?;
/// // Per-call overrides of the attribute's defaults.
/// eat("Cox".into(), 3).schedule_at("1m").expected_at("2m").enqueue(&pq).await?;
/// ```
///
/// (The examples here are compiled in `tests/ui/pass_*.rs` of the `pq` crate, since this crate
/// cannot depend on `pq`.)
///
/// # Arguments
///
/// Every argument is optional and is written `key = literal`, at most once each:
///
/// | Argument | Value | Default |
/// |---|---|---|
/// | `queue` | the queue the jobs go to, `"apples"` | `"default"` |
/// | `name` | the task's stable name, `"billing::charge"` (see *Task names*) | the function's module path and name |
/// | `schedule_at` | a delay before a new job may run, `"1h"` | none: it runs as soon as a worker is free |
/// | `expected_at` | priority, as an expected completion delay: earlier first, jobs without one last | none |
/// | `max_retries` | how many times a failed job runs again, an integer: `2` means at most 3 runs | `0` |
/// | `retry_in` | the delay before a retry, `"10s"`; zero is allowed | `"30s"` |
/// | `backoff` | `"fixed"` (every retry waits `retry_in`) or `"exponential"` (retry `n` waits `retry_in * 2^(n-1)`, with jitter) | `"fixed"` |
///
/// Durations are strings in the format of the [`humantime`](https://docs.rs/humantime) crate,
/// which pq also uses to parse durations at run time: a number and a unit, repeated, such as
/// `"90s"`, `"5m"`, `"1h30m"` or `"2d"` (units `ns`, `us`, `ms`, `s`, `m`, `h`, `d`, `w`, `M`
/// and `y`, or their long forms like `secs` and `hours`). They are checked at compile time and
/// registered as constants.
///
/// # The function
///
/// - **Parameters.** The first parameter may be a `pq::TaskContext` (the running job: its id,
///   attempt, queue, and the `Pq` handle to enqueue follow-ups) or a `pq::JobId`, recognised by
///   the last segment of the type's path; the worker supplies it. Every other parameter is one of
///   the task's arguments, stored in the job as a JSON object keyed by parameter name: each must
///   be a plain name with an owned type that is `Serialize + DeserializeOwned + Send + 'static`
///   (`String`, not `&str`).
/// - **Return type.** Nothing (`()`), or `Result<(), E>` for any `E: Display` (`anyhow::Result<()>`,
///   your own error...). An `Err` fails the attempt; the job is retried if it has retries left.
/// - **`async fn` or `fn`.** An `async fn` runs on the worker's runtime; a plain `fn` runs on
///   tokio's blocking thread pool, so it may block.
/// - **Not supported**, each with a compile error at the offending token: generic or lifetime
///   parameters, `self`, reference or `impl Trait` arguments, patterns other than a name
///   (`(a, b): (i32, i32)`, `_`), variadics, and `const`, `unsafe` or `extern` functions.
///
/// The function keeps its visibility, doc comments and attributes; `#[cfg]` applies to
/// everything generated.
///
/// # Calling a task, and calling its body
///
/// Calling `eat(kind, count)` returns a `pq::TaskCall<eat>`, which does nothing until
/// `.enqueue(&pq)` (or `.enqueue(&mut tx)`, to enqueue within a transaction) writes the job. Its
/// `.schedule_at(..)`, `.expected_at(..)` and `.queue(..)` override the attribute's defaults for
/// that call.
///
/// The body itself stays callable directly, without a database, as `eat::run`: it takes the
/// function's own parameters, context included, and returns what the function returns.
///
/// ```rust,ignore
/// #[pq::task]
/// fn tally(job_id: pq::JobId, n: i64) -> Result<(), String> {
///     if n < 0 { Err(format!("job {job_id}: negative tally")) } else { Ok(()) }
/// }
///
/// #[test]
/// fn a_negative_tally_fails() {
///     assert!(tally::run(pq::JobId::from(1), -1).is_err());
/// }
/// ```
///
/// # Task names
///
/// A job stores its task's name, and a worker finds the function to run by that name. The
/// default, `concat!(module_path!(), "::", "eat")`, changes when the function is renamed or
/// moved to another module: jobs already queued under the old name then find no task. Give
/// long-lived tasks an explicit `name = "..."` that stays put. Two tasks with one name are
/// reported when the worker's registry is built.
///
/// # What it expands to
///
/// For `#[pq::task(queue = "apples", max_retries = 2, retry_in = "10s")] pub async fn eat(ctx:
/// pq::TaskContext, kind: String, count: u32) -> anyhow::Result<()> { body }`, in outline:
///
/// ```rust,ignore
/// /// (the function's doc comments)
/// #[derive(Serialize, Deserialize)]
/// pub struct eat { pub kind: String, pub count: u32 } // the job's arguments
///
/// impl eat {
///     pub async fn run(ctx: pq::TaskContext, kind: String, count: u32) -> anyhow::Result<()> { body }
/// }
///
/// impl pq::Task for eat {
///     const NAME: &'static str = concat!(module_path!(), "::", "eat");
///     const OPTIONS: TaskOptions = TaskOptions {
///         queue: "apples",
///         max_retries: 2,
///         retry_in: Duration::new(10, 0),
///         ..TaskOptions::DEFAULT
///     };
///     fn execute(self, ctx: pq::TaskContext) -> BoxFuture<'static, TaskResult> {
///         let eat { kind, count } = self;
///         Box::pin(async move { eat::run(ctx, kind, count).await.into_task_result() })
///     }
/// }
///
/// /// (the function's doc comments)
/// pub fn eat(kind: String, count: u32) -> pq::TaskCall<eat> {
///     pq::TaskCall::new(eat { kind, count })
/// }
///
/// inventory::submit! { TaskDefinition::of::<eat>(concat!(file!(), ":", line!())) }
/// ```
///
/// The struct has a braced body, so it lives only in the type namespace and shares its name
/// with the function. The generated code names only `::pq::...` paths: a crate using the
/// attribute needs `pq` and nothing else.
///
/// # Errors
///
/// Every mistake in the attribute and the signature is reported at once, each at the token that
/// caused it: an unknown or duplicate argument, a value of the wrong kind, a duration that does
/// not parse, an unsupported signature. Arguments whose type cannot be stored, and unsupported
/// return types, are reported by the compiler on that type. The function is still emitted
/// unchanged beside the errors, so the rest of the crate keeps compiling against it.
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::task(args.into(), item.into()).into()
}
