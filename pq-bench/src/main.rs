//! pq's benchmark: each pq figure beside the raw SQL that bounds it, measured in the same run
//! on the same database, in one table. See BENCHMARKS.md.
//!
//! Run with `cargo run --release -p pq-bench -- --jobs 100000` (PostgreSQL at `DATABASE_URL`,
//! by default `postgres://postgres@127.0.0.1:5432/test`); `--quick` is the smoke test.

mod baseline;
mod handlers;
mod limits;
mod long_jobs;
mod measure;
mod migrations;
mod prefetch;
mod report;
mod results;
mod tasks;
mod workflows;
mod workload;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::baseline::{RawTable, DRAIN_BATCH};
use crate::measure::{median, Measured, TableState};
use crate::report::{Latency, Report, Row};
use crate::workload::{Batched, PqTable};

#[derive(Parser)]
#[command(about = "pq against PostgreSQL's own limit: every figure beside its raw SQL baseline")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Command {
    /// A worker process of the drain figures; the benchmark starts these itself.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        url: String,
        #[arg(long)]
        schema: String,
        #[arg(long)]
        concurrency: usize,
        /// The queue it works.
        #[arg(long, default_value = tasks::QUEUE)]
        queue: String,
    },
}

#[derive(Args)]
struct Bench {
    /// The database to measure; the benchmark works in a fresh schema and drops it afterwards.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    url: String,
    /// Jobs per figure.
    #[arg(long, default_value_t = 100_000)]
    jobs: u64,
    /// Jobs a worker process runs at once (and so claims at most at once); each value gets
    /// its drain figures. --hold-tx, --endurance and the latency figure use the largest.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 1000])]
    concurrency: Vec<usize>,
    /// Runs of each figure; the table shows the median.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    runs: u16,
    /// Jobs of the latency figure.
    #[arg(long, default_value_t = 500)]
    latency_jobs: u32,
    /// The smoke test: 5,000 jobs a figure, 200 latency jobs, one run; under a minute. Exits
    /// non-zero if a job is lost, as every profile does.
    #[arg(long)]
    quick: bool,
    /// Also drain while another session holds a transaction open, so vacuum cannot reclaim.
    #[arg(long)]
    hold_tx: bool,
    /// Also drain this many jobs through one table in rounds of --jobs, to show any slowdown
    /// from bloat (e.g. 1000000).
    #[arg(long, value_name = "JOBS")]
    endurance: Option<u64>,
    /// Keep the benchmark's schema afterwards.
    #[arg(long)]
    keep: bool,
    /// Only these figures (default: all but `migrations`).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Figure>,
    /// Jobs in the table each migration of the `migrations` figure upgrades.
    #[arg(long, default_value_t = 1_000_000)]
    migration_rows: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Figure {
    /// Enqueue one job per transaction, 1 and 8 producers.
    Single,
    /// Enqueue in batches of 1,000.
    Batch,
    /// Drains, with 1 and 2 worker processes (and with a transaction held, under --hold-tx).
    Drain,
    /// Enqueue-to-start latency.
    Latency,
    /// Each migration on a table of --migration-rows jobs: how long it takes and blocks puts.
    Migrations,
    /// What a worker writes to keep 16 long jobs claimed (a lease of 3 s, jobs of 20 s).
    LongJobs,
    /// Drains under limits (a queue's 64 running, 1,000 keys of one running each, 5,000/s)
    /// beside the unlimited drain, and how closely they follow the limits.
    Limits,
    /// What the prefetch costs others: four processes' shares of a backlog of 1 ms jobs, and
    /// how long an urgent job enqueued during a drain waits.
    Prefetch,
    /// Handlers that await 1 ms and 10 ms, at concurrency 16 and 64, against what their slots
    /// allow.
    Handlers,
    /// Jobs whose task returns a value (kept with the job) beside plain jobs.
    Results,
    /// Fan-outs of 1,000 jobs with their fan-in, beside as many jobs without edges.
    Workflows,
}

impl Bench {
    fn runs(&self, figure: Figure) -> bool {
        let by_default = !matches!(
            figure,
            Figure::Migrations
                | Figure::LongJobs
                | Figure::Limits
                | Figure::Prefetch
                | Figure::Handlers
                | Figure::Results
                | Figure::Workflows
        ) || self.quick;
        (self.only.is_empty() && by_default) || self.only.contains(&figure)
    }

