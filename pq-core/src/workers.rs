//! Workers' liveness: each worker process registers a row in `<table>_workers` and renews it
//! with one statement every so often (its heartbeat); the jobs it claims point at it. When its
//! heartbeat runs out, [`Pq::rescue`] returns its jobs to the queue. A running job's own row is
//! written only by its claim and its outcome.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};

use crate::error::Result;
use crate::job::JobId;
use crate::lease::{columns, micros, Claim};
use crate::pq::Pq;
use crate::timestamp::Timestamp;

/// A registered worker's id: its row in the table of workers, which its jobs point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(pub i64);

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a worker says of itself when it registers, shown to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The queues it works.
    pub queues: Vec<String>,
    /// How many jobs it runs at once.
    pub concurrency: u32,
    /// How long its registration holds without a heartbeat; its jobs are rescued after that.
    pub lease: Duration,
    /// The program's version, as it wants it shown.
    pub version: String,
    /// The only tasks whose jobs its claims take, or `None` for jobs of any task (and none).
    /// A worker that lists its tasks leaves the others' jobs queued for a worker that knows
    /// them: during a rolling deploy, a job of a task new or gone waits, not fails.
    pub tasks: Option<Vec<String>>,
}

/// What a heartbeat found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Whether the worker's lease had run out before this heartbeat: other workers may have
    /// rescued its jobs (their outcomes will then be refused). Renewed from now on.
    pub lapsed: bool,
    /// The worker's running jobs that someone asked to cancel ([`Admin::cancel`]), asked again
    /// at every heartbeat until they end.
    ///
    /// [`Admin::cancel`]: crate::Admin::cancel
    pub cancel: Vec<JobId>,
}

/// A worker as the table of workers shows it: [`Pq::workers`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct WorkerRow {
    /// Its id.
    pub id: WorkerId,
    /// The host it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: i32,
    /// The queues it works.
    pub queues: Vec<String>,
    /// How many jobs it runs at once.
    pub concurrency: i32,
    /// Its program's version.
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub seen_at: DateTime<Utc>,
    /// When its jobs become rescuable unless it beats again.
    pub expires_at: DateTime<Utc>,
    /// Whether its lease holds now.
    pub alive: bool,
    /// How many jobs it is running.
    pub running: i64,
}

impl serde::Serialize for WorkerId {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// The host's name, as the kernel has it, for the table of workers.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Pq {
    /// Registers a worker: its row, valid for `info.lease` unless renewed by
    /// [`heartbeat`](Pq::heartbeat). Its claims point at it.
    pub async fn register_worker(&self, info: &WorkerInfo) -> Result<WorkerId> {
        let sql = self.statements().await?;
        let id: i64 = self
            .with_connection("registering the worker", async |connection| {
                Ok(sql
                    .query_scalar(&sql.register)
                    .bind(micros(info.lease))
                    .bind(host_name())
                    .bind(i32::try_from(std::process::id()).unwrap_or(i32::MAX))
                    .bind(&info.queues)
                    .bind(i32::try_from(info.concurrency).unwrap_or(i32::MAX))
                    .bind(&info.version)
                    .bind(&info.tasks)
                    .fetch_one(connection)
                    .await?)
            })
            .await?;
        Ok(WorkerId(id))
    }

