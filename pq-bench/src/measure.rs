//! What the database did during a figure: WAL written and transactions committed, read from
//! `pg_current_wal_lsn()` and `pg_stat_database` before and after, and the state of a table
//! after a drain.

use std::time::{Duration, Instant};

use anyhow::Result;
use sqlx::PgPool;

/// One figure's outcome: jobs done, wall time, and what the database spent on them.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub jobs: u64,
    pub seconds: f64,
    /// WAL bytes written, cluster-wide.
    pub wal_bytes: i64,
    /// Transactions committed in this database (read-only ones included), per `pg_stat_database`.
    pub commits: i64,
    /// Transaction ids assigned, cluster-wide: the commits that wrote, each a WAL flush.
    pub write_commits: i64,
}

impl Measured {
    pub fn rate(&self) -> f64 {
        self.jobs as f64 / self.seconds
    }

    pub fn wal_per_job(&self) -> f64 {
        self.wal_bytes as f64 / self.jobs as f64
    }

    pub fn commits_per_job(&self) -> f64 {
        self.commits as f64 / self.jobs as f64
    }

    pub fn write_commits_per_job(&self) -> f64 {
        self.write_commits as f64 / self.jobs as f64
    }
}

/// The run's median by throughput (the lower middle of an even count).
pub fn median(mut runs: Vec<Measured>) -> Option<Measured> {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let middle = runs.len().checked_sub(1)? / 2;
    runs.get(middle).copied()
}

#[derive(Debug, Clone, Copy)]
struct Counters {
    wal: i64,
    commits: i64,
    next_xid: i64,
}

async fn counters(admin: &PgPool) -> Result<Counters> {
    // Statistics are read as a snapshot per transaction; each autocommit read is fresh.
    let (wal, commits, next_xid): (i64, i64, i64) = sqlx::query_as(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8, \
                xact_commit, \
                pg_snapshot_xmax(pg_current_snapshot())::text::int8 \
         FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(admin)
    .await?;
    Ok(Counters {
        wal,
        commits,
        next_xid,
    })
}

/// Appended to the benchmark's own statements on a table (TRUNCATE, ANALYZE), so that its
/// connection reports them at once: reported after a drain's, a TRUNCATE would zero the drain's
/// dead tuples.
pub const FLUSH_STATS: &str = "SELECT pg_stat_force_next_flush()";

/// The `application_name` of every connection that does a figure's work, the worker processes'
/// included, so that the counters can wait for them to be gone.
pub const LOAD_APPLICATION: &str = "pq-bench-load";

/// `url` with the load's `application_name`.
pub fn load_url(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={LOAD_APPLICATION}")
}

/// Backends report their commits to `pg_stat_database` when idle (at most once a second) or when
/// they exit. A figure closes its connections before it is read; this waits until their
/// backends are gone, and a moment more for the last of them to report. One still there after
/// 5 s would leave its commits uncounted: that is an error, not a figure.
async fn settled_counters(admin: &PgPool) -> Result<Counters> {
    let mut load: i64 = 0;
    for _ in 0..500 {
        load =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(LOAD_APPLICATION)
                .fetch_one(admin)
                .await?;
        if load == 0 {
            // A backend leaves `pg_stat_activity` just before it reports.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return counters(admin).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("{load} of the figure's connections still open after 5 s")
}

/// The clock and the counters, started just before a figure's timed part.
pub struct Probe {
    before: Counters,
    started: Instant,
}

impl Probe {
    /// Forces a checkpoint first, so that every figure starts from the same WAL state (each
    /// page's first change after it is logged whole).
    pub async fn start(admin: &PgPool) -> Result<Probe> {
        sqlx::query("CHECKPOINT").execute(admin).await?;
        let before = counters(admin).await?;
        Ok(Probe {
            before,
            started: Instant::now(),
        })
    }

    /// Stops the clock now; the counters are read once the figure's connections are closed.
    pub fn stop(self) -> Stopped {
        Stopped {
            before: self.before,
            elapsed: self.started.elapsed(),
        }
    }
}

/// A figure whose clock has stopped.
pub struct Stopped {
    before: Counters,
    elapsed: Duration,
}

impl Stopped {
    pub async fn finish(self, admin: &PgPool, jobs: u64) -> Result<Measured> {
        let after = settled_counters(admin).await?;
        Ok(Measured {
            jobs,
            seconds: self.elapsed.as_secs_f64(),
            wal_bytes: after.wal - self.before.wal,
            commits: after.commits - self.before.commits,
            write_commits: after.next_xid - self.before.next_xid,
        })
    }
}

/// A table's footprint, as left by a drain.
#[derive(Debug, Clone, Copy)]
pub struct TableState {
    pub rows: i64,
    pub table_bytes: i64,
    pub index_bytes: i64,
    pub dead_tuples: i64,
    /// Vacuums of the table so far, autovacuum's included: one since the drain explains few
    /// dead tuples.
    pub vacuums: i64,
}

/// `table` is schema-qualified and quoted.
pub async fn table_state(admin: &PgPool, table: &str) -> Result<TableState> {
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(admin)
        .await?;
    let (table_bytes, index_bytes, dead_tuples, vacuums): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT pg_table_size(relid), pg_indexes_size(relid), n_dead_tup, \
           vacuum_count + autovacuum_count \
         FROM pg_stat_user_tables WHERE relid = $1::regclass",
    )
    .bind(table)
    .fetch_one(admin)
    .await?;
    Ok(TableState {
        rows,
        table_bytes,
        index_bytes,
        dead_tuples,
        vacuums,
    })
}
