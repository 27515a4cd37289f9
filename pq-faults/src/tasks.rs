//! The suite's tasks. Each run that succeeds leaves one row in `effects`, so that counting rows
//! per job tells how often its work happened: `plain` writes with a statement of its own (at
//! least once), `transactional` writes in the job's transaction (exactly once).

use std::sync::OnceLock;
use std::time::Duration;

use pq::TaskContext;

/// The queue every task of the suite uses by default.
pub const QUEUE: &str = "faults";

/// The schema that holds the queue table and the effects table.
pub const SCHEMA: &str = "faults";

/// Creates the effects table, next to the queue table.
pub fn create_effects(schema: &str) -> String {
    format!(
        "CREATE TABLE {} ( \
           key bigint NOT NULL, job_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL, \
           kind text NOT NULL, enqueued_at timestamptz NOT NULL, note text, \
           at timestamptz NOT NULL DEFAULT clock_timestamp())",
        effects_table(schema)
    )
}

/// `"schema".effects`.
pub fn effects_table(schema: &str) -> String {
    format!("\"{}\".effects", schema.replace('"', "\"\""))
}

static RECORD: OnceLock<String> = OnceLock::new();
static EFFECTS: OnceLock<String> = OnceLock::new();

/// Makes the tasks of this process write their effects into `schema`'s effects table.
pub fn use_schema(schema: &str) {
    let _ = EFFECTS.set(effects_table(schema));
    let _ = RECORD.set(format!(
        "INSERT INTO {} (key, job_id, attempt, pid, kind, enqueued_at, note) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        effects_table(schema)
    ));
}

/// Runs `statement` in a transaction of its own, committed at once: a transaction pooler
/// needs one around a statement that sqlx sends in two exchanges.
async fn on_its_own(
    ctx: &TaskContext,
    statement: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> anyhow::Result<()> {
    let mut tx = ctx.pq().pool().begin().await?;
    statement.execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

fn record<'q>(
    ctx: &TaskContext,
    key: i64,
    kind: &'q str,
    note: Option<String>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let sql = RECORD
        .get()
        .expect("use_schema is called before the worker runs");
    // Not kept prepared, as behind a transaction pooler it must not be (`--via pgbouncer`).
    sqlx::query(sql)
        .persistent(false)
        .bind(key)
        .bind(ctx.job_id().0)
        .bind(i32::try_from(ctx.attempt()).unwrap_or(i32::MAX))
        .bind(i32::try_from(std::process::id()).unwrap_or(i32::MAX))
        .bind(kind)
        .bind(ctx.enqueued_at())
        .bind(note)
}

/// Pretends to work for a while, so that jobs are in flight when a fault strikes.
async fn work(millis: u32) {
    if millis > 0 {
        tokio::time::sleep(Duration::from_millis(millis.into())).await;
    }
}

// `max_retries = 25`: a job that was running at several kills or outages still completes; one
// lost on its last attempt would be failed, and counted as such.

/// Works, then records its effect with a statement of its own: if the worker dies between that
/// statement and the job's completion, the job runs again and the effect happens twice.
#[pq::task(
    queue = "faults",
    name = "faults::plain",
    max_retries = 25,
    retry_in = "0s"
)]
pub async fn plain(ctx: TaskContext, key: i64, work_ms: u32) -> anyhow::Result<()> {
    work(work_ms).await;
    on_its_own(&ctx, record(&ctx, key, "plain", None)).await?;
    Ok(())
}

