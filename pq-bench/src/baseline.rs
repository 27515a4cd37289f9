//! The raw baseline: the plainest SQL that does each job, on a minimal table of the same
//! shape as pq's, in the same database and run. It bounds what any queue on this table can do.

use anyhow::{ensure, Result};
use sqlx::{Connection, PgConnection, PgPool};

use crate::measure::{Measured, Probe, FLUSH_STATS};
use crate::tasks::QUEUE;

/// The minimal queue table, with the one index a dequeue needs.
const CREATE: &str = "
    CREATE TABLE {table} (
        id      bigserial   PRIMARY KEY,
        queue   text        NOT NULL,
        payload json        NOT NULL,
        run_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX ON {table} (queue, run_at, id);";

const INSERT: &str = "INSERT INTO {table} (queue, payload) VALUES ($1, $2::json)";

const INSERT_MANY: &str =
    "INSERT INTO {table} (queue, payload) SELECT $1, p::json FROM unnest($2::text[]) AS p";

const FILL: &str = "INSERT INTO {table} (queue, payload) \
     SELECT $1, format('{\"n\":%s}', g)::json FROM generate_series(1, $2) AS g";

/// A batch of the drain: what every SKIP LOCKED queue does, without the bookkeeping.
const DELETE_BATCH: &str = "DELETE FROM {table} WHERE id IN ( \
       SELECT id FROM {table} WHERE queue = $1 AND run_at <= now() \
       ORDER BY run_at, id FOR UPDATE SKIP LOCKED LIMIT $2)";

/// The drain's batch size: `LIMIT 100`, as PEERS.md measured it.
pub const DRAIN_BATCH: i64 = 100;

/// The raw table of a schema.
pub struct RawTable {
    url: String,
    pub name: String,
}

impl RawTable {
    /// Creates `raw_jobs` in `schema` (which exists).
    pub async fn create(admin: &PgPool, url: &str, schema: &str) -> Result<RawTable> {
        let table = RawTable {
            url: url.to_owned(),
            name: format!("\"{schema}\".raw_jobs"),
        };
        sqlx::raw_sql(&table.sql(CREATE)).execute(admin).await?;
        Ok(table)
    }

    fn sql(&self, template: &str) -> String {
        template.replace("{table}", &self.name)
    }

    /// A connection a client, opened before the clock starts, with no pool in the way (a
    /// pool checks each connection it hands out or takes back with a round trip). Each client
    /// closes its own when done: its backend reports its commits as it exits.
    async fn clients(&self, clients: usize) -> Result<Vec<PgConnection>> {
        let mut connections = Vec::with_capacity(clients);
        for _ in 0..clients {
            connections.push(PgConnection::connect(&self.url).await?);
        }
        Ok(connections)
    }

    pub async fn truncate(&self, admin: &PgPool) -> Result<()> {
        sqlx::raw_sql(&self.sql(&format!("TRUNCATE {{table}}; {FLUSH_STATS}")))
            .execute(admin)
            .await?;
        Ok(())
    }

    /// `jobs` single-row INSERTs, each its own transaction, from `clients` connections.
    pub async fn insert_single(
        &self,
        admin: &PgPool,
        clients: usize,
        jobs: u64,
    ) -> Result<Measured> {
        self.truncate(admin).await?;
        let connections = self.clients(clients).await?;
        let insert = self.sql(INSERT);
        let probe = Probe::start(admin).await?;
        let mut handles = Vec::new();
        for (mut conn, share) in connections.into_iter().zip(shares(jobs, clients)) {
            let insert = insert.clone();
            handles.push(tokio::spawn(async move {
                for n in 0..share {
                    sqlx::query(&insert)
                        .bind(QUEUE)
                        .bind(format!("{{\"n\":{n}}}"))
                        .execute(&mut conn)
                        .await?;
                }
                anyhow::Ok(conn)
            }));
        }
        let mut connections = Vec::new();
        for handle in handles {
            connections.push(handle.await??);
        }
        let stopped = probe.stop();
        close(connections).await?;
        let measured = stopped.finish(admin, jobs).await?;
        self.expect_rows(admin, jobs).await?;
        Ok(measured)
    }

    /// `jobs` rows in multi-row INSERTs of `batch`, one client.
    pub async fn insert_batches(&self, admin: &PgPool, batch: u64, jobs: u64) -> Result<Measured> {
        self.truncate(admin).await?;
        let mut connections = self.clients(1).await?;
        let insert = self.sql(INSERT_MANY);
        let probe = Probe::start(admin).await?;
        let mut done = 0;
        while done < jobs {
            let size = batch.min(jobs - done);
            let payloads: Vec<String> = (done..done + size)
                .map(|n| format!("{{\"n\":{n}}}"))
                .collect();
            sqlx::query(&insert)
                .bind(QUEUE)
                .bind(payloads)
                .execute(&mut connections[0])
                .await?;
            done += size;
        }
        let stopped = probe.stop();
        close(connections).await?;
        let measured = stopped.finish(admin, jobs).await?;
        self.expect_rows(admin, jobs).await?;
        Ok(measured)
    }

    /// Writes `jobs` ready rows in one statement (not timed).
    pub async fn fill(&self, admin: &PgPool, jobs: u64) -> Result<()> {
        self.truncate(admin).await?;
        sqlx::query(&self.sql(FILL))
            .bind(QUEUE)
            .bind(i64::try_from(jobs)?)
            .execute(admin)
            .await?;
        sqlx::raw_sql(&self.sql(&format!("ANALYZE {{table}}; {FLUSH_STATS}")))
            .execute(admin)
            .await?;
        Ok(())
    }

    /// Deletes the filled rows in SKIP LOCKED batches from `clients` connections until none is
    /// left; `jobs` is how many were filled.
    pub async fn drain(&self, admin: &PgPool, clients: usize, jobs: u64) -> Result<Measured> {
        let connections = self.clients(clients).await?;
        let delete = self.sql(DELETE_BATCH);
        let probe = Probe::start(admin).await?;
        let mut handles = Vec::new();
        for mut conn in connections {
            let delete = delete.clone();
            handles.push(tokio::spawn(async move {
                let mut deleted = 0;
                loop {
                    let done = sqlx::query(&delete)
                        .bind(QUEUE)
                        .bind(DRAIN_BATCH)
                        .execute(&mut conn)
                        .await?;
                    if done.rows_affected() == 0 {
                        return anyhow::Ok((conn, deleted));
                    }
                    deleted += done.rows_affected();
                }
            }));
        }
        let (mut connections, mut deleted) = (Vec::new(), 0);
        for handle in handles {
            let (conn, n) = handle.await??;
            connections.push(conn);
            deleted += n;
        }
        let stopped = probe.stop();
        close(connections).await?;
        let measured = stopped.finish(admin, jobs).await?;
        ensure!(
            deleted == jobs,
            "raw drain deleted {deleted} rows of {jobs}"
        );
        self.expect_rows(admin, 0).await?;
        Ok(measured)
    }

    async fn expect_rows(&self, admin: &PgPool, expected: u64) -> Result<()> {
        let rows: i64 = sqlx::query_scalar(&self.sql("SELECT count(*) FROM {table}"))
            .fetch_one(admin)
            .await?;
        ensure!(
            u64::try_from(rows)? == expected,
            "{}: {rows} rows, expected {expected}",
            self.name
        );
        Ok(())
    }
}

/// `jobs` split between `parts`, as evenly as possible.
pub fn shares(jobs: u64, parts: usize) -> Vec<u64> {
    let parts = parts.max(1) as u64;
    (0..parts)
        .map(|i| jobs / parts + u64::from(i < jobs % parts))
        .collect()
}

/// Closes the clients' connections (untimed), so that their backends exit and report.
async fn close(connections: Vec<PgConnection>) -> Result<()> {
    for connection in connections {
        connection.close().await?;
    }
    Ok(())
}
