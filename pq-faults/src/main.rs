//! pq's fault and load suite: proves what pq promises (docs/guarantees.md) with real worker and
//! producer processes against a PostgreSQL server of its own, started for each scenario and
//! deleted after it, and ends every scenario with an exact accounting of every job.
//!
//! ```text
//! cargo run -p pq-faults -- [--profile light|heavy] [--scenario NAME]... [--via pgbouncer] [--keep-logs]
//! ```
//!
//! The same binary is the suite's worker and producer processes (`pq-faults worker ...`,
//! `pq-faults producer ...`).

mod account;
mod child;
mod env;
mod flags;
mod procs;
mod report;
mod rng;
mod scenarios;
mod tasks;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;

use crate::flags::Flags;
use crate::report::Report;
use crate::scenarios::{Profile, SCENARIOS};

const USAGE: &str = "\
usage: pq-faults [--profile light|heavy] [--scenario NAME]... [--seed N] [--via pgbouncer] [--keep-logs]

Runs pq's fault and load scenarios, each against a PostgreSQL server of its own (initdb into a
temporary folder; PostgreSQL's binaries from /usr/lib/postgresql/*/bin or $PQ_PG_BIN),
and prints each one's accounting and PASS or FAIL. Exits non-zero if any fails.

  --profile   light (default; the CI profile, under 5 minutes) or heavy (more jobs, more faults)
  --via       pgbouncer: workers and producers connect through a PgBouncer of the scenario's
              own in transaction pooling mode (Debian's /usr/sbin/pgbouncer, or $PQ_PGBOUNCER)
  --scenario  run only this scenario (repeatable); one of:";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("worker") => child::worker(&args[1..]).map(|()| ExitCode::SUCCESS),
        Some("producer") => child::producer(&args[1..]).map(|()| ExitCode::SUCCESS),
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            for (name, what, _) in SCENARIOS {
                println!("      {name:<17} {what}");
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => suite(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("pq-faults: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Completes on SIGINT or SIGTERM, naming it.
async fn interruption() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

fn suite(args: &[String]) -> Result<ExitCode> {
    let flags = Flags::parse(args, &["keep-logs"])?;
    flags.only(&["profile", "scenario", "seed", "via", "keep-logs"])?;
    match flags.get("via") {
        None => {}
        Some("pgbouncer") => env::VIA_PGBOUNCER.store(true, std::sync::atomic::Ordering::Relaxed),
        Some(other) => anyhow::bail!("unknown --via {other:?}; expected pgbouncer"),
    }
    let profile = match flags.get("profile").unwrap_or("light") {
        "light" => Profile::light(),
        "heavy" => Profile::heavy(),
        other => anyhow::bail!("unknown profile {other:?}; expected light or heavy"),
    };
    let chosen = flags.all("scenario");
    for name in chosen {
        if !SCENARIOS.iter().any(|(known, _, _)| known == name) {
            let names: Vec<_> = SCENARIOS.iter().map(|(name, _, _)| *name).collect();
            anyhow::bail!(
                "unknown scenario {name:?}; expected one of {}",
                names.join(", ")
            );
        }
    }
    let seed = flags.parsed(
        "seed",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )?;
    let keep_logs = flags.is_set("keep-logs");
    let logs = std::env::temp_dir().join(format!("pq-faults-logs-{}", std::process::id()));

    pq_pgserver::reap_orphans();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    println!(
        "pq-faults: profile {}, seed {seed}, logs in {}",
        profile.name,
        logs.display()
    );
    println!(
        "pq-faults: each scenario starts its own PostgreSQL on 127.0.0.1, default configuration but {}",
        pq_pgserver::SETTINGS
    );
    if env::VIA_PGBOUNCER.load(std::sync::atomic::Ordering::Relaxed) {
        println!(
            "pq-faults: workers and producers go through PgBouncer, pool_mode = transaction, at most {} server connections",
            pq_pgserver::SERVER_CONNECTIONS
        );
    }
    let (mut passed, mut failed) = (0, 0);
    for (name, what, run) in SCENARIOS {
        if !chosen.is_empty() && !chosen.iter().any(|c| c == name) {
            continue;
        }
        println!("\n== {name}: {what}");
        let scenario_logs: PathBuf = logs.join(name);
        let began = Instant::now();
        let (report, interrupted) = runtime.block_on(async {
            let failure = |message: String| {
                let mut report = Report::default();
                report.check(false, message);
                report
            };
            tokio::select! {
                outcome = tokio::time::timeout(
                    profile.scenario_timeout,
                    run(&profile, seed, &scenario_logs),
                ) => (match outcome {
                    Ok(Ok(report)) => report,
                    Ok(Err(error)) => failure(format!("{error:#}")),
                    Err(_) => failure(format!("did not finish within {:?}", profile.scenario_timeout)),
                }, false),
                // Dropping the scenario's future runs its guards: processes killed, server stopped.
                signal = interruption() => (failure(format!("interrupted by {signal}")), true),
            }
        });
        for line in &report.lines {
            println!("   {line}");
        }
        for failure in &report.failures {
            println!("   FAILED: {failure}");
        }
        let secs = began.elapsed().as_secs_f64();
        if report.passed() {
            passed += 1;
            println!("PASS {name} ({secs:.1} s)");
            if !keep_logs {
                let _ = std::fs::remove_dir_all(&scenario_logs);
            }
        } else {
            failed += 1;
            println!(
                "FAIL {name} ({secs:.1} s); logs in {}",
                scenario_logs.display()
            );
        }
        if interrupted {
            break;
        }
    }
    let _ = std::fs::remove_dir(&logs); // only if every scenario's logs were removed
    println!(
        "\npq-faults: profile {} took {:.1} s",
        profile.name,
        started.elapsed().as_secs_f64()
    );
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
