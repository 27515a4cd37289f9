//! Recurring jobs' schedules, one row each in `<table>_schedules` (migration 17): declared by
//! the workers that define them, fired by whichever gets a due row first, shown and steered by
//! operators. What an expression means is the caller's business (pq-worker's `cron`); this
//! module stores schedules, locks them and writes their jobs.

use chrono::{DateTime, Utc};
use sqlx::{Connection, Row};

use crate::error::Result;
use crate::job::{JobId, NewJob};
use crate::pq::Pq;
use crate::queue::{insert_jobs, insert_warm};

/// A schedule as a worker declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleDefinition {
    /// Its name, the key of its row: the task's name for a `cron` task.
    pub name: String,
    /// Its cron expression.
    pub expression: String,
    /// The time zone its expression is read in (an IANA name).
    pub timezone: String,
    /// What its missed fires come to (`coalesce`, `catch_up` or `skip`).
    pub on_missed: String,
    /// The task its jobs run.
    pub task: String,
    /// The queue its jobs go to.
    pub queue: String,
    /// Its jobs' arguments, as JSON text.
    pub data: String,
    /// Its first fire time, should its row be new or its expression or time zone changed.
    pub next_at: DateTime<Utc>,
}

/// A schedule whose fire time has come, locked until its [`Firing`] is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueSchedule {
    /// Its name.
    pub name: String,
    /// Its cron expression, as stored (a newer worker may have changed it).
    pub expression: String,
    /// Its time zone, as stored.
    pub timezone: String,
    /// What its missed fires come to, as stored.
    pub on_missed: String,
    /// The task its jobs run.
    pub task: String,
    /// The queue its jobs go to.
    pub queue: String,
    /// Its jobs' arguments, as JSON text.
    pub data: String,
    /// Its fire time that has come: the first that no job was written for.
    pub next_at: DateTime<Utc>,
    /// Its last fire time that wrote a job: fire times up to it are never written again.
    pub last_at: Option<DateTime<Utc>>,
}

/// What to write for a due schedule: its jobs, and its fire time after them.
#[derive(Debug)]
pub struct Firing {
    /// The jobs of its fire times that have come (none, for a skipped one).
    pub jobs: Vec<NewJob>,
    /// Its next fire time, later than now.
    pub next_at: DateTime<Utc>,
    /// The latest fire time these jobs stand for, if any.
    pub fired: Option<DateTime<Utc>>,
}

/// A schedule as operators see it: [`Admin::schedules`](crate::Admin::schedules).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// Its name.
    pub name: String,
    /// Its cron expression.
    pub expression: String,
    /// Its time zone.
    pub timezone: String,
    /// What its missed fires come to.
    pub on_missed: String,
    /// The task its jobs run.
    pub task: String,
    /// The queue its jobs go to.
    pub queue: String,
    /// Its next fire time.
    pub next_at: DateTime<Utc>,
    /// Its last fire time that wrote a job.
    pub last_at: Option<DateTime<Utc>>,
    /// The last job it wrote.
    pub last_job: Option<i64>,
    /// Since when it is paused, if it is.
    pub paused_at: Option<DateTime<Utc>>,
    /// When a worker last declared it.
    pub seen_at: DateTime<Utc>,
    /// Whether no running worker declared it for [`ORPHANED_AFTER`]: no binary defines it any
    /// more (or none runs). It stays, and fires should a worker declare it again, until an
    /// operator deletes it.
    pub orphaned: bool,
}

/// How long after a worker last declared a schedule it shows as orphaned: workers declare their
/// schedules again every [`DECLARE_EVERY`].
pub const ORPHANED_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// How often a worker declares its schedules again, to show that it still defines them.
pub const DECLARE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a worker's transaction that fires schedules may stall before the server ends it,
/// releasing their locks for other workers.
pub const FIRING_STALLS_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

impl Pq {
    /// The database's clock, which decides when schedules fire.
    pub async fn database_now(&self) -> Result<DateTime<Utc>> {
        self.with_connection("reading the clock", async |connection| {
            Ok(sqlx::query_scalar("SELECT statement_timestamp()")
                .persistent(false)
                .fetch_one(connection)
                .await?)
        })
        .await
    }

