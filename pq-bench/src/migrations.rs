//! What each migration costs the table it upgrades: how long it takes, and for how long it holds
//! a lock that puts, claims and completions wait behind, on a table of many jobs.

use std::time::{Duration, Instant};

use anyhow::Result;
use pq::Pq;
use sqlx::PgPool;

/// Locks on the table that a put (ROW EXCLUSIVE) waits for.
const BLOCKING: &str =
    "'ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'";

/// Each migration from the second on, applied to a fresh table of `rows` jobs that the ones
/// before it made, while another session samples the table's locks every millisecond. Returns
/// a table of the results.
pub async fn migrations(admin: &PgPool, url: &str, schema: &str, rows: u64) -> Result<String> {
    let mut out = format!(
        "Migrations, each applied to a table of {rows} jobs at the version before it:\n\n\
         | migration | took | held a lock puts wait for | strongest lock on the table |\n|---|---:|---:|---|\n"
    );
    for migration in &pq::MIGRATIONS[1..] {
        let schema = format!("{schema}_m{}", migration.version);
        let pq = Pq::builder().schema(&schema).connect(url).await?;
        pq.migrate_to(migration.version - 1).await?;
        sqlx::raw_sql(&format!(
            "INSERT INTO {t} (q_name, data) SELECT 'q' || (n % 10), '{{\"n\": 1}}' \
             FROM generate_series(1, {rows}) AS n; ANALYZE {t};",
            t = pq.table()
        ))
        .execute(admin)
        .await?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let watching = tokio::spawn(watch_locks(admin.clone(), pq.table(), stopped));
        let started = Instant::now();
        pq.migrate_to(migration.version).await?;
        let took = started.elapsed();
        let _ = stop.send(());
        let (blocked, strongest) = watching.await??;
        out.push_str(&format!(
            "| {} | {:.2} s | {:.2} s | {} |\n",
            migration.name,
            took.as_secs_f64(),
            blocked.as_secs_f64(),
            if strongest.is_empty() {
                "-"
            } else {
                &strongest
            },
        ));
        pq.pool().close().await;
        sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(admin)
            .await?;
    }
    Ok(out)
}

/// Samples the locks held on `table` until `stop`: the longest stretch a lock that puts wait
/// for was held, and the strongest mode seen.
async fn watch_locks(
    admin: PgPool,
    table: String,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(Duration, String)> {
    // From the weakest to the strongest.
    const MODES: [&str; 8] = [
        "AccessShareLock",
        "RowShareLock",
        "RowExclusiveLock",
        "ShareUpdateExclusiveLock",
        "ShareLock",
        "ShareRowExclusiveLock",
        "ExclusiveLock",
        "AccessExclusiveLock",
    ];
    let sample = format!(
        "SELECT mode, mode IN ({BLOCKING}) FROM pg_locks \
         WHERE relation = to_regclass($1) AND granted AND pid <> pg_backend_pid()"
    );
    let (mut longest, mut since, mut strongest) = (Duration::ZERO, None::<Instant>, None);
    loop {
        let held: Vec<(String, bool)> = sqlx::query_as(&sample)
            .bind(&table)
            .fetch_all(&admin)
            .await?;
        for (mode, _) in &held {
            let rank = MODES.iter().position(|m| m == mode);
            if rank > strongest {
                strongest = rank;
            }
        }
        match (held.iter().any(|(_, blocks)| *blocks), since) {
            (true, None) => since = Some(Instant::now()),
            (false, Some(start)) => {
                longest = longest.max(start.elapsed());
                since = None;
            }
            _ => {}
        }
        if stop.try_recv().is_ok() {
            if let Some(start) = since {
                longest = longest.max(start.elapsed());
            }
            return Ok((
                longest,
                strongest.map(|r| MODES[r].to_owned()).unwrap_or_default(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
