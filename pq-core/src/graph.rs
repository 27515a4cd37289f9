//! Jobs that wait for others: a [`Graph`] of new jobs and the edges from their parents (new
//! jobs of the graph, or jobs already in the table), written in one transaction. A child waits
//! in the `waiting` state until its parents have ended, and becomes ready in the transaction
//! that ends the last of them (`settle` in `sql/functions/settle.sql`, run by the table's
//! triggers, migration 25).

use std::collections::{BTreeMap, HashSet};

use sqlx::{Connection, PgConnection};

use crate::error::{Error, Result};
use crate::job::{JobId, NewJob};
use crate::pq::Pq;
use crate::queue::job_columns;
use crate::sql::Statements;

/// A workflow: the jobs of one [`Graph`] and its edges, which `pq flows show` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct WorkflowId(pub i64);

impl std::fmt::Display for WorkflowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a child does when a parent fails for good or is cancelled (a parent that succeeds
/// counts the same under every policy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum OnParentFailure {
    /// The child fails without running, saying which parent ended how; so in turn do its own
    /// children that fail with it.
    #[default]
    Fail,
    /// The child runs once every parent has ended, whatever their outcome; a failed parent's
    /// result is JSON `null` (take it as an `Option`).
    Run,
    /// Every job of the workflow that has not started yet is cancelled, this child included.
    CancelWorkflow,
}

impl OnParentFailure {
    fn code(self) -> &'static str {
        match self {
            OnParentFailure::Fail => "fail",
            OnParentFailure::Run => "run",
            OnParentFailure::CancelWorkflow => "cancel",
        }
    }
}

/// A parent of a graph's job: one of the graph's own jobs (by its place), or a job already in
/// the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parent {
    /// The graph's job at this place, added before the child.
    New(usize),
    /// A job in the table. One that has ended counts at once, by its outcome; one that is gone
    /// (it succeeded and kept no result, or its result expired) counts as succeeded, with no
    /// result.
    Job(JobId),
}

/// What a child takes from a parent: nothing (it only waits), or the parent's result as one
/// of its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// The child only waits for the parent.
    Nothing,
    /// The parent's result is the child's argument of this name.
    Result(String),
    /// The parent's result is the item at this place of the child's list argument of this
    /// name (a fan-in: `#[parents]`).
    Item(String, u32),
}

/// One edge of a [`Graph`]: `child` (a place in the graph) waits for `parent`.
#[derive(Debug, Clone)]
pub struct Edge {
    /// What it waits for.
    pub parent: Parent,
    /// The waiting job: its place in the graph.
    pub child: usize,
    /// What it takes from the parent.
    pub input: Input,
    /// What it does if the parent fails or is cancelled.
    pub on_failure: OnParentFailure,
}

/// New jobs and the edges from their parents, written together by
/// [`Pq::enqueue_graph`](crate::Pq::enqueue_graph): all or nothing.
///
/// ```no_run
/// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
/// let mut graph = pq::Graph::new();
/// let fetch = graph.add(pq::NewJob::new("pages", &"https://example.com")?);
/// let parse = graph.add(pq::NewJob::new("pages", &"parse")?);
/// graph.edge(pq::Edge {
///     parent: pq::Parent::New(fetch),
///     child: parse,
///     input: pq::Input::Nothing,
///     on_failure: pq::OnParentFailure::Fail,
/// });
/// let written = pq.enqueue_graph(graph).await?;
/// println!("workflow {}: jobs {:?}", written.workflow, written.jobs);
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct Graph {
    jobs: Vec<NewJob>,
    edges: Vec<Edge>,
}

