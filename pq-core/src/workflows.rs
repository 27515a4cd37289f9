//! What an operator reads of dependencies: a job's parents and children, and a workflow's
//! jobs and edges (`pq jobs show`, `pq flows show`).

use serde::Serialize;
use sqlx::Row;

use crate::admin::{job_info_columns, Admin, JobInfo, JobState};
use crate::error::{Error, Result};
use crate::graph::{OnParentFailure, WorkflowId};
use crate::job::JobId;

/// One edge: `child` waits (or waited) for `parent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DependencyInfo {
    /// The job waited for.
    pub parent: JobId,
    /// The job that waits.
    pub child: JobId,
    /// The workflow the edge was written in.
    pub workflow: Option<WorkflowId>,
    /// What the child does if the parent fails or is cancelled.
    #[serde(serialize_with = "policy_name")]
    pub on_failure: OnParentFailure,
    /// How the parent ended, once it has: `Done`, `Failed` or `Cancelled`.
    pub outcome: Option<JobState>,
}

/// A workflow's jobs and edges: what [`Admin::workflow`] returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct WorkflowInfo {
    /// Its id.
    pub id: WorkflowId,
    /// Its jobs still in the table, by id (without their results).
    pub jobs: Vec<JobInfo>,
    /// Its edges, by child then parent. A job named here but missing from `jobs` is gone:
    /// it succeeded and kept no result, or its result expired, or it was deleted.
    pub edges: Vec<DependencyInfo>,
}

fn policy_name<S: serde::Serializer>(policy: &OnParentFailure, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(policy.name())
}

impl OnParentFailure {
    /// Its name: `fail`, `run` or `cancel_workflow`.
    pub fn name(self) -> &'static str {
        match self {
            OnParentFailure::Fail => "fail",
            OnParentFailure::Run => "run",
            OnParentFailure::CancelWorkflow => "cancel_workflow",
        }
    }
}

impl Admin {
    /// The edges of job `id`: to its parents and from its children, by parent then child.
    ///
    /// ```no_run
    /// # async fn example(pq: pq::Pq, id: pq::JobId) -> Result<(), pq::Error> {
    /// for edge in pq.admin().dependencies(id).await? {
    ///     println!("{} waits for {} ({:?})", edge.child, edge.parent, edge.outcome);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn dependencies(&self, id: JobId) -> Result<Vec<DependencyInfo>> {
        self.edges(
            "WHERE parent = $1 OR child = $1 ORDER BY parent, child",
            id.0,
        )
        .await
    }

    /// Workflow `id`'s jobs and edges; `None` if it has no edge (a workflow of jobs that wait
    /// for none is only its jobs).
    pub async fn workflow(&self, id: WorkflowId) -> Result<Option<WorkflowInfo>> {
        let edges = self
            .edges("WHERE workflow = $1 ORDER BY child, parent", id.0)
            .await?;
        if edges.is_empty() {
            return Ok(None);
        }
        let mut ids: Vec<i64> = edges
            .iter()
            .flat_map(|edge| [edge.parent.0, edge.child.0])
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let sql = self.pq.statements().await?;
        let table = &sql.table;
        let statement = format!(
            "SELECT {} FROM {} AS t WHERE id = ANY($1) ORDER BY id",
            job_info_columns(&table.qualified_derived("workers"), false),
            table.qualified(),
        );
        let rows = self
            .pq
            .with_connection("reading a workflow", async |connection| {
                Ok(sql
                    .query(&statement)
                    .bind(&ids)
                    .fetch_all(connection)
                    .await?)
            })
            .await?;
        let jobs = rows.iter().map(JobInfo::from_row).collect::<Result<_>>()?;
        Ok(Some(WorkflowInfo { id, jobs, edges }))
    }

    async fn edges(&self, condition: &str, id: i64) -> Result<Vec<DependencyInfo>> {
        let sql = self.pq.statements().await?;
        let table = &sql.table;
        let statement = format!(
            "SELECT parent, child, workflow, policy, outcome FROM {} {condition}",
            table.qualified_derived("after")
        );
        let rows = self
            .pq
            .with_connection("reading dependencies", async |connection| {
                Ok(sql.query(&statement).bind(id).fetch_all(connection).await?)
            })
            .await
            .map_err(|error| error.or_no_table(|| table.qualified()))?;
        rows.iter()
            .map(|row| {
                let parent: i64 = row.try_get("parent")?;
                let policy: String = row.try_get("policy")?;
                let outcome: Option<String> = row.try_get("outcome")?;
                let unreadable = |reason: String| Error::Unreadable { id: parent, reason };
                Ok(DependencyInfo {
                    parent: JobId(parent),
                    child: JobId(row.try_get("child")?),
                    workflow: row.try_get::<Option<i64>, _>("workflow")?.map(WorkflowId),
                    on_failure: match policy.as_str() {
                        "fail" => OnParentFailure::Fail,
                        "run" => OnParentFailure::Run,
                        "cancel" => OnParentFailure::CancelWorkflow,
                        other => return Err(unreadable(format!("an edge's policy is {other:?}"))),
                    },
                    outcome: outcome
                        .map(|state| {
                            state
                                .parse()
                                .map_err(|_| unreadable(format!("an edge's outcome is {state:?}")))
                        })
                        .transpose()?,
                })
            })
            .collect()
    }
}
