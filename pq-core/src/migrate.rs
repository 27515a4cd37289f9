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

/// A file of `migrations/`, embedded: `migration!(1, "0001_create_queue.sql")`.
macro_rules! migration {
    ($version:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../../migrations/", $name)),
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

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    #[test]
    fn migrations_are_numbered_in_order_as_their_files_are() {
        for (n, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, n as i64 + 1, "{}", migration.name);
            let prefix = format!("{:04}_", migration.version);
            assert!(migration.name.starts_with(&prefix), "{}", migration.name);
        }
    }
}
