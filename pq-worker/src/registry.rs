//! Every task linked into the program, collected once from `inventory` into a map by name.

use foldhash::HashMap;

use crate::context::TaskContext;
use crate::task::{BoxFuture, FromEnqueued, RunResult, Task, TaskError, TaskOptions};

/// The largest result a job keeps, as JSON: 16 MiB. A larger one fails its run for good, rather
/// than the statement that completes a whole batch of jobs.
pub const MAX_RESULT: usize = 16 << 20;

/// Decodes a job's JSON arguments and runs the task's body.
pub type Handler = fn(TaskContext, &str) -> Result<BoxFuture<'static, RunResult>, TaskError>;

/// One task as registered at link time by `#[pq::task]`.
#[derive(Debug, Clone, Copy)]
pub struct TaskDefinition {
    /// The task's stable name (see [`Task::NAME`]).
    pub name: &'static str,
    /// The task's defaults.
    pub options: TaskOptions,
    /// Where the function is defined, to report duplicates.
    pub location: &'static str,
    /// Decodes the arguments and runs the body.
    pub handler: Handler,
    /// Checks that JSON arguments decode for this task, without running it.
    pub check_arguments: fn(&str) -> Result<(), TaskError>,
    /// The unique key of these JSON arguments, for a unique task (see [`Task::unique_key`]),
    /// as the task's calls key their jobs.
    pub unique_key: fn(&str) -> Option<String>,
    /// The flow key of these JSON arguments, for a task with a flow policy (see
    /// [`Task::flow_key`]), as the task's calls key their jobs.
    pub flow_key: fn(&str) -> Option<String>,
}

impl TaskDefinition {
    /// The definition of task `T`, defined at `location` (`file!():line!()`).
    pub const fn of<T: Task>(location: &'static str) -> Self {
        Self {
            name: T::NAME,
            options: T::OPTIONS,
            location,
            handler: handle::<T>,
            check_arguments: check_arguments::<T>,
            unique_key: unique_key::<T>,
            flow_key: flow_key::<T>,
        }
    }
}

fn unique_key<T: Task>(args: &str) -> Option<String> {
    let key = decode::<T>(args).ok()?.unique_key()?;
    Some(crate::task::stored_key(T::NAME, &key))
}

pub(crate) fn flow_key<T: Task>(args: &str) -> Option<String> {
    T::OPTIONS.flow?;
    let args = decode::<T>(args).ok()?;
    Some(crate::task::flow_key(T::NAME, args.flow_key(), None))
}

fn decode<T: Task>(args: &str) -> Result<T, TaskError> {
    serde_json::from_str(args).map_err(|e| {
        TaskError::new(format!(
            "cannot decode the arguments of task `{}`: {e}",
            T::NAME
        ))
    })
}

fn handle<T: Task>(
    ctx: TaskContext,
    args: &str,
) -> Result<BoxFuture<'static, RunResult>, TaskError> {
    Ok(decode::<T>(args)?.execute_job(ctx))
}

/// What a job of task `T` keeps of a run's `result`: its output as JSON, where the task
/// answers its enqueue with a handle to wait for it; nothing for other tasks.
pub(crate) fn kept<T: Task>(result: Result<T::Output, TaskError>) -> RunResult {
    let output = result?;
    if !T::Enqueued::KEEPS_RESULT {
        return Ok(None);
    }
    match serde_json::to_string(&output) {
        Ok(json) if json.len() > MAX_RESULT => Err(TaskError::permanent(format!(
            "the result of task `{}` is {} bytes, more than the {MAX_RESULT} a job keeps: store it elsewhere and return where",
            T::NAME,
            json.len()
        ))),
        Ok(json) => Ok(Some(json)),
        // Encoding fails the same way every time: no retry can help.
        Err(error) => Err(TaskError::permanent(format!(
            "cannot encode the result of task `{}` as JSON: {error}",
            T::NAME
        ))),
    }
}

fn check_arguments<T: Task>(args: &str) -> Result<(), TaskError> {
    decode::<T>(args).map(drop)
}

inventory::collect!(TaskDefinition);

/// Two tasks registered under one name: jobs could not tell which one to run.
#[derive(Debug, Clone, thiserror::Error)]
#[error("two tasks are named `{name}`: one at {first}, one at {second}; give one of them `#[pq::task(name = \"...\")]`")]
pub struct DuplicateTask {
    /// The shared name.
    pub name: &'static str,
    /// Where the first is defined.
    pub first: &'static str,
    /// Where the second is defined.
    pub second: &'static str,
}

/// The tasks of this program by name.
///
/// ```
/// #[pq::task(queue = "apples", max_retries = 2)]
/// fn eat(kind: String) {
///     println!("{kind}");
/// }
///
/// let registry = pq::Registry::from_inventory().expect("no duplicate task names");
/// let eat = registry.get(<eat as pq::Task>::NAME).expect("registered");
/// assert_eq!(eat.options.max_retries, 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Registry {
    tasks: HashMap<&'static str, TaskDefinition>,
}

impl Registry {
    /// Every task linked into this program, or the first name that two tasks share.
    pub fn from_inventory() -> Result<Self, DuplicateTask> {
        Self::from_definitions(inventory::iter::<TaskDefinition>.into_iter().copied())
    }

    /// A registry of these definitions, or the first name that two of them share.
    pub fn from_definitions(
        definitions: impl IntoIterator<Item = TaskDefinition>,
    ) -> Result<Self, DuplicateTask> {
        let mut tasks = HashMap::default();
        for definition in definitions {
            if let Some(first) = tasks.insert(definition.name, definition) {
                let (first, second) = if first.location <= definition.location {
                    (first.location, definition.location)
                } else {
                    (definition.location, first.location)
                };
                return Err(DuplicateTask {
                    name: definition.name,
                    first,
                    second,
                });
            }
        }
        Ok(Self { tasks })
    }

    /// The task of this name.
    pub fn get(&self, name: &str) -> Option<&TaskDefinition> {
        self.tasks.get(name)
    }

    /// Every task, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &TaskDefinition> {
        self.tasks.values()
    }

    /// How many tasks there are.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The queues that these tasks use by default, sorted.
    pub fn queues(&self) -> Vec<&'static str> {
        let mut queues: Vec<_> = self.tasks.values().map(|t| t.options.queue).collect();
        queues.sort_unstable();
        queues.dedup();
        queues
    }
}
