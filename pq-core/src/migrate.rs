//! Creates and upgrades the queue table, online: the versioned changes of the table in
//! `sql/migrations/`, then the current definition of each of its functions in `sql/functions/`.
//!
//! A migration is what it says: a change of the table, its columns or its indexes. Each runs in
//! a transaction of its own that waits at most [`LOCK_TIMEOUT`] for its locks and is tried again
//! if it gets none, so that it never queues the table's puts and claims behind a reader; one
//! whose first line is `-- pq: no transaction` runs statement by statement outside a
//! transaction (an index built `CONCURRENTLY`). Functions are not migrated but defined: each
//! file holds the function's definition as it is now, applied whenever its text differs from
//! the one recorded in `<table>_functions`, so the claim is read in one place, not replayed
//! from history.
//!
//! One process migrates a schema at a time, under an advisory lock of its own connection, which
//! closing the connection releases whatever happens. Others wait for the lock without holding a
//! statement open (a statement waiting on it would in turn hold up `CREATE INDEX
//! CONCURRENTLY`, which waits for every open transaction).

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};

use crate::error::{Error, Result};
use crate::sql::{fnv1a, quote, render, Statements};

/// One versioned file of `sql/migrations/`, embedded at build time.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version, the number its file name starts with.
    pub version: i64,
    /// Its path under `sql/`.
    pub name: &'static str,
    /// Its SQL, with placeholders for the table's names.
    pub sql: &'static str,
}

impl Migration {
    /// Whether it runs in a transaction (all but those marked `-- pq: no transaction`).
    pub fn transactional(&self) -> bool {
        !self.sql.starts_with("-- pq: no transaction")
    }
}

/// A file of `sql/migrations/`, embedded: `migration!(1, "0001_create_queue.sql")`.
macro_rules! migration {
    ($version:literal, $name:literal) => {
        Migration {
            version: $version,
            name: concat!("migrations/", $name),
            sql: include_str!(concat!("../sql/migrations/", $name)),
        }
    };
}

/// Every migration, in the order they apply.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_create_queue.sql"),
    migration!(2, "0002_admin_indexes.sql"),
    migration!(3, "0003_notify_only_waiters.sql"),
    migration!(4, "0004_dequeue_from_a_cursor.sql"),
    migration!(5, "0005_notify_check_in_when.sql"),
    migration!(6, "0006_notify_per_queue.sql"),
    migration!(7, "0007_put_decides_to_notify.sql"),
    migration!(8, "0008_one_index_out_of_the_queue.sql"),
    migration!(9, "0009_claim_with_a_cached_plan.sql"),
    migration!(10, "0010_workers_and_claim_ids.sql"),
    migration!(11, "0011_ready_first.sql"),
    migration!(12, "0012_snoozes.sql"),
    migration!(13, "0013_cancel_requests.sql"),
    migration!(14, "0014_queue_settings.sql"),
    migration!(15, "0015_job_meta_and_unique_keys.sql"),
    migration!(16, "0016_unique_keys.sql"),
    migration!(17, "0017_schedules.sql"),
    migration!(18, "0018_worker_tasks.sql"),
    migration!(19, "0019_flow_control.sql"),
    migration!(20, "0020_flow_indexes.sql"),
    migration!(21, "0021_key_rates.sql"),
    migration!(22, "0022_results.sql"),
    migration!(23, "0023_expiry_index.sql"),
    migration!(24, "0024_steps.sql"),
    migration!(25, "0025_dependencies.sql"),
];

/// The newest migration: what this pq's statements need, and the newest it knows.
pub const LATEST: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The current definition of one of the table's functions (a file of `sql/functions/`).
#[derive(Debug, Clone, Copy)]
pub struct Function {
    /// Its path under `sql/`.
    pub name: &'static str,
    /// Its SQL, with placeholders for the table's names.
    pub sql: &'static str,
}

macro_rules! function {
    ($name:literal) => {
        Function {
            name: concat!("functions/", $name),
            sql: include_str!(concat!("../sql/functions/", $name)),
        }
    };
}

/// Every function of the table, applied after the migrations.
pub const FUNCTIONS: &[Function] = &[
    function!("claim.sql"),
    function!("claim_limited.sql"),
    function!("notify.sql"),
    function!("wait.sql"),
    function!("settle.sql"),
];

/// How long a migration's transaction waits for a lock before it gives up and tries again: a
/// statement waiting for a lock makes every later statement on the table wait behind it.
const LOCK_TIMEOUT: &str = "2s";

/// How many times a migration whose locks were not free is tried.
const LOCK_TRIES: u32 = 30;

pub(crate) async fn run(options: &PgConnectOptions, sql: &Statements, to: i64) -> Result<()> {
    let mut connection = PgConnection::connect_with(options).await?;
    let migrated = migrate(&mut connection, sql, to).await;
    // Releases the migration lock too, whatever happened above.
    let _ = connection.close().await;
    migrated
}

