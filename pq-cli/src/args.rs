//! The command line: global options and subcommands, parsed by clap. Doc comments here are the
//! help text.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use pq_core::{JobId, JobState, When};

/// Operate a pq job queue: migrate its table, look at its queues and jobs, re-queue, cancel,
/// delete and prune jobs, enqueue a task by hand.
#[derive(Debug, Parser)]
#[command(name = "pq", version)]
pub(crate) struct Cli {
    /// The PostgreSQL database, as a URL: postgres://user:password@host:port/database.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// DATABASE_URL is a transaction pooler's (PgBouncer's `pool_mode = transaction`): no
    /// statement is kept prepared, each command's statements run in transactions.
    #[arg(long, env = "PQ_TRANSACTION_POOLER", global = true)]
    pub transaction_pooler: bool,

    /// The server's own URL, past the transaction pooler, for `migrate` and for `work`'s
    /// LISTEN (without it, `work` polls).
    #[arg(long, env = "PQ_DIRECT_URL", global = true, hide_env_values = true)]
    pub direct_url: Option<String>,

    /// The schema of the queue table (default: the first of the connection's search path).
    #[arg(long, env = "PQ_SCHEMA", global = true)]
    pub schema: Option<String>,

    /// The queue table.
    #[arg(long, env = "PQ_TABLE", global = true, default_value = "queue")]
    pub table: String,

    /// Write JSON on stdout, for scripts, instead of tables for people.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the queue table, or bring it up to date. Safe to run at every deploy.
    Migrate,

    /// Every queue with its jobs counted by state, and how long its oldest ready job has waited.
    Status,

    /// Every registered worker: where it runs, its queues, its jobs running, its last heartbeat.
    Workers,

    /// Pause or resume a queue, or limit it.
    #[command(subcommand)]
    Queues(Queues),

    /// List, show, retry, cancel or delete jobs.
    #[command(subcommand)]
    Jobs(Jobs),

    /// Recurring jobs' schedules: list them, pause, resume, trigger or delete one.
    #[command(subcommand)]
    Cron(Cron),

    /// Workflows: jobs that wait for others (pq::Workflow).
    #[command(subcommand)]
    Flows(Flows),

    /// Delete done, failed and cancelled jobs that finished long enough ago, in batches.
    Prune {
        /// How long ago they finished, such as 7d, 12h or 90m.
        #[arg(long, value_parser = parse_duration)]
        older_than: Duration,

        /// How many jobs each statement deletes.
        #[arg(long, default_value_t = pq_core::DEFAULT_BATCH_SIZE, value_parser = clap::value_parser!(u32).range(1..))]
        batch_size: u32,
    },

    /// Write a job for a task by its name, to run it by hand.
    Enqueue {
        /// The task's name, as registered by #[pq::task] (such as my_app::jobs::send_mail).
        task: String,

        /// The task's arguments as a JSON object of its parameters: '{"to": "a@example.com"}'.
        args: String,

        /// The queue (default: the task's own queue if this program registers it, else
        /// "default").
        #[arg(long)]
        queue: Option<String>,

        /// Not before this time: a delay (5m, 1h30m) or an RFC 3339 time
        /// (2030-01-01T09:00:00Z).
        #[arg(long, value_parser = parse_when)]
        schedule_at: Option<When>,
    },

