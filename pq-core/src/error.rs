//! pq's error type.
//!
//! Each message is complete on its own, cause included, so printing it with `{}` says it all;
//! only [`Error::Database`] also exposes sqlx's error as its source.

use crate::job::JobId;

/// What can go wrong in pq. Match on the variant; the message says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database refused a statement or could not be reached.
    #[error(transparent)]
    Database(#[from] sqlx::Error),

    /// The builder's settings contradict each other; the message says what to change.
    #[error("{0}")]
    Settings(&'static str),

    /// A schema or table name that pq will not use.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidIdentifier {
        /// `"schema"` or `"table"`.
        kind: &'static str,
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A unique key that cannot be stored.
    #[error("invalid unique key {key:?}: {reason}")]
    InvalidUniqueKey {
        /// The key as given (cut to its first 100 characters).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A limit, rate or burst that cannot be (a limit of 0, a rate of no jobs or absurdly
    /// fast, a period over a day).
    #[error("invalid limit {limit:?}: {reason}")]
    InvalidLimit {
        /// The limit as given (cut to its first 100 characters).
        limit: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A [`Graph`](crate::Graph) (a workflow) that cannot be written: an edge to a job not in
    /// it, a parent added after its child, an edge given twice, a job with a unique key.
    #[error("invalid workflow: {reason}")]
    InvalidGraph {
        /// What is wrong with it.
        reason: String,
    },

    /// A queue name that cannot be stored.
    #[error("invalid queue name {name:?}: {reason}")]
    InvalidQueueName {
        /// The name as given (cut to its first 100 characters).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A `schedule_at` or `expected_at` that is not a valid time.
    #[error("invalid time {input:?}: {reason}")]
    InvalidTime {
        /// The value as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A value that could not be turned into JSON (a map with non-string keys, say).
    #[error("cannot encode the job's data as JSON: {0}")]
    Encode(serde_json::Error),

    /// A job's JSON data that does not decode into the requested type.
    #[error("cannot decode the data of job {id}: {error}")]
    Decode {
        /// The job.
        id: i64,
        /// What serde said.
        error: serde_json::Error,
    },

    /// A migration or a function definition failed to apply; nothing of it was applied, and
    /// what was applied before it stays.
    #[error("cannot apply {name}: {error}")]
    Migration {
        /// Its file, as `migrations/0010_workers_and_claim_ids.sql` or `functions/claim.sql`.
        name: &'static str,
        /// The database's error.
        error: sqlx::Error,
    },

    /// The table was migrated by a newer pq than this one, which must not change it (it would
    /// put back older definitions of its functions). Upgrade this program.
    #[error("the table {table} has migrations up to {applied}, and this pq knows only up to {known}: upgrade it before it migrates or works this table")]
    SchemaTooNew {
        /// The table.
        table: String,
        /// The newest migration applied to it.
        applied: i64,
        /// The newest migration this pq has.
        known: i64,
    },

    /// The table is missing, or lacks migrations this pq needs: run [`Pq::create`](crate::Pq::create)
    /// (`pq migrate`).
    #[error("the table {table} is at migration {applied} and this pq needs {needed}: run `pq.create()` or `pq migrate` first")]
    SchemaTooOld {
        /// The table.
        table: String,
        /// The newest migration applied to it (0 when there is no table).
        applied: i64,
        /// The migration this pq needs.
        needed: i64,
    },

    /// A statement met a table of pq's that does not exist: the queue table was never created
    /// (or is in another schema), or lacks a migration this pq needs. Run
    /// [`Pq::create`](crate::Pq::create) (`pq migrate`).
    #[error("the table {table} does not exist or lacks pq's migrations ({reason}): create it with `pq.create()` or `pq migrate`")]
    NoTable {
        /// The queue table.
        table: String,
        /// What the database said.
        reason: String,
    },

    /// No connection to the database could be made: it refuses connections (it is down, or the
    /// address is wrong), or refuses this client (its password, its certificate).
    /// [`is_transient`](Error::is_transient) tells which.
    #[error("{what}: cannot connect to the database: {error}")]
    Unreachable {
        /// What pq was doing.
        what: &'static str,
        /// Why the connection failed.
        error: sqlx::Error,
    },

    /// Every connection of the pool was in use for as long as the statement could wait: the
    /// application holds them (in long transactions, say), or the pool is too small for its
    /// load. The database itself answers.
    #[error("{what}: no connection of the pool was free within {after:?} (all {size} in use): raise the pool's max_connections, or hold its connections for less time")]
    PoolBusy {
        /// What pq was doing.
        what: &'static str,
        /// How long it waited.
        after: std::time::Duration,
        /// The pool's size.
        size: u32,
    },

    /// A statement (with the wait for a connection) took longer than the handle's
    /// [`statement_timeout`](crate::PqBuilder::statement_timeout): the server hangs or is
    /// overloaded. Its connection was closed; the statement may or may not have taken effect.
    #[error("{what} timed out after {after:?}: the database did not answer")]
    Timeout {
        /// What pq was doing.
        what: &'static str,
        /// The limit.
        after: std::time::Duration,
    },

    /// What pq was asked needs a session on the server itself, which a transaction pooler
    /// cannot give: set [`PqBuilder::direct_url`](crate::PqBuilder::direct_url), or run it
    /// (`pq migrate`) against the server.
    #[error("{what} needs a direct connection to the server, not through the transaction pooler: set PqBuilder::direct_url (the CLI's --direct-url), or run `pq migrate` with the server's own --database-url")]
    NoDirectConnection {
        /// What pq was asked.
        what: &'static str,
    },

    /// A job's row holds what pq cannot read (written by other SQL: a time out of range, text
    /// that is not UTF-8, a state pq does not know).
    #[error("job {id} cannot be read: {reason}")]
    Unreadable {
        /// The job.
        id: i64,
        /// What is wrong with its row.
        reason: String,
    },

    /// A job waited for ([`JobHandle::result`](crate::JobHandle::result)) failed for good, or
    /// was cancelled: its last error.
    #[error("job {id} {}: {error}", if *.cancelled { "was cancelled" } else { "failed" })]
    JobFailed {
        /// The job.
        id: JobId,
        /// Whether it was cancelled rather than failed.
        cancelled: bool,
        /// Its last error.
        error: String,
    },

    /// A job waited for or looked up is not in the table.
    #[error("job {id} is not in the table: it was never committed (wait for a job after the transaction that enqueued it commits), or it finished and its result expired, or it was deleted")]
    NoSuchJob {
        /// The job.
        id: JobId,
    },

    /// A durable step (`TaskContext::step`) was run while the handler held the job's
    /// transaction (the guard `ctx.transaction()` returns), which the step needs to record its
    /// output: take the transaction inside the step's body, or drop it before the step.
    #[error("step {name:?} cannot run while the handler holds the job's transaction: take `ctx.transaction()` inside the step, or drop it before")]
    StepInTransaction {
        /// The step.
        name: String,
    },

    /// A durable step was begun while another step of the job ran (side by side, or one inside
    /// the other): steps of one job share its transaction, so they run one at a time.
    #[error(
        "step {name:?} began while another step of the job ran: steps of one job run one at a time"
    )]
    StepsOverlap {
        /// The step that began.
        name: String,
    },

    /// A durable step completed after its job stopped being its run's: the run's lease ran out
    /// and the job was rescued, or it was cancelled, retried or completed meanwhile. Nothing
    /// was recorded, and the step's writes in the job's transaction were rolled back.
    #[error("step {name:?} of job {id} completed after the job stopped being this run's (its lease ran out, or it was cancelled or retried): its writes were rolled back")]
    StepLost {
        /// The job.
        id: JobId,
        /// The step.
        name: String,
    },

    /// What a durable step of a job recorded does not decode into the type the step returns
    /// now: its type changed since the record was made.
    #[error("cannot decode what step {name:?} of job {id} returned: {error}")]
    DecodeStep {
        /// The job.
        id: JobId,
        /// The step.
        name: String,
        /// What serde said.
        error: serde_json::Error,
    },

    /// A job's result does not decode into the type its handle expects: the task's return
    /// type changed since it ran, or other SQL wrote it.
    #[error("cannot decode the result of job {id}: {error}")]
    DecodeResult {
        /// The job.
        id: JobId,
        /// What serde said.
        error: serde_json::Error,
    },
}

/// `Result` with pq's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// This error, or [`Error::NoTable`] where it says that one of `table`'s relations does
    /// not exist: what to do, where the database's message would not say.
    pub(crate) fn or_no_table(self, table: impl FnOnce() -> String) -> Self {
        match &self {
            Error::Database(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => {
                Error::NoTable {
                    table: table(),
                    reason: db.message().to_owned(),
                }
            }
            _ => self,
        }
    }

    /// Whether the same call may succeed later: the database was unreachable, restarting, out
    /// of connections, did not answer in time, or the transaction lost a conflict. Other errors
    /// (a missing table, data the database refuses, a TLS or authentication failure) would
    /// repeat on every try.
    pub fn is_transient(&self) -> bool {
        let error = match self {
            Error::Timeout { .. } | Error::PoolBusy { .. } => return true,
            // rustls reports a certificate it does not trust, or a handshake the server
            // refused, as invalid data: on a new connection, it will be as invalid next time.
            Error::Unreachable {
                error: sqlx::Error::Io(error),
                ..
            } if error.kind() == std::io::ErrorKind::InvalidData => return false,
            Error::Database(error) | Error::Unreachable { error, .. } => error,
            _ => return false,
        };
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // SQLSTATE classes 08 (connection), 53 (resources), 57 (operator intervention, as
            // in a shutdown), and the conflicts a retry resolves.
            sqlx::Error::Database(error) => error.code().is_some_and(|code| {
                ["08", "53", "57"]
                    .iter()
                    .any(|class| code.starts_with(class))
                    || ["40001", "40P01", "55P03"].contains(&code.as_ref())
            }),
            _ => false,
        }
    }
}