/// Works, then records its effect in the job's own transaction, which the worker commits with
/// the job's completion: exactly once, whatever happens.
#[pq::task(
    queue = "faults",
    name = "faults::transactional",
    max_retries = 25,
    retry_in = "0s"
)]
pub async fn transactional(ctx: TaskContext, key: i64, work_ms: u32) -> anyhow::Result<()> {
    work(work_ms).await;
    let mut tx = ctx.transaction().await?;
    record(&ctx, key, "transactional", None)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Checks that the text it got is the one the enqueuer meant (`len` bytes, with or without a
/// NUL), then records its effect in the job's transaction. One run only: a bad input fails once.
#[pq::task(queue = "faults", name = "faults::text")]
pub async fn text(
    ctx: TaskContext,
    key: i64,
    text: String,
    len: usize,
    nul: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        text.len() == len,
        "got {} bytes, expected {len}",
        text.len()
    );
    anyhow::ensure!(text.contains('\0') == nul, "the NUL did not round-trip");
    let mut tx = ctx.transaction().await?;
    record(&ctx, key, "text", Some(format!("{len} bytes")))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Fails with `message`: bad input for the error column, which is text.
#[pq::task(queue = "faults", name = "faults::fail")]
pub async fn fail(message: String) -> Result<(), String> {
    Err(message)
}

/// Works, then records its effect with a statement of its own, like `plain`; but a run after
/// the first (its worker was lost) fails for good: a job that an operator must retry.
#[pq::task(queue = "faults", name = "faults::once_or_fail")]
pub async fn once_or_fail(ctx: TaskContext, key: i64, work_ms: u32) -> anyhow::Result<()> {
    anyhow::ensure!(
        ctx.attempt() == 1,
        "attempt {}: this task runs once or not at all",
        ctx.attempt()
    );
    work(work_ms).await;
    on_its_own(&ctx, record(&ctx, key, "once_or_fail", None)).await?;
    Ok(())
}

/// The queue of the control scenario's tasks, which a pause of the suite's queue leaves alone.
pub const CONTROL_QUEUE: &str = "control";

/// A recurring job of the `cron` scenario, every second (see `child::worker`'s
/// `--every-second`), on a queue no worker works: it never runs, its jobs stay to be counted.
#[pq::task(queue = "ticks", name = "faults::tick")]
pub async fn tick() {}

/// Records its effect in the job's transaction and a `started` note with a statement of its
/// own, then waits to be cancelled (two minutes at most) and returns: a run told to stop, whose
/// transaction the worker must roll back.
#[pq::task(queue = "control", name = "faults::until_cancelled", max_retries = 5)]
pub async fn until_cancelled(ctx: TaskContext, key: i64) -> anyhow::Result<()> {
    start_then_hold(&ctx, key, "until_cancelled").await?;
    tokio::time::timeout(Duration::from_secs(120), ctx.cancelled())
        .await
        .map_err(|_| anyhow::anyhow!("never cancelled"))
}

/// As `until_cancelled`, but deaf to the request: the worker must drop its run.
#[pq::task(
    queue = "control",
    name = "faults::aborted",
    max_retries = 5,
    on_cancel = "abort"
)]
pub async fn aborted(ctx: TaskContext, key: i64) -> anyhow::Result<()> {
    start_then_hold(&ctx, key, "aborted").await?;
    tokio::time::sleep(Duration::from_secs(120)).await;
    anyhow::bail!("never cancelled")
}

async fn start_then_hold(ctx: &TaskContext, key: i64, kind: &str) -> anyhow::Result<()> {
    let mut tx = ctx.transaction().await?;
    record(ctx, key, kind, None).execute(&mut *tx).await?;
    drop(tx);
    on_its_own(ctx, record(ctx, key, "started", None)).await?;
    Ok(())
}

/// Snoozes (for no time) until it has run `snoozes` times, each run noted with a statement of
/// its own, then records its effect in the job's transaction.
#[pq::task(queue = "control", name = "faults::snoozer", max_retries = 0)]
pub async fn snoozer(ctx: TaskContext, key: i64, snoozes: i64) -> anyhow::Result<()> {
    on_its_own(&ctx, record(&ctx, key, "run", None)).await?;
    let mut tx = ctx.pq().pool().begin().await?;
    let runs: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {} WHERE key = $1 AND kind = 'run'",
        EFFECTS
            .get()
            .expect("use_schema is called before the worker runs")
    ))
    .persistent(false)
    .bind(key)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    if runs <= snoozes {
        return Err(pq::TaskError::snooze(Duration::ZERO).into());
    }
    let mut tx = ctx.transaction().await?;
    record(&ctx, key, "snoozer", None).execute(&mut *tx).await?;
    Ok(())
}

/// Fails for good at once, though it has retries left.
#[pq::task(queue = "control", name = "faults::permanent", max_retries = 5)]
pub async fn permanent(key: i64) -> anyhow::Result<()> {
    Err(pq::TaskError::permanent(format!("job {key}: the address bounced")).into())
}

