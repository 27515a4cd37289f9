//! pq's error type.
//!
//! Each message is complete on its own, cause included, so printing it with `{}` says it all;
//! only [`Error::Database`] also exposes sqlx's error as its source.

/// What can go wrong in pq. Match on the variant; the message says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database refused a statement or could not be reached.
    #[error(transparent)]
    Database(#[from] sqlx::Error),

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

    /// A migration failed; nothing of it was applied.
    #[error("migration {version} ({name}) failed: {error}")]
    Migration {
        /// The migration's version.
        version: i64,
        /// The migration's file name.
        name: &'static str,
        /// The database's error.
        error: sqlx::Error,
    },
}

/// `Result` with pq's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the same call may succeed later: the database was unreachable, restarting, out
    /// of connections, or the transaction lost a conflict. Other errors (a missing table, data
    /// the database refuses) would repeat on every try.
    pub fn is_transient(&self) -> bool {
        let Error::Database(error) = self else {
            return false;
        };
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
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