    fn largest_concurrency(&self) -> usize {
        self.concurrency.iter().copied().max().unwrap_or(64)
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Command::Worker {
            url,
            schema,
            concurrency,
            queue,
        }) => runtime.block_on(workload::worker_process(&url, &schema, concurrency, &queue)),
        None => runtime.block_on(run(cli.bench)),
    }
}

async fn run(mut bench: Bench) -> Result<()> {
    if bench.quick {
        bench.jobs = 5_000;
        bench.latency_jobs = 200;
        bench.runs = 1;
        bench.migration_rows = 5_000;
    }
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect(&bench.url)
        .await
        .with_context(|| format!("connect to {}", bench.url))?;
    println!("{}\n", machine(&admin, &bench).await?);

    let schema = format!(
        "pq_bench_{}_{}",
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs()
    );
    sqlx::raw_sql(&format!("CREATE SCHEMA \"{schema}\""))
        .execute(&admin)
        .await?;
    let outcome = figures(&admin, &bench, &schema).await;
    if !bench.keep {
        sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(&admin)
            .await?;
    }
    println!("{}", outcome?.render());
    Ok(())
}

/// Every figure, each run `bench.runs` times, raw and pq in turn.
async fn figures(admin: &PgPool, bench: &Bench, schema: &str) -> Result<Report> {
    // The load's connections carry a name of their own; see `measure::load_url`.
    let load_url = measure::load_url(&bench.url);
    let raw = RawTable::create(admin, &load_url, schema).await?;
    let pq = PqTable::create(&load_url, schema).await?;
    let jobs = bench.jobs;
    let runs = usize::from(bench.runs);
    let mut report = Report {
        rows: Vec::new(),
        latency: None,
        tables: Vec::new(),
        notes: Vec::new(),
    };

    for producers in [1, 8].into_iter().filter(|_| bench.runs(Figure::Single)) {
        let (mut raw_runs, mut pq_runs) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            raw_runs.push(raw.insert_single(admin, producers, jobs).await?);
            pq_runs.push(
                pq.enqueue_single(admin, producers, jobs, false, false)
                    .await?,
            );
        }
        let raw_single = median(raw_runs).context("no run")?;
        report.rows.push(Row {
            figure: format!("enqueue, 1 job per transaction, {producers} producer(s)"),
            pq: median(pq_runs).context("no run")?,
            raw: (
                format!("single-row INSERT, {producers} client(s)"),
                raw_single,
            ),
        });
        if producers == 8 {
            let waiting = repeat(runs, || pq.enqueue_single(admin, 8, jobs, true, false)).await?;
            report.rows.push(Row {
                figure: "enqueue, 1 job per transaction, 8 producers, \
                         a consumer waiting on another queue"
                    .into(),
                pq: waiting,
                raw: ("single-row INSERT, 8 clients".into(), raw_single),
            });
            let unique = repeat(runs, || pq.enqueue_single(admin, 8, jobs, false, true)).await?;
            report.rows.push(Row {
                figure: "enqueue, 1 job per transaction, 8 producers, a unique task (each key new)"
                    .into(),
                pq: unique,
                raw: ("single-row INSERT, 8 clients".into(), raw_single),
            });
        }
    }

    if bench.runs(Figure::Batch) {
        const BATCH: u64 = 1_000;
        let (mut raw_runs, mut pq_runs, mut task_runs) = (Vec::new(), Vec::new(), Vec::new());
        let mut unique_runs = Vec::new();
        for _ in 0..runs {
            raw_runs.push(raw.insert_batches(admin, BATCH, jobs).await?);
            pq_runs.push(
                pq.enqueue_batches(admin, BATCH, jobs, Batched::Values)
                    .await?,
            );
            task_runs.push(
                pq.enqueue_batches(admin, BATCH, jobs, Batched::Calls)
                    .await?,
            );
            unique_runs.push(
                pq.enqueue_batches(admin, BATCH, jobs, Batched::UniqueCalls)
                    .await?,
            );
        }
        let raw_batch = median(raw_runs).context("no run")?;
        report.rows.push(Row {
            figure: format!("enqueue, batches of {BATCH} (`put_many`)"),
            pq: median(pq_runs).context("no run")?,
            raw: (format!("multi-row INSERT of {BATCH}"), raw_batch),
        });
        report.rows.push(Row {
            figure: format!("enqueue, batches of {BATCH} task calls (`TaskBatch`)"),
            pq: median(task_runs).context("no run")?,
            raw: (format!("multi-row INSERT of {BATCH}"), raw_batch),
        });
        report.rows.push(Row {
            figure: format!("enqueue, batches of {BATCH} calls of a unique task (each key new)"),
            pq: median(unique_runs).context("no run")?,
            raw: (format!("multi-row INSERT of {BATCH}"), raw_batch),
        });
    }
    if bench.runs(Figure::Drain) {
        drains(admin, bench, &raw, &pq, &mut report).await?;
    }
    if bench.runs(Figure::Latency) {
        let latencies = pq
            .latency(admin, bench.latency_jobs, bench.largest_concurrency())
            .await?;
        report.latency = Latency::of(&latencies);
    }
    if let Some(total) = bench.endurance {
        report
            .notes
            .push(endurance(&pq, admin, bench, total).await?);
    }
    if bench.runs(Figure::LongJobs) {
        let run = if bench.quick { 7 } else { 20 };
        report.notes.push(
            long_jobs::long_jobs(
                admin,
                &load_url,
                schema,
                16,
                std::time::Duration::from_secs(run),
                std::time::Duration::from_secs(3),
            )
            .await?,
        );
    }
    if bench.runs(Figure::Limits) {
        report
            .notes
            .push(limits::limits(admin, &pq, bench.jobs).await?);
    }
    if bench.runs(Figure::Handlers) {
        report
            .notes
            .push(handlers::handlers(admin, &pq, bench.quick).await?);
    }
    if bench.runs(Figure::Results) {
        let jobs = if bench.quick { 2_000 } else { bench.jobs };
        report
            .notes
            .push(results::results(admin, &pq, jobs, bench.largest_concurrency()).await?);
    }
    if bench.runs(Figure::Workflows) {
        let workflows = if bench.quick { 2 } else { 20 };
        report
            .notes
            .push(workflows::workflows(admin, &pq, workflows, bench.largest_concurrency()).await?);
    }
    if bench.runs(Figure::Prefetch) {
        let samples = if bench.quick { 10 } else { 50 };
        report
            .notes
            .push(prefetch::prefetch(admin, &pq, bench.jobs.min(20_000), samples).await?);
    }
    if bench.runs(Figure::Migrations) {
        report
            .notes
            .push(migrations::migrations(admin, &load_url, schema, bench.migration_rows).await?);
    }
    Ok(report)
}