/// What [`Pq::enqueue_graph`](crate::Pq::enqueue_graph) wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenGraph {
    /// The workflow's id.
    pub workflow: WorkflowId,
    /// Each job's id, in the order they were added.
    pub jobs: Vec<JobId>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a job; returns its place, by which edges name it.
    pub fn add(&mut self, job: NewJob) -> usize {
        self.jobs.push(job);
        self.jobs.len() - 1
    }

    /// Adds an edge.
    pub fn edge(&mut self, edge: Edge) {
        self.edges.push(edge);
    }

    /// The graph's jobs, in the order they were added.
    pub fn jobs(&self) -> &[NewJob] {
        &self.jobs
    }

    /// Refuses what cannot be written: an edge to a place not in the graph, a parent added
    /// after its child (which makes every graph acyclic), an edge given twice, a job with a
    /// unique key (a waiting job holds no key), and what a plain job refuses.
    fn check(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidGraph { reason });
        for job in &self.jobs {
            job.check()?;
            if job.unique.is_some() {
                return invalid(format!(
                    "job of task {:?} has a unique key: jobs of a workflow are not deduplicated",
                    job.task.as_deref().unwrap_or("(none)")
                ));
            }
        }
        let mut seen = HashSet::new();
        for edge in &self.edges {
            if edge.child >= self.jobs.len() {
                return invalid(format!(
                    "edge to job {} of a graph of {}",
                    edge.child,
                    self.jobs.len()
                ));
            }
            if let Parent::New(parent) = edge.parent {
                if parent >= edge.child {
                    return invalid(format!(
                        "job {} waits for job {parent}, which was not added before it",
                        edge.child
                    ));
                }
            }
            if !seen.insert((edge.parent, edge.child)) {
                return invalid(format!(
                    "job {} waits for {:?} twice",
                    edge.child, edge.parent
                ));
            }
        }
        Ok(())
    }

    /// Writes the graph on `connection`, in a transaction of its own (a savepoint inside the
    /// caller's).
    pub(crate) async fn write(
        self,
        sql: &Statements,
        connection: &mut PgConnection,
    ) -> Result<WrittenGraph> {
        self.check()?;
        let mut tx = Connection::begin(connection).await?;
        let written = self.write_in(sql, &mut tx).await;
        let written = written.map_err(|error| error.or_no_table(|| sql.table.qualified()))?;
        tx.commit().await?;
        Ok(written)
    }

    async fn write_in(self, sql: &Statements, tx: &mut PgConnection) -> Result<WrittenGraph> {
        // The jobs already in the table, locked in id order until the commit, so that none
        // ends between the look and the edge: one that ends after the commit finds the edge.
        let existing: Vec<i64> = self
            .edges
            .iter()
            .filter_map(|edge| match edge.parent {
                Parent::Job(id) => Some(id.0),
                Parent::New(_) => None,
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let states: BTreeMap<i64, String> = if existing.is_empty() {
            BTreeMap::new()
        } else {
            sql.query_as(&sql.lock_parents)
                .bind(&existing)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect()
        };
        let in_flight = |id: &i64| {
            states
                .get(id)
                .is_some_and(|state| matches!(state.as_str(), "queued" | "running" | "waiting"))
        };
        let mut waits = vec![0i32; self.jobs.len()];
        let mut releases = vec![false; self.jobs.len()];
        for edge in &self.edges {
            waits[edge.child] += 1;
            if let Parent::New(parent) = edge.parent {
                releases[parent] = true;
            }
        }
        let columns = job_columns(self.jobs);
        let mut ids: Vec<i64> = sql
            .query_scalar(&sql.put_graph)
            .bind(columns.queues)
            .bind(columns.tasks)
            .bind(columns.data)
            .bind(columns.schedule_at)
            .bind(columns.schedule_in)
            .bind(columns.expected_at)
            .bind(columns.expected_in)
            .bind(columns.timeouts)
            .bind(columns.metas)
            .bind(&waits)
            .bind(&releases)
            .fetch_all(&mut *tx)
            .await?;
        // The sequence numbered the rows in their order, whatever order RETURNING gives them in.
        ids.sort_unstable();
        let id_of = |parent: Parent| match parent {
            Parent::New(place) => ids[place],
            Parent::Job(id) => id.0,
        };
        let (mut parents, mut children, mut policies, mut slots, mut positions) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for edge in &self.edges {
            parents.push(id_of(edge.parent));
            children.push(ids[edge.child]);
            policies.push(edge.on_failure.code());
            let (slot, position) = match &edge.input {
                Input::Nothing => (None, None),
                Input::Result(name) => (Some(name.as_str()), None),
                Input::Item(name, place) => (
                    Some(name.as_str()),
                    Some(i32::try_from(*place).unwrap_or(i32::MAX)),
                ),
            };
            slots.push(slot);
            positions.push(position);
        }
        let workflow: i64 = sql
            .query_scalar(&sql.put_edges)
            .bind(&parents)
            .bind(&children)
            .bind(&policies)
            .bind(&slots)
            .bind(&positions)
            .bind(&existing)
            .fetch_one(&mut *tx)
            .await?;
        // Parents that ended already (or are gone) count at once, as their triggers would.
        let ended: Vec<i64> = existing.into_iter().filter(|id| !in_flight(id)).collect();
        if !ended.is_empty() {
            sql.query(&sql.settle_ended)
                .bind(&ended)
                .execute(&mut *tx)
                .await?;
        }
        Ok(WrittenGraph {
            workflow: WorkflowId(workflow),
            jobs: ids.into_iter().map(JobId).collect(),
        })
    }
}

impl Pq {
    /// Writes a [`Graph`] in one transaction of its own: its jobs, and its edges under a new
    /// workflow id. A job with parents waits (state `waiting`) until each has ended, then
    /// becomes ready in the transaction that ends the last one. To write it inside a
    /// transaction of yours, see [`Enqueue::enqueue_graph`](crate::Enqueue::enqueue_graph).
    pub async fn enqueue_graph(&self, graph: Graph) -> Result<WrittenGraph> {
        let sql = self.statements().await?;
        self.with_connection("an enqueue", async |connection| {
            graph.write(sql, connection).await
        })
        .await
    }

    /// Deletes up to `limit` edges neither of whose jobs is in the table any more; returns
    /// how many. Workers run it as part of their maintenance.
    pub async fn sweep_edges(&self, limit: u32) -> Result<u64> {
        let sql = self.statements().await?;
        self.with_connection("deleting the edges of gone jobs", async |connection| {
            Ok(sql
                .query(&sql.sweep_edges)
                .bind(i64::from(limit))
                .execute(connection)
                .await?
                .rows_affected())
        })
        .await
    }
}
