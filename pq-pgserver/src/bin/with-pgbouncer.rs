//! `with-pgbouncer COMMAND [ARGS]...`: runs the command with a PgBouncer of its own, in
//! transaction pooling mode, in front of the server of `DATABASE_URL` (on 127.0.0.1), its URL
//! in `PQ_TEST_POOLER_URL`; exits as the command did. `.ci/run` runs pq's integration tests
//! through it.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use pq_pgserver::Bouncer;

fn main() -> Result<ExitCode> {
    let mut args = std::env::args().skip(1);
    let Some(program) = args.next() else {
        bail!("usage: with-pgbouncer COMMAND [ARGS]...");
    };
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let (port, database) = port_and_database(&url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bouncer = runtime.block_on(Bouncer::start("tests", port))?;
    let status = std::process::Command::new(&program)
        .args(args)
        .env("PQ_TEST_POOLER_URL", bouncer.url(&database))
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    drop(bouncer);
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// The port (5432 unless given) and database of a `postgres://user@host:port/database` URL.
fn port_and_database(url: &str) -> Result<(u16, String)> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split('?').next().unwrap_or(rest);
    let (authority, database) = rest.split_once('/').unwrap_or((rest, "postgres"));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let port = match host.rsplit_once(':') {
        Some((_, port)) => port.parse().with_context(|| format!("a port in {url}"))?,
        None => 5432,
    };
    Ok((port, database.to_owned()))
}
