//! Typed workflows: task calls that wait for others and take their results, checked at compile
//! time, written as one [`pq::Graph`](pq_core::Graph).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use pq_core::{
    Edge, Enqueue, Enqueued, Error, Graph, Input, JobHandle, JobId, OnParentFailure, Parent,
    WorkflowId,
};

use crate::task::{Task, TaskCall};

/// What a job can wait for: a [`Node`] of the same [`Workflow`], or a job already enqueued
/// (its [`JobHandle`], [`JobId`] or [`Enqueued`]). See [`TaskCall::after`].
pub trait After {
    /// Which job it is.
    #[doc(hidden)]
    fn target(&self) -> Target;
}

/// A job to wait for, as [`After`] names it.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The node at this place of the workflow with this tag.
    Node { workflow: u64, place: usize },
    /// A job in the table.
    Job(JobId),
}

/// What gives a `T` to the job that waits for it: a [`Node`] or [`JobHandle`] of a task that
/// returns `T`. A task's `#[parent] page: Page` argument takes an `impl ResultOf<Page>`, so a
/// parent of another type does not compile.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not give a `{T}`",
    label = "this parent's result is not a `{T}`",
    note = "a `#[parent]` argument takes the `pq::Node` or `pq::JobHandle` of a task that returns the argument's type"
)]
pub trait ResultOf<T>: After {}

impl<P: After + ?Sized> After for &P {
    fn target(&self) -> Target {
        (**self).target()
    }
}

impl<T, P: ResultOf<T> + ?Sized> ResultOf<T> for &P {}

impl<T> After for JobHandle<T> {
    fn target(&self) -> Target {
        Target::Job(self.id())
    }
}

impl<T> ResultOf<T> for JobHandle<T> {}

impl After for JobId {
    fn target(&self) -> Target {
        Target::Job(*self)
    }
}

impl After for Enqueued {
    fn target(&self) -> Target {
        Target::Job(self.id())
    }
}

/// A call added to a [`Workflow`]: what later calls of it wait for, and whose result (a `T`)
/// they may take. Becomes a [`JobHandle`] once the workflow is enqueued
/// ([`EnqueuedWorkflow::handle`]).
pub struct Node<T> {
    workflow: u64,
    place: usize,
    output: PhantomData<fn() -> T>,
}

impl<T> Clone for Node<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Node<T> {}

impl<T> std::fmt::Debug for Node<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("place", &self.place).finish()
    }
}

impl<T> After for Node<T> {
    fn target(&self) -> Target {
        Target::Node {
            workflow: self.workflow,
            place: self.place,
        }
    }
}

impl<T> ResultOf<T> for Node<T> {}

/// What a call waits for: the jobs, and what it takes from each.
#[derive(Debug, Default)]
pub(crate) struct Parents {
    pub edges: Vec<(Target, Input)>,
    pub on_failure: OnParentFailure,
}

impl<T: Task> TaskCall<T> {
    /// Runs this call's job only after `parent` has ended (and, unless
    /// [`on_parent_failure`](TaskCall::on_parent_failure) says otherwise, succeeded): a
    /// [`Node`] of the workflow it is added to, or a job already enqueued. Call it once per
    /// parent; the job becomes ready in the transaction that ends its last parent. Nothing of
    /// the parent's result is passed (a `#[parent]` argument takes that).
    ///
    /// ```no_run
    /// #[pq::task]
    /// async fn backup(table: String) {}
    ///
    /// #[pq::task]
    /// async fn announce(what: String) {}
    ///
    /// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
    /// let users = backup("users".into()).enqueue(&pq).await?;
    /// announce("users are safe".into()).after(users).enqueue(&pq).await?;
    /// # Ok(()) }
    /// ```
    pub fn after(mut self, parent: impl After) -> Self {
        self.parents.edges.push((parent.target(), Input::Nothing));
        self
    }

    /// What this call's job does when a parent fails for good or is cancelled: fail too
    /// (the default), run anyway, or cancel its whole workflow.
    pub fn on_parent_failure(mut self, policy: OnParentFailure) -> Self {
        self.parents.on_failure = policy;
        self
    }

    /// `#[parent]`: the argument `name` takes `parent`'s result.
    #[doc(hidden)]
    pub fn __from_parent(mut self, name: &'static str, parent: impl After) -> Self {
        let input = Input::Result(name.to_owned());
        self.parents.edges.push((parent.target(), input));
        self
    }

    /// `#[parents]`: the argument `name` takes `parents`' results, as a list in their order.
    #[doc(hidden)]
    pub fn __from_parents<P: After>(
        mut self,
        name: &'static str,
        parents: impl IntoIterator<Item = P>,
    ) -> Self {
        for (place, parent) in parents.into_iter().enumerate() {
            let place = u32::try_from(place).unwrap_or(u32::MAX);
            let input = Input::Item(name.to_owned(), place);
            self.parents.edges.push((parent.target(), input));
        }
        self
    }

    /// Whether the call waits for anything.
    pub(crate) fn waits(&self) -> bool {
        !self.parents.edges.is_empty()
    }

    /// A graph of this call alone, waiting for jobs already enqueued.
    pub(crate) fn into_graph(self) -> Result<Graph, Error> {
        let mut graph = Graph::new();
        add(&mut graph, None, self)?;
        Ok(graph)
    }
}

