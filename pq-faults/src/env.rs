//! A scenario's surroundings: its own PostgreSQL server with the queue and effects tables, the
//! processes it starts, and the waits every scenario needs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use pq::Pq;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::account::{Accounting, Duplicates, Ledger};
use crate::procs::{Fleet, Proc};
use crate::report::Report;
use crate::tasks;
use pq_pgserver::{Bouncer, Server};

/// Whether the scenarios' workers, producers and handle go through PgBouncer in transaction
/// pooling mode (`--via pgbouncer`), the suite's own statements still to the server itself.
pub static VIA_PGBOUNCER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub struct Env {
    pub server: Server,
    /// In front of the server, with `--via pgbouncer`.
    _bouncer: Option<Bouncer>,
    /// The suite's own connections: counting, disturbing, checking.
    pub db: PgPool,
    pub pq: Pq,
    pub fleet: Fleet,
    pub logs: PathBuf,
    /// The queue table, quoted and qualified.
    pub table: String,
    pub effects: String,
}

/// A handle's builder: through a transaction pooler when the server's own URL, `direct`, is
/// given beside its URL.
pub fn pq_builder(direct: Option<&str>) -> pq::PqBuilder {
    match direct {
        Some(direct) => Pq::builder().transaction_pooler().direct_url(direct),
        None => Pq::builder(),
    }
}

impl Env {
    /// Starts a server for scenario `name`, creates the tables, and logs into `logs`.
    pub async fn start(name: &str, logs: &Path) -> Result<Env> {
        std::fs::create_dir_all(logs)?;
        let server = Server::start(name).await?;
        let url = server.url();
        let db = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await?;
        let bouncer = match VIA_PGBOUNCER.load(std::sync::atomic::Ordering::Relaxed) {
            true => Some(Bouncer::start(name, server.port()).await?),
            false => None,
        };
        let (pooler, direct) = match &bouncer {
            Some(bouncer) => (bouncer.url("postgres"), Some(url.clone())),
            None => (url.clone(), None),
        };
        let pq = pq_builder(direct.as_deref())
            .schema(tasks::SCHEMA)
            .max_connections(4)
            .connect(&pooler)
            .await?;
        pq.create().await?;
        sqlx::query(&tasks::create_effects(tasks::SCHEMA))
            .execute(&db)
            .await?;
        tasks::use_schema(tasks::SCHEMA);
        Ok(Env {
            fleet: Fleet::new(&pooler, direct, tasks::SCHEMA, logs)?,
            _bouncer: bouncer,
            table: pq.table(),
            effects: tasks::effects_table(tasks::SCHEMA),
            server,
            db,
            pq,
            logs: logs.to_owned(),
        })
    }

    /// How many jobs match `condition` (SQL over the queue table's columns).
    pub async fn count(&self, condition: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {} WHERE {condition}",
            self.table
        ))
        .fetch_one(&self.db)
        .await?)
    }

    /// Waits for every producer to finish (at most `timeout`) and reads their ledgers. Returns
    /// the ledger and the deepest the queue got meanwhile.
    pub async fn wait_producers(
        &self,
        producers: &mut [Proc],
        timeout: Duration,
    ) -> Result<(Ledger, i64)> {
        let deadline = Instant::now() + timeout;
        let mut deepest = 0;
        loop {
            if producers.iter_mut().all(|p| p.exited().is_some()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("producers still running after {timeout:?}");
            }
            if let Ok(depth) = self.count("state = 'queued'").await {
                deepest = deepest.max(depth);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let mut ledger = Ledger::default();
        for producer in producers.iter_mut() {
            let status = producer.wait(Duration::from_secs(1)).await?;
            if !status.success() {
                bail!(
                    "{} exited with {status}; see {}",
                    producer.name,
                    self.logs.display()
                );
            }
            if let Some(path) = &producer.ledger {
                ledger.read(path)?;
            }
        }
        Ok((ledger, deepest))
    }

    /// Waits until `worker` is registered and alive (at most `timeout`): it then listens for
    /// its signals.
    pub async fn wait_registered(&self, worker: &Proc, timeout: Duration) -> Result<()> {
        let pid = i32::try_from(worker.pid)?;
        let deadline = Instant::now() + timeout;
        loop {
            let workers = self.pq.admin().workers().await?;
            if workers.iter().any(|w| w.pid == pid && w.alive) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not register within {timeout:?}", worker.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until no job is queued or running (at most `timeout`), riding out database errors.
    /// Gives up early when no job has finished for a minute: workers that cannot claim (a
    /// broken statement, say) only log, and would otherwise keep a run waiting for nothing.
    pub async fn wait_drained(&self, timeout: Duration) -> Result<()> {
        const STALL: Duration = Duration::from_secs(60);
        let deadline = Instant::now() + timeout;
        let (mut fewest, mut progressed) = (i64::MAX, Instant::now());
        loop {
            match self.count("state IN ('waiting', 'queued', 'running')").await {
                Ok(0) => return Ok(()),
                Ok(left) if left < fewest => (fewest, progressed) = (left, Instant::now()),
                Ok(left) if progressed.elapsed() > STALL => bail!(
                    "stalled: {left} jobs waiting, queued or running and none finished for {STALL:?}; see the workers' logs"
                ),
                _ => {}
            }
            if Instant::now() > deadline {
                let left = self
                    .count("state IN ('waiting', 'queued', 'running')")
                    .await
                    .ok();
                bail!("jobs still queued or running after {timeout:?}: {left:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends SIGTERM to every worker and waits for each to exit; each must exit 0 within its
    /// grace period (plus slack). Returns the slowest exit.
    pub async fn stop_workers(
        &self,
        workers: &mut Vec<Proc>,
        report: &mut Report,
    ) -> Result<Duration> {
        let started = Instant::now();
        for worker in workers.iter() {
            worker.signal("TERM")?;
        }
        let mut slowest = Duration::ZERO;
        for worker in workers.iter_mut() {
            let status = worker.wait(Duration::from_secs(60)).await?;
            slowest = slowest.max(started.elapsed());
            report.check(
                status.success(),
                format!(
                    "{} (pid {}) exited with {status} after SIGTERM",
                    worker.name, worker.pid
                ),
            );
        }
        workers.clear();
        Ok(slowest)
    }

    /// The final accounting, added to `report`. `kept`: the workers kept completed jobs.
    pub async fn account(
        &self,
        ledger: &Ledger,
        interrupted: &HashSet<u32>,
        duplicates: Duplicates,
        kept: bool,
        report: &mut Report,
    ) -> Result<Accounting> {
        let account = Accounting::take(
            &self.db,
            &self.table,
            &self.effects,
            ledger,
            interrupted,
            duplicates,
            kept,
        )
        .await?;
        account.report(report, duplicates);
        Ok(account)
    }
}
