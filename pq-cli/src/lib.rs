//! `pq`, the command-line tool of a pq queue table: migrate it, see its queues and jobs, and act
//! on them without writing SQL.
//!
//! ```text
//! $ pq status
//! QUEUE   READY  SCHEDULED  RUNNING  FAILED  DONE  CANCELLED  OLDEST READY
//! mail       12          3        4       1     0          0  2m 5s
//!
//! $ pq jobs list --state failed
//! $ pq jobs show 42
//! $ pq jobs retry 42            # or: pq jobs retry --all --queue mail
//! $ pq prune --older-than 7d
//! $ pq enqueue my_app::send_mail '{"to": "a@example.com"}' --schedule-at 5m
//! ```
//!
//! Every command reads `DATABASE_URL` (or `--database-url`), `--schema` and `--table`, and
//! writes JSON with `--json`.
//!
//! The same commands run inside an application's own binary, which then also offers `work` with
//! the tasks that binary registers, and checks `enqueue`'s task name and arguments against them:
//!
//! ```no_run
//! #[pq::task(queue = "mail")]
//! async fn send_mail(to: String) -> anyhow::Result<()> {
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     // `my-app work --concurrency 8`, `my-app status`, `my-app enqueue ...`
//!     pq_cli::main().await
//! }
//! ```

use std::ffi::OsString;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches};
use pq_core::Pq;
use pq_worker::Registry;
use sqlx::ConnectOptions as _;

mod args;
mod commands;
mod output;

use args::Cli;

/// Runs the command given on this process's command line as the `pq` tool does: its result on
/// stdout, or what went wrong and what to do about it on one line of stderr, after the
/// program's name, and the exit code 1. A usage error (or `--help`) prints clap's message and
/// exits the process, as clap does. An application's own binary that embeds the tool returns
/// this from its `main`, so that both print errors alike (see the crate's example).
pub async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let program = std::env::args_os()
                .next()
                .map(std::path::PathBuf::from)
                .and_then(|path| Some(path.file_stem()?.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "pq".to_owned());
            eprintln!("{program}: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the command given on this process's command line, printing its result on stdout.
///
/// A usage error (or `--help`) prints clap's message and exits the process, as clap does;
/// anything else that goes wrong is returned, with what went wrong and what to do about it.
pub async fn run() -> anyhow::Result<()> {
    run_from(std::env::args_os()).await
}

/// Runs the command given by `args`, the first of which is the program's name.
///
/// ```no_run
/// # async fn example() -> anyhow::Result<()> {
/// pq_cli::run_from(["pq", "--schema", "jobs", "prune", "--older-than", "30d"]).await?;
/// # Ok(()) }
/// ```
pub async fn run_from<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let registry = Registry::from_inventory()?;
    let mut command = Cli::command();
    if registry.is_empty() {
        // A program without tasks has nothing to work on.
        command = command.mut_subcommand("work", |work| work.hide(true));
    }
    let matches = command
        .try_get_matches_from(args)
        .unwrap_or_else(|e| e.exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());

    let mut out = Vec::new();
    commands::run(&cli, &registry, &mut out)
        .await
        .map_err(|e| anyhow::anyhow!(message(&e)))?;
    use std::io::Write as _;
    std::io::stdout()
        .write_all(&out)
        .context("cannot write to stdout")?;
    Ok(())
}

/// The error and its causes on one line, each cause once: an error whose message already
/// quotes its source (as pq's and sqlx's do) does not repeat it.
fn message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if !message.contains(&cause) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&cause);
        }
    }
    let missing = error
        .chain()
        .any(|cause| matches!(cause.downcast_ref(), Some(pq_core::Error::NoTable { .. })));
    if missing {
        message.push_str(" (or, if it is elsewhere, name it with --schema and --table)");
    }
    message
}

/// Connects to the database and table that the command line names.
async fn connect(cli: &Cli, max_connections: u32) -> anyhow::Result<Pq> {
    let url = cli
        .database_url
        .as_deref()
        .context("no database: set DATABASE_URL or pass --database-url")?;
    let mut builder = Pq::builder()
        .table(&cli.table)
        .max_connections(max_connections);
    if let Some(schema) = &cli.schema {
        builder = builder.schema(schema);
    }
    if cli.transaction_pooler {
        builder = builder.transaction_pooler();
    }
    if let Some(direct) = &cli.direct_url {
        builder = builder.direct_url(direct);
    }
    // Checks the URL, schema and table without connecting.
    let pq = builder.connect_lazy(url)?;
    // Then one plain connection: when the database is down it fails at once with the reason
    // (refused, unknown host, bad password), where the pool would wait and say it timed out.
    let connection = pq
        .pool()
        .connect_options()
        .connect()
        .await
        .with_context(|| format!("cannot connect to the database at {}", redact(url)))?;
    let _ = sqlx::Connection::close(connection).await;
    Ok(pq)
}

/// The URL with its passwords hidden, to show in messages: the one after the user name, and
/// any `password=` parameter of its query string (or of a `key=value` connection string).
fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut redacted = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((credentials, host)) => match credentials.split_once(':') {
                Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
                None => base.to_owned(),
            },
            None => base.to_owned(),
        },
        // A `key=value` connection string: its words are its parameters.
        None => base
            .split(' ')
            .map(hide_password)
            .collect::<Vec<_>>()
            .join(" "),
    };
    if let Some(query) = query {
        redacted.push('?');
        let pairs: Vec<String> = query.split('&').map(hide_password).collect();
        redacted.push_str(&pairs.join("&"));
    }
    redacted
}

/// `password=...` as `password=***`; any other parameter as it is.
fn hide_password(parameter: &str) -> String {
    match parameter.split_once('=') {
        Some((key, _)) if key.trim().eq_ignore_ascii_case("password") => format!("{key}=***"),
        _ => parameter.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{message, redact};

    #[test]
    fn passwords_are_hidden_in_messages() {
        assert_eq!(
            redact("postgres://me:secret@db:5432/app"),
            "postgres://me:***@db:5432/app"
        );
        assert_eq!(redact("postgres://me@db/app"), "postgres://me@db/app");
        assert_eq!(
            redact("postgres://me@db/app?sslmode=require&password=secret"),
            "postgres://me@db/app?sslmode=require&password=***"
        );
        assert_eq!(
            redact("host=db user=me password=secret dbname=app"),
            "host=db user=me password=*** dbname=app"
        );
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let source = std::io::Error::other("connection refused");
        let error = anyhow::Error::new(std::io::Error::other(format!("io error: {source}")))
            .context("cannot connect");

        assert_eq!(
            message(&error),
            "cannot connect: io error: connection refused"
        );
    }
}
