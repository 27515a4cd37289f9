//! pq's side of each figure, through pq's public API: task calls, `put_many`, and
//! `pq::Worker` processes.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pq::Pq;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Notify;

use crate::baseline::shares;
use crate::measure::{table_state, Measured, Probe, TableState, FLUSH_STATS};
use crate::tasks::{self, NOOP, QUEUE};

/// What a batch figure enqueues.
#[derive(Debug, Clone, Copy)]
pub enum Batched {
    /// Values, with `Queue::put_many`.
    Values,
    /// No-op task calls in a `TaskBatch`.
    Calls,
    /// Calls of a unique task in a `TaskBatch`, every key new.
    UniqueCalls,
}

/// pq's table in the benchmark's schema.
pub struct PqTable {
    url: String,
    schema: String,
    pub name: String,
}

impl PqTable {
    /// Creates pq's table in `schema` with pq's own migrations.
    pub async fn create(url: &str, schema: &str) -> Result<PqTable> {
        let pq = connect(url, schema).await?;
        pq.create().await?;
        let name = pq.table();
        pq.pool().close().await;
        Ok(PqTable {
            url: url.to_owned(),
            schema: schema.to_owned(),
            name,
        })
    }

    /// A handle on the table.
    pub async fn connect(&self) -> Result<Pq> {
        connect(&self.url, &self.schema).await
    }

    pub async fn truncate(&self, admin: &PgPool) -> Result<()> {
        sqlx::raw_sql(&format!("TRUNCATE {}; {FLUSH_STATS}", self.name))
            .execute(admin)
            .await?;
        Ok(())
    }

    /// `jobs` task calls enqueued one per transaction by `producers` concurrent tasks sharing
    /// one `Pq` (pq's default pool of 10 connections). With `waiter`, a consumer blocks on another
    /// queue of the table meanwhile, as an idle worker would; with `unique`, the calls are of a
    /// unique task, each with a key of its own.
    pub async fn enqueue_single(
        &self,
        admin: &PgPool,
        producers: usize,
        jobs: u64,
        waiter: bool,
        unique: bool,
    ) -> Result<Measured> {
        self.truncate(admin).await?;
        let pq = connect(&self.url, &self.schema).await?;
        open_connections(&pq, producers).await?;
        let waiting = if waiter {
            let queue = pq.queue("idle").with_timeout(Duration::from_secs(3600));
            let handle = tokio::spawn(async move { queue.get().await });
            // Long enough for its LISTEN and its first look.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some(handle)
        } else {
            None
        };
        let probe = Probe::start(admin).await?;
        let mut handles = Vec::new();
        let mut first = 0;
        for share in shares(jobs, producers) {
            let pq = pq.clone();
            let range = first..first + share;
            first += share;
            handles.push(tokio::spawn(async move {
                for n in range {
                    let n = u32::try_from(n)?;
                    if unique {
                        tasks::unique_noop(n).enqueue(&pq).await?;
                    } else {
                        tasks::noop(n).enqueue(&pq).await?;
                    }
                }
                anyhow::Ok(())
            }));
        }
        for handle in handles {
            handle.await??;
        }
        let stopped = probe.stop();
        if let Some(waiting) = waiting {
            waiting.abort();
        }
        close(pq).await;
        let measured = stopped.finish(admin, jobs).await?;
        self.expect_ready(admin, jobs).await?;
        Ok(measured)
    }