    /// Declares schedules: writes those that are new, gives those that exist these
    /// definitions (their next fire time changes only with their expression or time zone), and
    /// marks them all seen now.
    pub async fn declare_schedules(&self, schedules: &[ScheduleDefinition]) -> Result<()> {
        if schedules.is_empty() {
            return Ok(());
        }
        let sql = self.statements().await?;
        let table = sql.table.qualified_derived("schedules");
        let statement = format!(
            "INSERT INTO {table} AS s (name, expression, timezone, on_missed, task, q_name, \
               data, next_at) \
             SELECT n, e, z, m, t, q, d::json, x FROM unnest($1::text[], $2::text[], \
               $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[]) \
               AS d(n, e, z, m, t, q, d, x) \
             ON CONFLICT (name) DO UPDATE SET \
               next_at = CASE WHEN (s.expression, s.timezone) \
                   IS DISTINCT FROM (EXCLUDED.expression, EXCLUDED.timezone) \
                   AND EXCLUDED.next_at > COALESCE(s.last_at, '-infinity') \
                 THEN EXCLUDED.next_at ELSE s.next_at END, \
               expression = EXCLUDED.expression, timezone = EXCLUDED.timezone, \
               on_missed = EXCLUDED.on_missed, task = EXCLUDED.task, q_name = EXCLUDED.q_name, \
               data = EXCLUDED.data, seen_at = statement_timestamp()"
        );
        let column = |f: fn(&ScheduleDefinition) -> &String| -> Vec<&str> {
            schedules.iter().map(|s| f(s).as_str()).collect()
        };
        let next: Vec<DateTime<Utc>> = schedules.iter().map(|s| s.next_at).collect();
        self.with_connection("declaring schedules", async |connection| {
            sql.query(&statement)
                .bind(column(|s| &s.name))
                .bind(column(|s| &s.expression))
                .bind(column(|s| &s.timezone))
                .bind(column(|s| &s.on_missed))
                .bind(column(|s| &s.task))
                .bind(column(|s| &s.queue))
                .bind(column(|s| &s.data))
                .bind(&next)
                .execute(connection)
                .await?;
            Ok(())
        })
        .await
    }

    /// Fires the schedules among `names` whose fire time has come, on the database's clock:
    /// locks each (a schedule another worker is firing is left to it), asks `fire` what to
    /// write for it given the database's time (`None`: leave it as it is), and writes that and
    /// its next fire time, all in one transaction, which the server ends should this process
    /// stall in it for [`FIRING_STALLS_AFTER`] (a frozen worker must not hold a schedule's
    /// lock). Returns the database's time and the earliest next fire time of these schedules
    /// that are not paused, to know how long to wait.
    pub async fn fire_schedules(
        &self,
        names: &[String],
        mut fire: impl FnMut(&DueSchedule, DateTime<Utc>) -> Option<Firing>,
    ) -> Result<(DateTime<Utc>, Option<DateTime<Utc>>)> {
        let sql = self.statements().await?;
        let table = sql.table.qualified_derived("schedules");
        let due = format!(
            "SELECT name, expression, timezone, on_missed, task, q_name, data::text, next_at, \
               last_at \
             FROM {table} WHERE name = ANY ($1) AND paused_at IS NULL \
               AND next_at <= statement_timestamp() \
             ORDER BY name FOR UPDATE SKIP LOCKED"
        );
        let advance = format!(
            "UPDATE {table} SET next_at = $2, last_at = COALESCE($3, last_at), \
               last_job = COALESCE($4, last_job) WHERE name = $1"
        );
        let earliest =
            format!("SELECT min(next_at) FROM {table} WHERE name = ANY ($1) AND paused_at IS NULL");
        self.with_connection("firing schedules", async |connection| {
            let mut tx = connection.begin().await?;
            let stalls = FIRING_STALLS_AFTER.as_millis();
            let now: DateTime<Utc> = sqlx::query_scalar(&format!(
                "SELECT statement_timestamp() \
                 FROM set_config('idle_in_transaction_session_timeout', '{stalls}', true)"
            ))
            .persistent(false)
            .fetch_one(&mut *tx)
            .await?;
            let rows = sql.query(&due).bind(names).fetch_all(&mut *tx).await?;
            for row in &rows {
                let schedule = DueSchedule {
                    name: row.try_get(0)?,
                    expression: row.try_get(1)?,
                    timezone: row.try_get(2)?,
                    on_missed: row.try_get(3)?,
                    task: row.try_get(4)?,
                    queue: row.try_get(5)?,
                    data: row.try_get(6)?,
                    next_at: row.try_get(7)?,
                    last_at: row.try_get(8)?,
                };
                let Some(firing) = fire(&schedule, now) else {
                    continue;
                };
                let written = insert_jobs(sql, &mut tx, firing.jobs).await?;
                sql.query(&advance)
                    .bind(&schedule.name)
                    .bind(firing.next_at)
                    .bind(firing.fired)
                    .bind(written.last().map(|job| job.id().0))
                    .execute(&mut *tx)
                    .await?;
            }
            let next: Option<DateTime<Utc>> = sql
                .query_scalar(&earliest)
                .bind(names)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok((now, next))
        })
        .await
    }

