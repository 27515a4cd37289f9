//! Creates and upgrades the queue table from the plain SQL files in `migrations/`.

use sqlx::{Executor, PgPool, Postgres};

use crate::error::{Error, Result};
use crate::sql::{quote, render_migration, Statements};

/// One versioned file of `migrations/`, embedded at build time.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version, the number its file name starts with.
    pub version: i64,
    /// Its file name.
    pub name: &'static str,
    /// Its SQL, with placeholders for the table's names.
    pub sql: &'static str,
}

/// Every migration, in the order they apply.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_create_queue.sql",
        sql: include_str!("../../migrations/0001_create_queue.sql"),
    },
    Migration {
        version: 2,
        name: "0002_admin_indexes.sql",
        sql: include_str!("../../migrations/0002_admin_indexes.sql"),
    },
    Migration {
        version: 3,
        name: "0003_notify_only_waiters.sql",
        sql: include_str!("../../migrations/0003_notify_only_waiters.sql"),
    },
    Migration {
        version: 4,
        name: "0004_dequeue_from_a_cursor.sql",
        sql: include_str!("../../migrations/0004_dequeue_from_a_cursor.sql"),
    },
    Migration {
        version: 5,
        name: "0005_notify_check_in_when.sql",
        sql: include_str!("../../migrations/0005_notify_check_in_when.sql"),
    },
    Migration {
        version: 6,
        name: "0006_notify_per_queue.sql",
        sql: include_str!("../../migrations/0006_notify_per_queue.sql"),
    },
];

pub(crate) async fn run(pool: &PgPool, sql: &Statements) -> Result<()> {
    let mut tx = pool.begin().await?;
    // Serialises concurrent `create`s on one schema; the lock ends with the transaction.
    // (The `Executor` methods are called directly: sqlx's generic `execute` helpers trip a
    // rustc limitation on futures that must be `Send`.)
    tx.execute(
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(sql.table.migration_lock_key()),
    )
    .await?;
    if let Some(schema) = &sql.table.schema {
        tx.execute(&*format!("CREATE SCHEMA IF NOT EXISTS {}", quote(schema)))
            .await?;
    }
    let migrations = &sql.migrations_table;
    tx.execute(&*format!(
        "CREATE TABLE IF NOT EXISTS {migrations} (version bigint PRIMARY KEY, \
         name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await?;
    let applied: Vec<(i64,)> = tx
        .fetch_all(sqlx::query_as::<Postgres, (i64,)>(&format!(
            "SELECT version FROM {migrations}"
        )))
        .await
        .and_then(|rows| rows.iter().map(sqlx::FromRow::from_row).collect())?;
    for migration in MIGRATIONS
        .iter()
        .filter(|m| !applied.contains(&(m.version,)))
    {
        let rendered = render_migration(migration.sql, &sql.table);
        tx.execute(&*rendered)
            .await
            .map_err(|error| Error::Migration {
                version: migration.version,
                name: migration.name,
                error,
            })?;
        tx.execute(
            sqlx::query(&format!(
                "INSERT INTO {migrations} (version, name) VALUES ($1, $2)"
            ))
            .bind(migration.version)
            .bind(migration.name),
        )
        .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            table = %sql.table.qualified(),
            "pq: applied migration"
        );
    }
    tx.commit().await?;
    Ok(())
}