    /// Renews `worker`'s lease for `info.lease` from now, in one statement, and puts its row
    /// back if it was reaped. A statement that fails is tried again at once on a connection of
    /// its own, fresh: the pool's may all have died with the last one.
    pub async fn heartbeat(&self, worker: WorkerId, info: &WorkerInfo) -> Result<Heartbeat> {
        match self
            .with_connection("a heartbeat", async |connection| {
                beat(self, connection, worker, info).await
            })
            .await
        {
            Ok(beat) => Ok(beat),
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, "pq: a heartbeat failed; trying again on a new connection");
                let options = self.pool().connect_options();
                let deadline = self.statement_timeout();
                let again = async {
                    let mut connection = PgConnection::connect_with(&options).await?;
                    // In a transaction, which a transaction pooler needs (see `with_connection`).
                    let mut tx = connection.begin().await?;
                    let beat = beat(self, &mut tx, worker, info).await?;
                    tx.commit().await?;
                    let _ = connection.close().await;
                    Ok(beat)
                };
                tokio::time::timeout(deadline, again)
                    .await
                    .unwrap_or(Err(crate::Error::Timeout {
                        what: "a heartbeat",
                        after: deadline,
                    }))
            }
            Err(error) => Err(error),
        }
    }

    /// Deletes `worker`'s row, and gives back to the queue every job it still holds, its attempt
    /// uncounted, waking their consumers: the worker has stopped, and whatever it did not record
    /// (an outcome, a claim it abandoned half-way) runs again. Returns how many jobs it gave back.
    pub async fn deregister_worker(&self, worker: WorkerId) -> Result<u64> {
        let sql = self.statements().await?;
        // Its own statement, so that the release sees what the claims it waited for committed.
        self.with_connection("deregistering the worker", async |connection| {
            sql.query(&sql.deregister)
                .bind(worker.0)
                .execute(connection)
                .await?;
            Ok(())
        })
        .await?;
        self.release_unknown(worker, &[]).await
    }

    /// Gives back to the queue every job `worker` holds but those of `known`, their attempts
    /// uncounted, waking their consumers; returns how many. A claim that failed may have
    /// committed all the same (its connection was lost between the commit and the reply): its
    /// jobs are then the worker's in the table, unbeknown to it, and its heartbeat would keep
    /// them from rescue. No claim of the worker's may be in flight meanwhile.
    ///
    /// ```no_run
    /// # async fn example(pq: pq_core::Pq, worker: pq_core::WorkerId) -> pq_core::Result<()> {
    /// let known = []; // the claims the worker is running, or recording the outcome of
    /// let released = pq.release_unknown(worker, &known).await?;
    /// # Ok(()) }
    /// ```
    pub async fn release_unknown(&self, worker: WorkerId, known: &[Claim]) -> Result<u64> {
        let sql = self.statements().await?;
        let (_, ids, numbers) = columns(known);
        // A claim the worker abandoned may still be running in the server (its connection's
        // answer never came back), its jobs locked: it ends first, committed (its jobs are
        // then the worker's, and given back) or not (they are queued still), so that none of
        // them is missed, nor passed over by the next claims as another session's.
        let released: Vec<String> = self
            .with_connection("giving back unknown claims", async |connection| {
                let mut tx = sqlx::Connection::begin(&mut *connection).await?;
                sql.query(&sql.claims_over)
                    .bind(worker.0)
                    .execute(&mut *tx)
                    .await?;
                let released = sql
                    .query_scalar(&sql.release_held)
                    .bind(worker.0)
                    .bind(&ids)
                    .bind(&numbers)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(released)
            })
            .await?;
        let count = released.len() as u64;
        self.wake(released).await?;
        Ok(count)
    }

    /// Returns up to `limit` running jobs whose worker's heartbeat ran out (it died, froze or
    /// was cut off) to the queue, waking their consumers; returns how many. A job already lost
    /// with its worker `budget` times fails for good instead, so that a job that kills its
    /// worker every time still ends; a rescue does not count against its task's retries. Any
    /// process may call it; workers do so periodically.
    pub async fn rescue(&self, limit: u32, budget: u32) -> Result<u64> {
        let sql = self.statements().await?;
        let rescued: Vec<(String, bool)> = self
            .with_connection("a rescue", async |connection| {
                let rescued = sql
                    .query_as(&sql.rescue)
                    .bind(i64::from(limit))
                    .bind(i32::try_from(budget).unwrap_or(i32::MAX))
                    .bind("its worker was lost (its heartbeat stopped); the job runs again")
                    .bind(format!(
                        "gave up: lost with its worker {} times (at most {budget} allowed; does it \
                         crash its worker?)",
                        budget.saturating_add(1)
                    ))
                    .fetch_all(&mut *connection)
                    .await?;
                sql.query(&sql.reap_workers)
                    .execute(&mut *connection)
                    .await?;
                Ok(rescued)
            })
            .await?;
        let count = rescued.len() as u64;
        let queued: Vec<String> = rescued
            .into_iter()
            .filter_map(|(queue, queued)| queued.then_some(queue))
            .collect();
        self.wake(queued).await?;
        Ok(count)
    }

    /// Every registered worker, live or not yet reaped, with what it runs.
    pub async fn workers(&self) -> Result<Vec<WorkerRow>> {
        let sql = self.statements().await?;
        let statement = format!(
            "SELECT w.id, w.host, w.pid, w.queues, w.concurrency, w.version, w.started_at, \
               w.seen_at, w.expires_at, w.expires_at >= statement_timestamp(), \
               (SELECT count(*) FROM {t} AS j WHERE j.state = 'running' AND j.worker_id = w.id) \
             FROM {workers} AS w ORDER BY w.id",
            t = sql.table.qualified(),
            workers = sql.table.qualified_derived("workers"),
        );
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            i64,
            String,
            i32,
            Vec<String>,
            i32,
            String,
            Timestamp,
            Timestamp,
            Timestamp,
            bool,
            i64,
        )> = self
            .with_connection("listing workers", async |connection| {
                Ok(sql.query_as(&statement).fetch_all(connection).await?)
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| WorkerRow {
                id: WorkerId(row.0),
                host: row.1,
                pid: row.2,
                queues: row.3,
                concurrency: row.4,
                version: row.5,
                started_at: shown(row.6),
                seen_at: shown(row.7),
                expires_at: shown(row.8),
                alive: row.9,
                running: row.10,
            })
            .collect())
    }
}

/// A time of a worker's row, which pq writes, shown as the earliest time there is should other
/// SQL have written one out of range.
fn shown(time: Timestamp) -> DateTime<Utc> {
    time.to_chrono().unwrap_or(DateTime::<Utc>::MIN_UTC)
}

async fn beat(
    pq: &Pq,
    connection: &mut PgConnection,
    worker: WorkerId,
    info: &WorkerInfo,
) -> Result<Heartbeat> {
    let sql = pq.statements().await?;
    let beat: Option<(bool, Vec<i64>)> = sql
        .query_as(&sql.heartbeat)
        .bind(worker.0)
        .bind(micros(info.lease))
        .fetch_optional(&mut *connection)
        .await?;
    match beat {
        Some((lapsed, cancel)) => Ok(Heartbeat {
            lapsed,
            cancel: cancel.into_iter().map(JobId).collect(),
        }),
        None => {
            // Reaped: back under the same id, so that the jobs it still runs are its own.
            sql.query(&sql.register_again)
                .bind(worker.0)
                .bind(micros(info.lease))
                .bind(host_name())
                .bind(i32::try_from(std::process::id()).unwrap_or(i32::MAX))
                .bind(&info.queues)
                .bind(i32::try_from(info.concurrency).unwrap_or(i32::MAX))
                .bind(&info.version)
                .bind(&info.tasks)
                .execute(&mut *connection)
                .await?;
            Ok(Heartbeat {
                lapsed: true,
                cancel: Vec::new(),
            })
        }
    }
}