    /// `jobs` jobs enqueued in batches of `batch` by one producer, as `batched` says.
    pub async fn enqueue_batches(
        &self,
        admin: &PgPool,
        batch: u64,
        jobs: u64,
        batched: Batched,
    ) -> Result<Measured> {
        #[derive(serde::Serialize)]
        struct Args {
            n: u64,
        }
        self.truncate(admin).await?;
        let pq = connect(&self.url, &self.schema).await?;
        let queue = pq.queue(QUEUE);
        let probe = Probe::start(admin).await?;
        let mut done = 0;
        while done < jobs {
            let numbers = done..done + batch.min(jobs - done);
            done = numbers.end;
            let n = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
            match batched {
                Batched::Values => {
                    let items: Vec<Args> = numbers.map(|n| Args { n }).collect();
                    queue.put_many(&items).await?;
                }
                Batched::Calls => {
                    let calls: pq::TaskBatch = numbers.map(|k| tasks::noop(n(k))).collect();
                    calls.enqueue(&pq).await?;
                }
                Batched::UniqueCalls => {
                    let calls: pq::TaskBatch = numbers.map(|k| tasks::unique_noop(n(k))).collect();
                    calls.enqueue(&pq).await?;
                }
            }
        }
        let stopped = probe.stop();
        close(pq).await;
        let measured = stopped.finish(admin, jobs).await?;
        self.expect_ready(admin, jobs).await?;
        Ok(measured)
    }

    /// Writes `jobs` ready no-op jobs in one statement, as a batch put would (not timed).
    pub async fn fill(&self, admin: &PgPool, jobs: u64) -> Result<()> {
        self.truncate(admin).await?;
        self.add(admin, jobs).await?;
        sqlx::raw_sql(&format!("ANALYZE {}; {FLUSH_STATS}", self.name))
            .execute(admin)
            .await?;
        Ok(())
    }

    /// Adds `jobs` ready no-op jobs to whatever the table holds.
    pub async fn add(&self, admin: &PgPool, jobs: u64) -> Result<()> {
        self.add_to(admin, QUEUE, jobs, None).await
    }