async fn migrate(connection: &mut PgConnection, sql: &Statements, to: i64) -> Result<()> {
    lock(connection, sql.table.migration_lock_key()).await?;
    let migrations = &sql.migrations_table;
    let functions = &sql.functions_table;
    let mut setup = String::new();
    if let Some(schema) = &sql.table.schema {
        setup.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {};", quote(schema)));
    }
    setup.push_str(&format!(
        "CREATE TABLE IF NOT EXISTS {migrations} (version bigint PRIMARY KEY, \
           name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now()); \
         CREATE TABLE IF NOT EXISTS {functions} (name text PRIMARY KEY, \
           checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());"
    ));
    in_transaction(connection, "the migrations table", &setup).await?;

    let applied: Vec<i64> = sqlx::query_scalar(&format!("SELECT version FROM {migrations}"))
        .fetch_all(&mut *connection)
        .await?;
    if let Some(&newest) = applied.iter().max().filter(|&&newest| newest > LATEST) {
        return Err(Error::SchemaTooNew {
            table: sql.table.qualified(),
            applied: newest,
            known: LATEST,
        });
    }
    let pending = MIGRATIONS
        .iter()
        .filter(|m| m.version <= to && !applied.contains(&m.version));
    for migration in pending {
        let rendered = render(migration.sql, &sql.table);
        let record = format!(
            "INSERT INTO {migrations} (version, name) VALUES ({}, {})",
            migration.version,
            crate::sql::quote_literal(migration.name)
        );
        if migration.transactional() {
            in_transaction(
                connection,
                migration.name,
                &format!("{rendered};\n{record}"),
            )
            .await?;
        } else {
            outside_transaction(connection, migration.name, &rendered).await?;
            connection.execute(record.as_str()).await?;
        }
        tracing::info!(
            migration = migration.name,
            table = %sql.table.qualified(),
            "pq: applied migration"
        );
    }

    // The functions are written for the newest table only.
    let recorded: Vec<(String, String)> = if to >= LATEST {
        sqlx::query_as(&format!("SELECT name, checksum FROM {functions}"))
            .fetch_all(&mut *connection)
            .await?
    } else {
        Vec::new()
    };
    for function in FUNCTIONS.iter().filter(|_| to >= LATEST) {
        let rendered = render(function.sql, &sql.table);
        let checksum = format!("{:016x}", fnv1a(rendered.as_bytes()));
        let current = recorded
            .iter()
            .any(|(name, sum)| name == function.name && *sum == checksum);
        if current {
            continue;
        }
        let record = format!(
            "INSERT INTO {functions} (name, checksum) VALUES ({name}, {sum}) \
             ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, applied_at = now()",
            name = crate::sql::quote_literal(function.name),
            sum = crate::sql::quote_literal(&checksum),
        );
        in_transaction(connection, function.name, &format!("{rendered};\n{record}")).await?;
        tracing::info!(function = function.name, table = %sql.table.qualified(), "pq: defined function");
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(sql.table.migration_lock_key())
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Takes the migration lock of the schema, waiting for another process's migration to end
/// without a statement open meanwhile.
async fn lock(connection: &mut PgConnection, key: i64) -> Result<()> {
    let mut delay = Duration::from_millis(20);
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *connection)
            .await?;
        if locked {
            return Ok(());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// Runs `script` (statements separated by semicolons) in a transaction that waits at most
/// [`LOCK_TIMEOUT`] for each lock, again while its locks are not free.
async fn in_transaction(
    connection: &mut PgConnection,
    name: &'static str,
    script: &str,
) -> Result<()> {
    let mut delay = Duration::from_millis(100);
    for attempt in 1.. {
        let mut tx = connection.begin().await?;
        let ran = async {
            tx.execute(format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'").as_str())
                .await?;
            tx.execute(script).await
        }
        .await;
        match ran {
            Ok(_) => {
                tx.commit().await?;
                return Ok(());
            }
            Err(error) if lock_not_available(&error) && attempt < LOCK_TRIES => {
                drop(tx);
                tracing::warn!(
                    migration = name,
                    attempt,
                    ?delay,
                    "pq: a migration's locks are busy; trying again"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(error) => return Err(Error::Migration { name, error }),
        }
    }
    unreachable!("the loop returns")
}

/// Runs the statements of `script` one by one outside a transaction, each allowed to wait as
/// long as it needs: `CREATE INDEX CONCURRENTLY` waits for the transactions open when it starts,
/// holding no lock that puts or claims wait for. Each statement ends with a semicolon at the end
/// of a line, and none holds one there inside it.
async fn outside_transaction(
    connection: &mut PgConnection,
    name: &'static str,
    script: &str,
) -> Result<()> {
    connection.execute("SET lock_timeout = 0").await?;
    for statement in statements(script) {
        connection
            .execute(statement)
            .await
            .map_err(|error| Error::Migration { name, error })?;
    }
    Ok(())
}

/// The statements of a script run outside a transaction: up to each semicolon that ends a line,
/// without the comments and blank lines between them.
fn statements(script: &str) -> Vec<&str> {
    let mut statements = Vec::new();
    let mut start = 0;
    for (end, _) in script.match_indices(";\n").chain([(script.len(), "")]) {
        let statement = script[start..end].trim();
        let code = statement
            .lines()
            .filter(|line| !line.trim_start().starts_with("--"))
            .any(|line| !line.trim().is_empty());
        if code {
            statements.push(statement);
        }
        start = (end + 1).min(script.len());
    }
    statements
}

fn lock_not_available(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_as_their_files_are() {
        for (n, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, n as i64 + 1, "{}", migration.name);
            let prefix = format!("migrations/{:04}_", migration.version);
            assert!(migration.name.starts_with(&prefix), "{}", migration.name);
        }
    }

    #[test]
    fn a_script_outside_a_transaction_splits_into_its_statements() {
        let script = "-- pq: no transaction\n--\n-- why\n\nDROP INDEX a;\n\nCREATE INDEX b\n    ON t (x);\n-- end\n";
        assert_eq!(
            statements(script),
            [
                "-- pq: no transaction\n--\n-- why\n\nDROP INDEX a",
                "CREATE INDEX b\n    ON t (x)"
            ]
        );
        let migration = MIGRATIONS.iter().find(|m| !m.transactional()).unwrap();
        assert!(statements(migration.sql).len() >= 2, "{}", migration.name);
    }
}