/// The drains: raw, pq with 1 and 2 worker processes, and under --hold-tx the same with a
/// transaction held open.
async fn drains(
    admin: &PgPool,
    bench: &Bench,
    raw: &RawTable,
    pq: &PqTable,
    report: &mut Report,
) -> Result<()> {
    let (jobs, runs) = (bench.jobs, usize::from(bench.runs));

    let raw_drain_name = format!("DELETE … SKIP LOCKED LIMIT {DRAIN_BATCH}, 2 clients");
    let (raw_drain, raw_state) = raw_drains(admin, raw, jobs, runs).await?;
    report.tables.push(("raw drain".to_owned(), raw_state));
    let largest = bench.largest_concurrency();
    let mut normal_drain = None;
    for &concurrency in &bench.concurrency {
        for processes in [1, 2] {
            let (drain, state) = drain(pq, admin, bench, processes, concurrency, runs).await?;
            if processes == 1 && concurrency == largest {
                normal_drain = Some(drain);
            }
            report.rows.push(Row {
                figure: format!(
                    "drain, {processes} worker process(es) × concurrency {concurrency}"
                ),
                pq: drain,
                raw: (raw_drain_name.clone(), raw_drain),
            });
            report.tables.push((
                format!("pq drain, {processes} process(es) × {concurrency}"),
                state,
            ));
        }
    }

    if bench.hold_tx {
        let holder = hold_transaction(&bench.url).await?;
        let (raw_held, raw_state) = raw_drains(admin, raw, jobs, runs).await?;
        report
            .tables
            .push(("raw drain, a transaction held open".into(), raw_state));
        let (held, state) = drain(pq, admin, bench, 1, largest, runs).await?;
        holder.close().await?;
        report.rows.push(Row {
            figure: format!(
                "drain, 1 worker process × concurrency {largest}, a transaction held open"
            ),
            pq: held,
            raw: (format!("{raw_drain_name}, same held transaction"), raw_held),
        });
        report
            .tables
            .push(("pq drain, a transaction held open".into(), state));
        if let Some(normal) = normal_drain {
            report.notes.push(format!(
                "A transaction held open: pq drains at {:.0}% of its normal rate; raw SQL at {:.0}% of its own.",
                100.0 * held.rate() / normal.rate(),
                100.0 * raw_held.rate() / raw_drain.rate()
            ));
        }
    }

    Ok(())
}