    /// Adds `jobs` ready jobs that each run for `length` (`tasks::pause`).
    pub async fn add_pauses(&self, admin: &PgPool, jobs: u64, length: Duration) -> Result<()> {
        let millis = length.as_millis();
        self.add_of(
            admin,
            tasks::PAUSE,
            &format!(r#"{{"millis":{millis}}}"#),
            jobs,
        )
        .await
    }

    /// Adds `jobs` ready jobs of `task`, each with the arguments `data` (JSON, where `%s`
    /// stands for the job's number).
    pub async fn add_of(&self, admin: &PgPool, task: &str, data: &str, jobs: u64) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO {} (q_name, task, data) \
             SELECT $1, $2, format($3, g)::json FROM generate_series(1, $4) AS g",
            self.name
        ))
        .bind(QUEUE)
        .bind(task)
        .bind(data)
        .bind(i64::try_from(jobs)?)
        .execute(admin)
        .await?;
        Ok(())
    }

    /// Adds `jobs` ready no-op jobs to `queue`; with `keyed`, jobs of that keyed task over
    /// that many keys, in turn.
    pub async fn add_to(
        &self,
        admin: &PgPool,
        queue: &str,
        jobs: u64,
        keyed: Option<(&str, u64)>,
    ) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO {} (q_name, task, data, flow) \
             SELECT $1, CASE WHEN $4 > 0 THEN $5 ELSE $2 END, \
               CASE WHEN $4 > 0 THEN format('{{\"key\":%s}}', g % $4) \
                 ELSE format('{{\"n\":%s}}', g) END::json, \
               CASE WHEN $4 > 0 THEN format('[%s,[%s]]', to_json($5::text), g % $4) END \
             FROM generate_series(1, $3) AS g",
            self.name
        ))
        .bind(queue)
        .bind(NOOP)
        .bind(i64::try_from(jobs)?)
        .bind(i64::try_from(keyed.map_or(0, |(_, keys)| keys))?)
        .bind(keyed.map(|(task, _)| task))
        .execute(admin)
        .await?;
        Ok(())
    }

    /// Works the `jobs` filled jobs to empty with `processes` worker processes (this binary's
    /// `worker` command), each running `concurrency` jobs at once. The clock starts once every
    /// process is connected and stops when the last one returns.
    pub async fn drain(
        &self,
        admin: &PgPool,
        processes: usize,
        concurrency: usize,
        jobs: u64,
    ) -> Result<(Measured, TableState)> {
        let (measured, state, _) = self
            .drain_queue(admin, QUEUE, processes, concurrency, jobs)
            .await?;
        ensure!(state.rows == 0, "{} plain jobs were kept", state.rows);
        Ok((measured, state))
    }

    /// [`drain`](Self::drain) of `queue`; also says how many jobs each process ran.
    pub async fn drain_queue(
        &self,
        admin: &PgPool,
        queue: &str,
        processes: usize,
        concurrency: usize,
        jobs: u64,
    ) -> Result<(Measured, TableState, Vec<u64>)> {
        let mut workers = Vec::new();
        for _ in 0..processes {
            let worker = WorkerProcess::spawn(&self.url, &self.schema, concurrency, queue).await?;
            workers.push(worker);
        }
        let probe = Probe::start(admin).await?;
        for worker in &mut workers {
            worker.go().await?;
        }
        // A worker retries a failing statement forever, silently here: a drain slower than
        // 1,000 jobs a second is taken for a stall.
        let limit = Duration::from_secs(60 + jobs / 1_000);
        let shares = tokio::time::timeout(limit, async {
            let mut shares = Vec::new();
            for worker in &mut workers {
                shares.push(worker.handled().await?);
            }
            anyhow::Ok(shares)
        })
        .await
        .map_err(|_| anyhow::anyhow!("the drain stalled: not done after {limit:?}"))??;
        let stopped = probe.stop();
        // Their exit is not timed, as the raw clients' is not; their backends report their
        // statistics as they exit, before `finish` reads them.
        for worker in workers {
            worker.exit().await?;
        }
        let measured = stopped.finish(admin, jobs).await?;
        let state = table_state(admin, &self.name).await?;
        let handled: u64 = shares.iter().sum();
        // Jobs that returned a value are kept, done.
        let left: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {} WHERE state <> 'done'",
            self.name
        ))
        .fetch_one(admin)
        .await?;
        ensure!(
            handled == jobs && left == 0,
            "drain lost jobs: {handled} of {jobs} run, {left} left in the table"
        );
        Ok((measured, state, shares))
    }

    /// Enqueue-to-handler-start latency with an idle worker, over `samples` jobs put one at a
    /// time, a few milliseconds apart so that the worker is idle each time. In milliseconds,
    /// sorted.
    pub async fn latency(
        &self,
        admin: &PgPool,
        samples: u32,
        concurrency: usize,
    ) -> Result<Vec<f64>> {
        self.truncate(admin).await?;
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        if tasks::STARTED.set(started_tx).is_err() {
            bail!("the latency figure runs once per process");
        }
        let pq = connect(&self.url, &self.schema).await?;
        let stop = Arc::new(Notify::new());
        let worker = {
            let stop = Arc::clone(&stop);
            tokio::spawn(
                pq::Worker::new(pq.clone())
                    .queues([QUEUE])
                    .concurrency(concurrency)
                    .shutdown_on(async move { stop.notified().await })
                    .run(),
            )
        };
        // Let it start, find nothing, and wait.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut latencies = Vec::new();
        for n in 0..samples {
            let put = Instant::now();
            tasks::probe(n).enqueue(&pq).await?;
            let started_at = started_at(&mut started, n).await?;
            latencies.push(started_at.duration_since(put).as_secs_f64() * 1e3);
            // 5 to 15 ms apart, never in step with a timer.
            tokio::time::sleep(Duration::from_micros(5_000 + u64::from(n * 7_919 % 10_000))).await;
        }
        stop.notify_one();
        worker.await??;
        close(pq).await;
        latencies.sort_by(f64::total_cmp);
        Ok(latencies)
    }

    async fn expect_ready(&self, admin: &PgPool, expected: u64) -> Result<()> {
        let rows: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {} WHERE state = 'queued'",
            self.name
        ))
        .fetch_one(admin)
        .await?;
        ensure!(
            u64::try_from(rows)? == expected,
            "{}: {rows} queued jobs, expected {expected}",
            self.name
        );
        Ok(())
    }
}