/// Adds `call` to `graph`, its parents resolved: nodes of the workflow tagged `workflow`, or
/// jobs in the table. Returns its place.
fn add<T: Task>(
    graph: &mut Graph,
    workflow: Option<u64>,
    mut call: TaskCall<T>,
) -> Result<usize, Error> {
    let parents = std::mem::take(&mut call.parents);
    let job = call.into_job()?;
    let child = graph.jobs().len();
    let mut edges = Vec::with_capacity(parents.edges.len());
    for (target, input) in parents.edges {
        let parent = match target {
            Target::Job(id) => Parent::Job(id),
            Target::Node { workflow: of, place } if Some(of) == workflow && place < child => {
                Parent::New(place)
            }
            Target::Node { .. } => {
                return Err(Error::InvalidGraph {
                    reason: format!(
                        "a call of {} waits for a node of another workflow: a node is a parent only within the workflow it was added to",
                        T::NAME
                    ),
                })
            }
        };
        edges.push(Edge {
            parent,
            child,
            input,
            on_failure: parents.on_failure,
        });
    }
    graph.add(job);
    for edge in edges {
        graph.edge(edge);
    }
    Ok(child)
}

/// Task calls that wait for one another, written together in one transaction: a fan-out,
/// a fan-in, any graph without cycles (a call can only wait for nodes added before it).
///
/// A task takes a parent's result as an argument marked `#[parent]` (a list of results,
/// `#[parents]`): its call function then takes the parent's [`Node`] in the argument's place,
/// and a parent of another type does not compile.
///
/// ```no_run
/// #[pq::task]
/// async fn square(n: u64) -> anyhow::Result<u64> {
///     Ok(n * n)
/// }
///
/// #[pq::task]
/// async fn sum(#[parents] squares: Vec<u64>) -> anyhow::Result<u64> {
///     Ok(squares.iter().sum())
/// }
///
/// # async fn example(pq: pq::Pq) -> anyhow::Result<()> {
/// let mut workflow = pq::Workflow::new();
/// let squares: Vec<_> = (1..=3).map(|n| workflow.add(square(n))).collect();
/// let total = workflow.add(sum(&squares));
/// let enqueued = workflow.enqueue(&pq).await?;
/// assert_eq!(enqueued.handle(total).result(&pq).await?, 14); // once a worker ran them
/// # Ok(()) }
/// ```
pub struct Workflow {
    tag: u64,
    graph: Graph,
    /// The first call that could not be added: the enqueue answers it.
    error: Option<Error>,
}

impl Default for Workflow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Workflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow")
            .field("jobs", &self.graph.jobs().len())
            .finish_non_exhaustive()
    }
}

impl Workflow {
    /// An empty workflow.
    pub fn new() -> Self {
        static TAGS: AtomicU64 = AtomicU64::new(0);
        Self {
            tag: TAGS.fetch_add(1, Ordering::Relaxed),
            graph: Graph::new(),
            error: None,
        }
    }

    /// Adds a call; returns its node, which later calls may wait for ([`TaskCall::after`])
    /// or take the result of (a `#[parent]` argument).
    pub fn add<T: Task>(&mut self, call: TaskCall<T>) -> Node<T::Output> {
        let place = self.graph.jobs().len();
        if self.error.is_none() {
            if let Err(error) = add(&mut self.graph, Some(self.tag), call) {
                self.error = Some(error);
            }
        }
        Node {
            workflow: self.tag,
            place,
            output: PhantomData,
        }
    }

    /// Writes every call and edge, all or nothing, on `target` (`&pq`, a `&mut
    /// pq::Transaction`, or `pq.on(&mut *tx)`). Calls without parents are ready at once;
    /// the others wait.
    pub async fn enqueue<'c>(
        self,
        target: impl Enqueue<'c> + Send + 'c,
    ) -> Result<EnqueuedWorkflow, Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let written = target.enqueue_graph(self.graph).await?;
        Ok(EnqueuedWorkflow {
            id: written.workflow,
            tag: self.tag,
            jobs: written.jobs,
        })
    }
}

/// What [`Workflow::enqueue`] wrote: the workflow's id and its jobs.
#[derive(Debug, Clone)]
pub struct EnqueuedWorkflow {
    id: WorkflowId,
    tag: u64,
    jobs: Vec<JobId>,
}

impl EnqueuedWorkflow {
    /// The workflow's id (`pq flows show <id>`).
    pub fn id(&self) -> WorkflowId {
        self.id
    }

    /// Every job, in the order they were added.
    pub fn jobs(&self) -> &[JobId] {
        &self.jobs
    }

    /// The job of `node`.
    ///
    /// # Panics
    ///
    /// If `node` is of another workflow.
    pub fn job<T>(&self, node: Node<T>) -> JobId {
        assert_eq!(node.workflow, self.tag, "a node of another workflow");
        self.jobs[node.place]
    }

    /// A handle on the job of `node`, to wait for its result.
    ///
    /// # Panics
    ///
    /// If `node` is of another workflow.
    pub fn handle<T>(&self, node: Node<T>) -> JobHandle<T> {
        JobHandle::new(self.job(node))
    }
}