    /// Every schedule of the table, by name.
    pub(crate) async fn schedules(&self) -> Result<Vec<ScheduleInfo>> {
        let sql = self.statements().await?;
        let table = sql.table.qualified_derived("schedules");
        let statement = format!(
            "SELECT name, expression, timezone, on_missed, task, q_name AS queue, next_at, \
               last_at, last_job, paused_at, seen_at, \
               seen_at < statement_timestamp() - $1 * interval '1 microsecond' AS orphaned \
             FROM {table} ORDER BY name"
        );
        let orphaned = i64::try_from(ORPHANED_AFTER.as_micros()).unwrap_or(i64::MAX);
        let rows = self
            .with_connection("listing schedules", async |connection| {
                Ok(sql
                    .query(&statement)
                    .bind(orphaned)
                    .fetch_all(connection)
                    .await?)
            })
            .await?;
        rows.iter()
            .map(|row| {
                Ok(ScheduleInfo {
                    name: row.try_get(0)?,
                    expression: row.try_get(1)?,
                    timezone: row.try_get(2)?,
                    on_missed: row.try_get(3)?,
                    task: row.try_get(4)?,
                    queue: row.try_get(5)?,
                    next_at: row.try_get(6)?,
                    last_at: row.try_get(7)?,
                    last_job: row.try_get(8)?,
                    paused_at: row.try_get(9)?,
                    seen_at: row.try_get(10)?,
                    orphaned: row.try_get(11)?,
                })
            })
            .collect()
    }

    /// Pauses (`true`) or resumes schedule `name`; whether it changed, `None` if there is no
    /// such schedule. Fires that come while it is paused are missed ones once it resumes.
    pub(crate) async fn pause_schedule(&self, name: &str, pause: bool) -> Result<Option<bool>> {
        let sql = self.statements().await?;
        let table = sql.table.qualified_derived("schedules");
        let statement = format!(
            "WITH s AS (SELECT name, paused_at FROM {table} WHERE name = $1 FOR UPDATE), \
               changed AS (UPDATE {table} AS t SET paused_at = CASE WHEN $2 \
                   THEN statement_timestamp() END \
                 FROM s WHERE t.name = s.name AND (s.paused_at IS NULL) = $2 RETURNING t.name) \
             SELECT EXISTS (SELECT FROM changed) FROM s"
        );
        self.with_connection("pausing a schedule", async |connection| {
            Ok(sql
                .query_scalar(&statement)
                .bind(name)
                .bind(pause)
                .fetch_optional(connection)
                .await?)
        })
        .await
    }

    /// Writes a job of schedule `name` now, beside its fire times; `None` if there is none.
    pub(crate) async fn trigger_schedule(&self, name: &str) -> Result<Option<JobId>> {
        let sql = self.statements().await?;
        let table = sql.table.qualified_derived("schedules");
        let statement = format!(
            "SELECT task, q_name, data::text, statement_timestamp() FROM {table} WHERE name = $1"
        );
        let found: Option<(String, String, String, DateTime<Utc>)> = self
            .with_connection("reading a schedule", async |connection| {
                Ok(sql
                    .query_as(&statement)
                    .bind(name)
                    .fetch_optional(connection)
                    .await?)
            })
            .await?;
        let Some((task, queue, data, now)) = found else {
            return Ok(None);
        };
        let job = fired_job(name, &task, &queue, data, now, 1)?.meta("triggered", true);
        Ok(Some(insert_warm(self, job).await?.id()))
    }

    /// Deletes schedule `name` (an orphaned one, say); whether there was one. A worker that
    /// still defines it declares it again.
    pub(crate) async fn delete_schedule(&self, name: &str) -> Result<bool> {
        let sql = self.statements().await?;
        let table = sql.table.qualified_derived("schedules");
        let statement = format!("DELETE FROM {table} WHERE name = $1");
        self.with_connection("deleting a schedule", async |connection| {
            let deleted = sql.query(&statement).bind(name).execute(connection).await?;
            Ok(deleted.rows_affected() > 0)
        })
        .await
    }
}

/// The job of schedule `name` for its fire time `fire`, standing for `fires` fire times: its
/// meta says so (`{"cron": {"schedule": .., "fire": .., "fires": ..}}`), for the run's context.
pub fn fired_job(
    name: &str,
    task: &str,
    queue: &str,
    data: String,
    fire: DateTime<Utc>,
    fires: u64,
) -> Result<NewJob> {
    Ok(NewJob::from_json(queue, data)?.task(task).meta(
        "cron",
        serde_json::json!({
            "schedule": name,
            "fire": fire.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "fires": fires,
        }),
    ))
}