/// The raw drain of `jobs` rows, `runs` times from 2 clients: the median, and the table as the
/// last run left it (each run leaves it alike: empty, with a dead row a job).
async fn raw_drains(
    admin: &PgPool,
    raw: &RawTable,
    jobs: u64,
    runs: usize,
) -> Result<(Measured, TableState)> {
    let mut raw_runs = Vec::new();
    for _ in 0..runs {
        raw.fill(admin, jobs).await?;
        raw_runs.push(raw.drain(admin, 2, jobs).await?);
    }
    let state = measure::table_state(admin, &raw.name).await?;
    Ok((median(raw_runs).context("no run")?, state))
}

/// pq's drain, the median of `runs`, with the table as the median run left it.
async fn drain(
    pq: &PqTable,
    admin: &PgPool,
    bench: &Bench,
    processes: usize,
    concurrency: usize,
    runs: usize,
) -> Result<(Measured, TableState)> {
    let mut outcomes = Vec::new();
    for _ in 0..runs {
        pq.fill(admin, bench.jobs).await?;
        outcomes.push(pq.drain(admin, processes, concurrency, bench.jobs).await?);
    }
    outcomes.sort_by(|a, b| a.0.rate().total_cmp(&b.0.rate()));
    outcomes
        .get((outcomes.len() - 1) / 2)
        .copied()
        .context("no run")
}

async fn repeat<F, Fut>(runs: usize, mut figure: F) -> Result<Measured>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Measured>>,
{
    let mut outcomes = Vec::new();
    for _ in 0..runs {
        outcomes.push(figure().await?);
    }
    median(outcomes).context("no run")
}

/// `total` jobs through one table, `bench.jobs` at a time: filled, then drained by one worker
/// process, never vacuumed by hand. Returns a table of the rounds.
async fn endurance(pq: &PqTable, admin: &PgPool, bench: &Bench, total: u64) -> Result<String> {
    let rounds = total.div_ceil(bench.jobs).max(1);
    let concurrency = bench.largest_concurrency();
    let mut out = format!(
        "Endurance: {total} jobs through one table in rounds of {}, one worker process × concurrency {}, no manual VACUUM.\n\n\
         | jobs so far | drain jobs/s | vs round 1 | table size | index size | dead tuples |\n|---:|---:|---:|---:|---:|---:|\n",
        bench.jobs, concurrency
    );
    pq.truncate(admin).await?;
    let mut first = None;
    for round in 1..=rounds {
        pq.add(admin, bench.jobs).await?;
        let (drained, state) = pq.drain(admin, 1, concurrency, bench.jobs).await?;
        let first = *first.get_or_insert(drained.rate());
        out.push_str(&format!(
            "| {} | {:.1}k | {:.0}% | {:.1} MiB | {:.1} MiB | {} |\n",
            round * bench.jobs,
            drained.rate() / 1e3,
            100.0 * drained.rate() / first,
            state.table_bytes as f64 / 1048576.0,
            state.index_bytes as f64 / 1048576.0,
            state.dead_tuples
        ));
    }
    Ok(out)
}

/// A session idle in a transaction that holds an xid, so that vacuum keeps every row version
/// deleted after it began.
async fn hold_transaction(url: &str) -> Result<PgConnection> {
    let mut conn = PgConnection::connect(url).await?;
    sqlx::raw_sql("BEGIN; SELECT pg_current_xact_id();")
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// The machine and the settings of the run, for the record.
async fn machine(admin: &PgPool, bench: &Bench) -> Result<String> {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let kib: u64 = info
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(format!("{:.1} GiB", kib as f64 / 1048576.0))
        })
        .unwrap_or_else(|| "unknown".into());
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(admin)
        .await?;
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings WHERE name IN \
         ('shared_buffers', 'synchronous_commit', 'fsync', 'wal_level', 'max_wal_size', 'autovacuum') ORDER BY name",
    )
    .fetch_all(admin)
    .await?;
    let settings: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(format!(
        "pq-bench: {} jobs a figure, {} run(s) (median), worker concurrency {:?}\n\
         machine: {cores} cores, {memory}; PostgreSQL {version} ({})",
        bench.jobs,
        bench.runs,
        bench.concurrency,
        settings.join(", ")
    ))
}
