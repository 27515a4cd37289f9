//! The processes the suite starts: `pq-faults worker` runs a `pq::Worker` over the suite's
//! tasks; `pq-faults producer` enqueues jobs and writes a ledger of what it enqueued.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pq::Worker;

use crate::flags::Flags;
use crate::rng::Rng;
use crate::tasks;

/// Keys of producer `p` are `p * KEY_SPACE + seq`: unique across producers.
pub const KEY_SPACE: i64 = 1_000_000_000;

/// Exits this process when its standard input closes: the suite holds the other end, so a
/// suite that died (even by SIGKILL) leaves no worker retrying against a server that is gone.
/// A hard exit, like a crash: the suite's own signals (SIGTERM, SIGKILL) are what it tests.
fn exit_with_the_suite() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        eprintln!(
            "pq-faults child {}: the suite is gone, exiting",
            std::process::id()
        );
        std::process::exit(3);
    });
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    exit_with_the_suite();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Logs pq's warnings and errors (and the worker's start and stop) to stderr, which the suite
/// sends to a log file per process.
fn log_to_stderr() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

/// `pq-faults worker --url U [--direct-url D] --schema S [--concurrency 8] [--lease-ms 30000] [--poll-ms 5000]
/// [--grace-ms 30000] [--max-rescues 25] [--keep-completed] [--queue Q]... [--drop-after-ms D]
/// [--every-second]`:
/// works until SIGTERM or SIGINT and exits 0 once every job it took has finished or been
/// returned. With `--drop-after-ms`, drops the worker's future after D ms instead, as a
/// `select!` or a timeout around it would, and lives on for 10 s (so that anything of the
/// worker that outlived its future would show) before it exits 0.
pub fn worker(args: &[String]) -> Result<()> {
    let flags = Flags::parse(args, &["keep-completed", "every-second"])?;
    flags.only(&[
        "url",
        "direct-url",
        "schema",
        "concurrency",
        "lease-ms",
        "poll-ms",
        "grace-ms",
        "max-rescues",
        "keep-completed",
        "queue",
        "drop-after-ms",
        "every-second",
    ])?;
    let url = flags.required("url")?.to_owned();
    let schema = flags.parsed("schema", tasks::SCHEMA.to_owned())?;
    let concurrency: usize = flags.parsed("concurrency", 8)?;
    let millis = |key, default| flags.parsed(key, default).map(Duration::from_millis);
    let lease = millis("lease-ms", 30_000)?;
    let poll = millis("poll-ms", 5_000)?;
    let grace = millis("grace-ms", 30_000)?;
    // The suite's faults lose jobs with their workers over and over: the load must still end
    // with every job done, so rescues are not what it budgets.
    let max_rescues: u32 = flags.parsed("max-rescues", 25)?;
    let drop_after = flags
        .all("drop-after-ms")
        .first()
        .map(|ms| ms.parse().map(Duration::from_millis))
        .transpose()?;
    let mut queues = flags.all("queue").to_vec();
    if queues.is_empty() {
        queues.push(tasks::QUEUE.to_owned());
    }
    log_to_stderr();
    tasks::use_schema(&schema);
    runtime()?.block_on(async move {
        // Lazy: a worker started while the database is down waits for it instead of exiting.
        let pq = crate::env::pq_builder(flags.get("direct-url"))
            .schema(&schema)
            .max_connections(u32::try_from(concurrency).unwrap_or(64) + 4)
            .connect_lazy(&url)?;
        let mut worker = Worker::new(pq);
        if flags.is_set("every-second") {
            // Caught up: a debug build late by a second still writes each second's job.
            let every_second = pq::Schedule::new("* * * * * *")?.on_missed(pq::OnMissed::CatchUp);
            worker = worker.schedule(every_second, tasks::tick())?;
        }
        let run = worker
            .queues(queues)
            .concurrency(concurrency)
            .lease(lease)
            .poll_interval(poll)
            .grace_period(grace)
            .max_rescues(max_rescues)
            .keep_completed(flags.is_set("keep-completed"))
            .run();
        match drop_after {
            None => {
                run.await?;
            }
            Some(after) => {
                let _ = tokio::time::timeout(after, run).await;
                eprintln!(
                    "pq-faults worker {}: dropped its worker",
                    std::process::id()
                );
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
        eprintln!("pq-faults worker {}: exited cleanly", std::process::id());
        Ok(())
    })
}

/// `pq-faults producer --url U [--direct-url D] --schema S --producer P --jobs N --ledger FILE [--rate R]
/// [--work-ms M] [--deadline-s D]`: enqueues up to N jobs, alternately `transactional` and
/// `plain`, R a second (0: as fast as it can), each with a random work time up to M ms. Every
/// call is written to the ledger: `ok KEY JOB_ID MICROS` or `err KEY MICROS MESSAGE`. A failed
/// call is not retried (its key is "uncertain": the job may exist if the failure came after
/// the commit); the producer moves on to the next key after a short pause.
pub fn producer(args: &[String]) -> Result<()> {
    let flags = Flags::parse(args, &[])?;
    flags.only(&[
        "url",
        "direct-url",
        "schema",
        "producer",
        "jobs",
        "ledger",
        "rate",
        "work-ms",
        "deadline-s",
    ])?;
    let url = flags.required("url")?.to_owned();
    let schema = flags.parsed("schema", tasks::SCHEMA.to_owned())?;
    let producer: i64 = flags.parsed("producer", 0)?;
    let jobs: i64 = flags.parsed("jobs", 1000)?;
    let ledger = PathBuf::from(flags.required("ledger")?);
    let rate: f64 = flags.parsed("rate", 0.0)?;
    let work_ms: u32 = flags.parsed("work-ms", 0)?;
    let deadline = Duration::from_secs(flags.parsed("deadline-s", 600)?);
    log_to_stderr();
    runtime()?.block_on(async move {
        let pq = crate::env::pq_builder(flags.get("direct-url"))
            .schema(&schema)
            .max_connections(2)
            .connect_lazy(&url)?;
        let file = std::fs::File::create(&ledger)
            .with_context(|| format!("cannot create {}", ledger.display()))?;
        let mut ledger = std::io::BufWriter::new(file);
        let mut rng = Rng::new(producer as u64 ^ u64::from(std::process::id()));
        let start = Instant::now();
        for seq in 0..jobs {
            if rate > 0.0 {
                let due = start + Duration::from_secs_f64(seq as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            if start.elapsed() > deadline {
                eprintln!("producer {producer}: deadline reached after {seq} jobs");
                break;
            }
            let key = producer * KEY_SPACE + seq;
            let work = rng.below(u64::from(work_ms) + 1) as u32;
            let called = Instant::now();
            let result = if seq % 2 == 0 {
                tasks::transactional(key, work).enqueue(&pq).await
            } else {
                tasks::plain(key, work).enqueue(&pq).await
            };
            let micros = called.elapsed().as_micros();
            match result {
                Ok(id) => writeln!(ledger, "ok {key} {id} {micros}")?,
                Err(error) => {
                    let message = error.to_string().replace('\n', " ");
                    writeln!(ledger, "err {key} {micros} {message}")?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        ledger.flush()?;
        Ok(())
    })
}
