//! Durable steps: what each completed step of a running job returned, kept until the job ends,
//! so that a later run of it returns that instead of running the step again (see
//! `TaskContext::step` in pq's worker).

use sqlx::PgConnection;

use crate::error::{Error, Result};
use crate::job::JobId;
use crate::pq::Pq;

impl Pq {
    /// What step `name` of job `job` returned (JSON text), if a run of the job recorded it;
    /// read in `transaction` (the job's, say), or on a connection of pq's own.
    pub async fn step_output(
        &self,
        transaction: Option<&mut PgConnection>,
        job: JobId,
        name: &str,
    ) -> Result<Option<String>> {
        let sql = self.statements().await?;
        let read = async |connection: &mut PgConnection| -> Result<Option<String>> {
            Ok(sql
                .query_scalar(&sql.step_output)
                .bind(job.0)
                .bind(name)
                .fetch_optional(connection)
                .await?)
        };
        match transaction {
            Some(connection) => read(connection).await,
            None => self.with_connection("reading a step's output", read).await,
        }
    }

    /// Records what step `name` of job `job` returned (`output`, JSON text) in `transaction`,
    /// or alone on a connection of pq's own, for the run of `claim` (`None`: a run outside a
    /// worker, unfenced). `Ok(false)` if a run of the job recorded it first, whose output
    /// stands; [`Error::StepLost`] if the job is no longer this run's (its lease ran out and it
    /// was rescued, or it was cancelled, retried, completed), which records nothing. Fenced,
    /// the job's row stays locked until `transaction` ends.
    pub async fn record_step(
        &self,
        transaction: Option<&mut PgConnection>,
        job: JobId,
        claim: Option<i64>,
        name: &str,
        output: &str,
    ) -> Result<bool> {
        let sql = self.statements().await?;
        let record = async |connection: &mut PgConnection| -> Result<bool> {
            let Some(claim) = claim else {
                let recorded: Option<bool> = sql
                    .query_scalar(&sql.record_step)
                    .bind(job.0)
                    .bind(name)
                    .bind(output)
                    .fetch_optional(connection)
                    .await?;
                return Ok(recorded.is_some());
            };
            let (held, recorded): (bool, bool) = sql
                .query_as(&sql.record_claimed_step)
                .bind(job.0)
                .bind(name)
                .bind(output)
                .bind(claim)
                .fetch_one(connection)
                .await?;
            if !held {
                return Err(Error::StepLost {
                    id: job,
                    name: name.to_owned(),
                });
            }
            Ok(recorded)
        };
        match transaction {
            Some(connection) => record(connection).await,
            None => self.with_connection("recording a step", record).await,
        }
    }

    /// Deletes up to `limit` step records of jobs that ended (done, cancelled or deleted; a
    /// failed job keeps its records for an operator's retry); returns how many. Workers run it as part of their
    /// maintenance.
    pub async fn sweep_steps(&self, limit: u32) -> Result<u64> {
        let sql = self.statements().await?;
        self.with_connection("deleting the steps of ended jobs", async |connection| {
            Ok(sql
                .query(&sql.sweep_steps)
                .bind(i64::from(limit))
                .execute(connection)
                .await?
                .rows_affected())
        })
        .await
    }
}