    /// Run the tasks registered in this program until SIGINT or SIGTERM.
    Work {
        /// A queue to work (repeat for several; default: the queues of the registered tasks).
        #[arg(long = "queue")]
        queues: Vec<String>,

        /// Queues to work, separated by commas (mail,sms), beside any --queue.
        #[arg(long = "queues", value_delimiter = ',')]
        queue_lists: Vec<String>,

        /// How many jobs to run at once.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
        concurrency: u32,

        /// Return once no job is ready and none is running, instead of waiting for more.
        #[arg(long)]
        burst: bool,

        /// How long the worker's registration holds without a heartbeat (it beats every third
        /// of it): its jobs are rescued by other workers once it ran out, such as 30s.
        #[arg(long, value_parser = parse_duration)]
        lease: Option<Duration>,

        /// How long running jobs may finish after SIGINT or SIGTERM before they go back to the
        /// queue, such as 30s.
        #[arg(long, value_parser = parse_duration)]
        grace_period: Option<Duration>,

        /// What the worker logs to stderr (off, error, warn, info, debug or trace), unless the
        /// program installed a tracing subscriber of its own.
        #[arg(long, default_value = "info")]
        log: tracing::level_filters::LevelFilter,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cron {
    /// Every schedule: its expression, time zone and policy, its next and last fire, whether it
    /// is paused or orphaned (no running worker defines it any more).
    List,

    /// Stop a schedule from firing; the fires it misses follow its policy once it resumes.
    Pause {
        /// The schedule's name (a cron task's name).
        name: String,
    },

    /// Let a paused schedule fire again.
    Resume {
        /// The schedule's name.
        name: String,
    },

    /// Enqueue a job of the schedule now, beside its fire times.
    Trigger {
        /// The schedule's name.
        name: String,
    },

    /// Delete a schedule (an orphaned one); a worker that still defines it declares it again.
    Delete {
        /// The schedule's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Queues {
    /// Stop every worker from starting the queue's jobs (running ones finish); puts go on.
    /// Returns once no worker can start one.
    Pause {
        /// The queue.
        queue: String,
    },

    /// Let workers start the queue's jobs again.
    Resume {
        /// The queue.
        queue: String,
    },

    /// Set the queue's limits over every worker, at once and without a restart: how many of
    /// its jobs run at once, how many start per period. Replaces its limits: a limit not
    /// given is lifted (with none, the queue is no longer limited).
    Limit {
        /// The queue.
        queue: String,
        /// At most this many of its jobs running at once, over every worker.
        #[arg(long)]
        max_running: Option<u32>,
        /// At most this many starting per period: 100/s, 10/m, 5/h, 30/10s.
        #[arg(long)]
        rate: Option<String>,
        /// How many may start at once, for a rate (default: what it allows in 100 ms).
        #[arg(long, requires = "rate")]
        burst: Option<u32>,
    },

    /// Every limit: the queues' own, and the tasks' (from their `#[pq::task]` attributes),
    /// with how many of their jobs run now.
    Limits,

    /// Forget a task's policy (limit, limit_key, sequence, rate), which its workers declared:
    /// its jobs run without it until a worker whose program has it starts again.
    ForgetPolicy {
        /// The task's name.
        task: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Flows {
    /// A workflow's jobs, each with its state and the parents it waits for.
    Show {
        /// The workflow's id (`pq jobs show` prints a job's).
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Jobs {
    /// Jobs matching the filters, by id, a page at a time.
    List {
        #[command(flatten)]
        filter: Filter,

        /// Only jobs in this state: waiting, ready, scheduled, running, done, failed or
        /// cancelled.
        #[arg(long)]
        state: Option<JobState>,

        /// Start after this job id (the previous page's last).
        #[arg(long)]
        after: Option<i64>,

        /// How many jobs to list.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },

    /// Everything about one job: its data, times, attempts and errors.
    Show {
        /// The job's id.
        id: i64,
    },

    /// Queue failed jobs again, ready at once, with their attempts reset.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "all"])))]
    Retry {
        /// The failed jobs' ids.
        #[arg(conflicts_with = "all")]
        ids: Vec<i64>,

        /// Every failed job matching --queue and --task, in batches.
        #[arg(long)]
        all: bool,

        #[command(flatten)]
        filter: Filter,

        /// How many jobs each statement re-queues (with --all).
        #[arg(long, default_value_t = pq_core::DEFAULT_BATCH_SIZE, value_parser = clap::value_parser!(u32).range(1..))]
        batch_size: u32,
    },

    /// Cancel jobs that have not ended: they stay in the table, cancelled, and never run again.
    /// A running job is stopped by its worker at its next heartbeat, its transaction rolled back.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "all"])))]
    Cancel {
        /// The jobs' ids.
        #[arg(conflicts_with = "all")]
        ids: Vec<i64>,

        /// Every job matching --queue, --task and --state that has not ended, in batches.
        #[arg(long)]
        all: bool,

        #[command(flatten)]
        filter: Filter,

        /// Only jobs in this state (with --all): ready, scheduled or running.
        #[arg(long, requires = "all")]
        state: Option<JobState>,

        /// How many jobs each statement cancels (with --all).
        #[arg(long, default_value_t = pq_core::DEFAULT_BATCH_SIZE, value_parser = clap::value_parser!(u32).range(1..))]
        batch_size: u32,
    },

    /// Delete jobs that are not running.
    Delete {
        /// The jobs' ids.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
}

/// The queue and task filters that several commands share.
#[derive(Debug, Args)]
pub(crate) struct Filter {
    /// Only jobs of this queue.
    #[arg(long)]
    pub queue: Option<String>,

    /// Only jobs of this task.
    #[arg(long)]
    pub task: Option<String>,
}

impl Filter {
    pub fn to_job_filter(&self, state: Option<JobState>) -> pq_core::JobFilter {
        pq_core::JobFilter {
            queue: self.queue.clone(),
            state,
            task: self.task.clone(),
        }
    }
}

pub(crate) fn ids(ids: &[i64]) -> Vec<JobId> {
    ids.iter().copied().map(JobId).collect()
}

fn parse_duration(input: &str) -> Result<Duration, String> {
    pq_core::parse_duration(input)
        .map_err(|e| format!("{e}; write a duration such as 7d, 12h or 90m"))
}

fn parse_when(input: &str) -> Result<When, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(input) {
        return Ok(When::At(at.with_timezone(&Utc)));
    }
    pq_core::parse_duration(input).map(When::In).map_err(|_| {
        format!(
            "{input:?} is neither a delay (such as 5m or 1h30m) nor an RFC 3339 time \
             (such as 2030-01-01T09:00:00Z)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn schedule_at_takes_a_delay_or_a_time() {
        assert_eq!(parse_when("5m"), Ok(When::In(Duration::from_secs(300))));
        assert!(matches!(
            parse_when("2030-01-01T09:00:00Z"),
            Ok(When::At(_))
        ));
        let err = parse_when("tomorrow").unwrap_err();
        assert!(err.contains("neither a delay"), "{err}");
    }
}