/// The queue of the `limits` scenario, limited as a whole.
pub const LIMITED_QUEUE: &str = "limited";

/// One run at a time per `key` over every worker: records its start and its end, each with a
/// statement of its own, so that the scenario can count what ran at once.
#[pq::task(
    queue = "limited",
    name = "faults::limited",
    limit_key = [key],
    limit = 1,
    max_retries = 25,
    retry_in = "0s"
)]
pub async fn limited(ctx: TaskContext, key: i64, work_ms: u32) -> anyhow::Result<()> {
    on_its_own(&ctx, record(&ctx, key, "start", None)).await?;
    work(work_ms).await;
    on_its_own(&ctx, record(&ctx, key, "end", None)).await?;
    Ok(())
}

/// The queue of the `steps` scenario's jobs.
pub const STEPS_QUEUE: &str = "steps";

/// Two durable steps, each of which notes with a statement of its own that its body ran
/// (`ran first`, `ran second`), works, and records its effect (`first`, `second`) in the job's
/// transaction, which the step commits with its record. A step whose effect committed never
/// runs again: no `ran` note of it comes after its effect.
#[pq::task(
    queue = "steps",
    name = "faults::stepped",
    max_retries = 25,
    retry_in = "0s"
)]
pub async fn stepped(ctx: TaskContext, key: i64, work_ms: u32) -> anyhow::Result<()> {
    for (step, ran) in [("first", "ran first"), ("second", "ran second")] {
        ctx.step(step, || async {
            on_its_own(&ctx, record(&ctx, key, ran, None)).await?;
            work(work_ms).await;
            let mut tx = ctx.transaction().await?;
            record(&ctx, key, step, None).execute(&mut *tx).await?;
            anyhow::Ok(())
        })
        .await?;
    }
    Ok(())
}

/// The queue of the `workflows` scenario's jobs.
pub const WORKFLOWS_QUEUE: &str = "workflows";

/// A diamond's top: returns `key * 10`, its effect recorded in the job's transaction.
#[pq::task(
    queue = "workflows",
    name = "faults::top",
    max_retries = 25,
    retry_in = "0s"
)]
pub async fn top(ctx: TaskContext, key: i64, work_ms: u32) -> anyhow::Result<i64> {
    diamond_part(&ctx, key, "top", work_ms).await?;
    Ok(key * 10)
}

/// A diamond's side: its parent's result plus `add`.
#[pq::task(
    queue = "workflows",
    name = "faults::side",
    max_retries = 25,
    retry_in = "0s"
)]
pub async fn side(
    ctx: TaskContext,
    #[parent] top: i64,
    key: i64,
    add: i64,
    work_ms: u32,
) -> anyhow::Result<i64> {
    let kind = if add == 1 { "left" } else { "right" };
    diamond_part(&ctx, key, kind, work_ms).await?;
    Ok(top + add)
}

/// A diamond's bottom: takes both sides' results, and fails for good unless they are what
/// the top and sides computed.
#[pq::task(
    queue = "workflows",
    name = "faults::bottom",
    max_retries = 25,
    retry_in = "0s"
)]
pub async fn bottom(
    ctx: TaskContext,
    #[parents] sides: Vec<i64>,
    key: i64,
    work_ms: u32,
) -> anyhow::Result<()> {
    if sides != [key * 10 + 1, key * 10 + 2] {
        return Err(pq::TaskError::permanent(format!("job {key}: got {sides:?}")).into());
    }
    diamond_part(&ctx, key, "bottom", work_ms).await
}

/// Notes that this part began (`ran <kind>`, a statement of its own), works, and records its
/// effect (`<kind>`) in the job's transaction.
async fn diamond_part(ctx: &TaskContext, key: i64, kind: &str, work_ms: u32) -> anyhow::Result<()> {
    let ran = format!("ran {kind}");
    on_its_own(ctx, record(ctx, key, &ran, None)).await?;
    work(work_ms).await;
    let mut tx = ctx.transaction().await?;
    record(ctx, key, kind, None).execute(&mut *tx).await?;
    Ok(())
}