/// A `Pq` on the benchmark's schema, with pq's default pool (10 connections: a few to spare,
/// as applications' pools have, so that pq keeps its connections between statements; see
/// pq-core/src/connections.rs).
pub async fn connect(url: &str, schema: &str) -> Result<Pq> {
    Ok(Pq::builder().schema(schema).connect(url).await?)
}

/// Opens `n` of the pool's connections now, so that the clock does not count connecting (the
/// raw clients' pools open theirs before it starts too).
async fn open_connections(pq: &Pq, n: usize) -> Result<()> {
    let mut opened = Vec::with_capacity(n);
    for _ in 0..n {
        opened.push(pq.pool().acquire().await?);
    }
    Ok(())
}

/// Closes the pool, so that its backends exit and report their statistics.
async fn close(pq: Pq) {
    pq.pool().close().await;
}

/// When probe `n` started, as it reported on `started` (within 10 s).
pub async fn started_at(
    started: &mut tokio::sync::mpsc::UnboundedReceiver<(u32, Instant)>,
    n: u32,
) -> Result<Instant> {
    loop {
        let (id, at) = tokio::time::timeout(Duration::from_secs(10), started.recv())
            .await
            .with_context(|| format!("probe {n} did not start within 10 s"))?
            .context("the probes' channel closed")?;
        if id == n {
            return Ok(at);
        }
    }
}

/// A child `pq-bench worker` process: connected, then waiting for `go`.
struct WorkerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<tokio::process::ChildStdout>,
}

impl WorkerProcess {
    async fn spawn(
        url: &str,
        schema: &str,
        concurrency: usize,
        queue: &str,
    ) -> Result<WorkerProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["worker", "--url", url, "--schema", schema])
            .args(["--concurrency", &concurrency.to_string(), "--queue", queue])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start a worker process")?;
        let stdin = child.stdin.take().context("the worker's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("the worker's stdout")?);
        let mut worker = WorkerProcess {
            child,
            stdin,
            stdout,
        };
        let line = worker.line().await?;
        ensure!(
            line == "ready",
            "the worker process said {line:?}, not ready"
        );
        Ok(worker)
    }

    async fn go(&mut self) -> Result<()> {
        self.stdin.write_all(b"go\n").await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Waits for the process to say it ran out of jobs; returns how many it ran.
    async fn handled(&mut self) -> Result<u64> {
        let line = self.line().await?;
        let handled = line
            .strip_prefix("handled ")
            .with_context(|| format!("the worker process said {line:?}"))?;
        Ok(handled.parse()?)
    }

    /// Waits for the process to exit, its connections closed.
    async fn exit(mut self) -> Result<()> {
        let status = self.child.wait().await?;
        ensure!(status.success(), "the worker process failed: {status}");
        Ok(())
    }

    async fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).await?;
        Ok(line.trim_end().to_owned())
    }
}

/// The `worker` command: connect, say `ready`, wait for `go`, work the queue to empty in burst
/// mode, say how many jobs were run.
pub async fn worker_process(
    url: &str,
    schema: &str,
    concurrency: usize,
    queue: &str,
) -> Result<()> {
    let pq = connect(url, schema).await?;
    // The worker's claimers, completer and lease tasks each use one.
    open_connections(&pq, 4).await?;
    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await?;
    stdout.flush().await?;
    let mut go = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut go)
        .await?;
    ensure!(go.trim_end() == "go", "expected go, got {go:?}");
    pq::Worker::new(pq.clone())
        .queues([queue])
        .concurrency(concurrency)
        .burst()
        .run()
        .await?;
    let handled = tasks::HANDLED.load(std::sync::atomic::Ordering::Relaxed);
    stdout
        .write_all(format!("handled {handled}\n").as_bytes())
        .await?;
    stdout.flush().await?;
    pq.pool().close().await;
    Ok(())
}
