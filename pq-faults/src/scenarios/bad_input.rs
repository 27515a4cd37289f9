//! Scenario 6: bad input beside good jobs. Each bad job is refused before it is written, or fails
//! at once with an error that says why; the good jobs around them all run exactly once.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use pq::{Enqueue, NewJob, Pq};

use super::{allowance, start_producers, start_workers, Profile};
use crate::account::{Duplicates, Ledger};
use crate::child::KEY_SPACE;
use crate::env::Env;
use crate::procs::WorkerOptions;
use crate::report::Report;
use crate::tasks::{self, QUEUE};

/// Valid JSON that the task cannot take, inserted by SQL: (task, data, what the error says).
const UNDECODABLE: &[(&str, &str, &str)] = &[
    (
        "faults::plain",
        "42",
        "invalid type: integer `42`, expected struct plain",
    ),
    (
        "faults::plain",
        r#""a string""#,
        "invalid type: string \"a string\"",
    ),
    ("faults::plain", "null", "invalid type: null"),
    ("faults::plain", "[]", "invalid length 0"),
    (
        "faults::plain",
        r#"{"key": "seven", "work_ms": 0}"#,
        "invalid type: string \"seven\", expected i64",
    ),
    ("faults::plain", r#"{"key": 1}"#, "missing field `work_ms`"),
    (
        "faults::plain",
        r#"{"key": 1, "work_ms": -5}"#,
        "invalid value: integer `-5`, expected u32",
    ),
    (
        "faults::plain",
        r#"{"key": 1, "work_ms": 1e400}"#,
        "cannot decode the arguments of task `faults::plain`",
    ),
];

pub async fn bad_input(profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("bad-input", logs).await?;
    let hostile_queues = [
        r#"it's "quoted"; DROP TABLE faults.queue; --"#.to_owned(),
        format!("long;{}", "é".repeat(60)),
    ];
    let options = WorkerOptions {
        queues: [QUEUE.to_owned()]
            .into_iter()
            .chain(hostile_queues.iter().cloned())
            .collect(),
        ..WorkerOptions::default()
    };
    let mut workers = start_workers(&mut env, 2, &options)?;
    let mut producers = start_producers(&mut env, 1, profile.good_jobs, Duration::ZERO, 2)?;
    let mut ledger = Ledger::default();
    let mut keys = (7 * KEY_SPACE)..;
    let mut key = || keys.next().expect("endless");
    let insert = format!(
        "INSERT INTO {} (q_name, task, data) VALUES ($1, $2, $3::json) RETURNING id",
        env.table
    );

    // Malformed JSON never becomes a job: the column is `json`, and PostgreSQL checks it.
    let mut refused = 0;
    for bad in [
        r#"{"key": 1,"#,
        "{'key': 1}",
        "NaN",
        "",
        r#"{"a": 1} trailing"#,
    ] {
        let result: Result<i64, _> = sqlx::query_scalar(&insert)
            .bind(QUEUE)
            .bind("faults::plain")
            .bind(bad)
            .fetch_one(&env.db)
            .await;
        refused += usize::from(is_invalid_json(result.err()));
    }
    let through_pq = (&env.pq)
        .enqueue(NewJob::from_json(QUEUE, "{not json".into())?.task("faults::plain"))
        .await;
    refused += usize::from(is_invalid_json(match through_pq {
        Err(pq::Error::Database(error)) => Some(error),
        _ => None,
    }));
    report.line(format!(
        "malformed JSON: {refused} of 6 inserts refused by PostgreSQL (22P02), 5 by SQL and 1 through pq"
    ));
    report.check(refused == 6, "PostgreSQL refuses every malformed JSON");

    // Valid JSON a task cannot take fails at once, naming the task and the reason.
    for (task, data, expected) in UNDECODABLE {
        let id: i64 = sqlx::query_scalar(&insert)
            .bind(QUEUE)
            .bind(task)
            .bind(data)
            .fetch_one(&env.db)
            .await?;
        ledger.expected_failures.insert(id, (*expected).to_owned());
    }
    // A job of a task no worker knows waits for one that does (a rolling deploy), shown as
    // such, instead of failing.
    let unknown: i64 = sqlx::query_scalar(&insert)
        .bind(QUEUE)
        .bind("faults::nope")
        .bind("{}")
        .fetch_one(&env.db)
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let job = env.pq.admin().job(pq::JobId(unknown)).await?;
    let waiting = job.is_some_and(|job| job.state == pq::JobState::Ready && job.attempts == 0);
    let shown = env.pq.admin().unrunnable().await?;
    let shown = shown
        .iter()
        .any(|group| group.task.as_deref() == Some("faults::nope") && group.jobs == 1);
    report.line(format!(
        "a job of a task no worker knows: waiting {waiting}, shown as unrunnable {shown}"
    ));
    report.check(
        waiting && shown,
        "a job of an unknown task waits, shown as unrunnable",
    );
    env.pq.admin().delete(pq::JobId(unknown)).await?;

    // A lone surrogate: PostgreSQL's `json` keeps the escape as written; serde refuses it.
    let surrogate = format!(
        r#"{{"key": {}, "text": "\ud800", "len": 3, "nul": false}}"#,
        key()
    );
    match sqlx::query_scalar::<_, i64>(&insert)
        .bind(QUEUE)
        .bind("faults::text")
        .bind(&surrogate)
        .fetch_one(&env.db)
        .await
    {
        Ok(id) => {
            // serde_json's words for it vary by version; the task and the failure do not.
            ledger.expected_failures.insert(
                id,
                "cannot decode the arguments of task `faults::text`".to_owned(),
            );
            report.line("a lone surrogate \"\\ud800\" is stored by PostgreSQL and fails the job when decoded");
        }
        Err(error) => report.line(format!(
            "a lone surrogate is refused by PostgreSQL: {error}"
        )),
    }

    // Hostile but valid input runs, exactly once.
    let big = "pq".repeat(5 << 20);
    let text_jobs = [
        tasks::text(key(), big.clone(), big.len(), false),
        tasks::text(key(), "NUL \0 inside".to_owned(), 12, true),
    ];
    for call in text_jobs {
        let k = call.args().key;
        ledger.ok.insert(call.enqueue(&env.pq).await?.0, k);
    }
    let k = key();
    let nul_by_sql = format!(r#"{{"key": {k}, "text": "a\u0000b", "len": 3, "nul": true}}"#);
    let id: i64 = sqlx::query_scalar(&insert)
        .bind(QUEUE)
        .bind("faults::text")
        .bind(&nul_by_sql)
        .fetch_one(&env.db)
        .await?;
    ledger.ok.insert(id, k);
    for queue in &hostile_queues {
        for _ in 0..3 {
            let k = key();
            let id = tasks::transactional(k, 0)
                .queue(queue.clone())
                .enqueue(&env.pq)
                .await?;
            ledger.ok.insert(id.0, k);
        }
    }
    report.line(format!(
        "a {} MB argument, NUL characters (through pq and by SQL) and {} queues named like {:?} and {} bytes long are enqueued",
        big.len() >> 20,
        hostile_queues.len(),
        hostile_queues[0],
        hostile_queues[1].len()
    ));

    // A handler's error with a NUL in it is recorded (PostgreSQL's text cannot hold NUL).
    let id = tasks::fail("NUL \0 in an error".to_owned())
        .enqueue(&env.pq)
        .await?;
    ledger
        .expected_failures
        .insert(id.0, "NUL \\0 in an error".to_owned());

    // Refused before anything is written.
    let first_refused = key();
    let refusals = [
        (
            "a queue name with NUL",
            tasks::plain(key(), 0)
                .queue("a\0b")
                .enqueue(&env.pq)
                .await
                .err(),
        ),
        (
            "an empty queue name",
            tasks::plain(key(), 0)
                .queue("")
                .enqueue(&env.pq)
                .await
                .err(),
        ),
        (
            "schedule_at \"-5s\"",
            tasks::plain(key(), 0)
                .schedule_at("-5s")
                .enqueue(&env.pq)
                .await
                .err(),
        ),
        (
            "schedule_at \"10x\"",
            tasks::plain(key(), 0)
                .schedule_at("10x")
                .enqueue(&env.pq)
                .await
                .err(),
        ),
        (
            "schedule_at \"99999999999999999999y\"",
            tasks::plain(key(), 0)
                .schedule_at("99999999999999999999y")
                .enqueue(&env.pq)
                .await
                .err(),
        ),
        (
            "schedule_at Duration::MAX",
            tasks::plain(key(), 0)
                .schedule_at(Duration::MAX)
                .enqueue(&env.pq)
                .await
                .err(),
        ),
        (
            "expected_at 300,000 years",
            tasks::plain(key(), 0)
                .expected_at(Duration::from_secs(300_000 * 365 * 86_400))
                .enqueue(&env.pq)
                .await
                .err(),
        ),
    ];
    for (what, error) in refusals {
        match error {
            Some(error) => report.line(format!("{what}: refused: {error}")),
            None => {
                report.check(false, format!("{what} was accepted"));
            }
        }
    }
    // By text: the lone surrogate's row cannot be read with PostgreSQL's json operators.
    let refused_keys: Vec<String> = (first_refused..key()).map(|k| k.to_string()).collect();
    let written = env
        .count(&format!(
            "data::text ~ '\"key\":({})[,}}]'",
            refused_keys.join("|")
        ))
        .await?;
    report.check(
        written == 0,
        format!("refused calls wrote nothing ({written} rows)"),
    );

    check_injection(&env, &mut report).await?;

    let (produced, _) = env
        .wait_producers(&mut producers, allowance(profile.good_jobs))
        .await?;
    ledger.ok.extend(produced.ok);
    ledger.uncertain.extend(produced.uncertain);
    env.wait_drained(allowance(profile.good_jobs)).await?;
    env.stop_workers(&mut workers, &mut report).await?;
    let big_effect: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {} WHERE note = $1",
        env.effects
    ))
    .bind(format!("{} bytes", big.len()))
    .fetch_one(&env.db)
    .await?;
    report.check(big_effect == 1, "the 10 MB argument arrived whole, once");
    env.account(
        &ledger,
        &HashSet::new(),
        Duplicates::None,
        options.keep_completed,
        &mut report,
    )
    .await?;
    Ok(report)
}

fn is_invalid_json(error: Option<sqlx::Error>) -> bool {
    error
        .as_ref()
        .and_then(|e| e.as_database_error())
        .and_then(|e| e.code())
        .is_some_and(|code| code == "22P02")
}

/// A schema and a table named to break out of their quotes: pq creates and uses them as
/// names, and nothing else is touched.
async fn check_injection(env: &Env, report: &mut Report) -> Result<()> {
    let schema = r#"faults"; DROP SCHEMA faults CASCADE; --"#;
    let table = r#"q"); DROP TABLE "faults"."queue"; --"#;
    let pq = Pq::builder()
        .schema(schema)
        .table(table)
        .max_connections(2)
        .connect(&env.server.url())
        .await?;
    pq.create().await?;
    pq.queue("apples").put(&"Cox").await?;
    let got = pq.queue("apples").try_get().await?;
    let exists: bool = sqlx::query_scalar(
        "SELECT to_regclass('faults.queue') IS NOT NULL \
           AND EXISTS (SELECT FROM pg_tables WHERE schemaname = $1 AND tablename = $2)",
    )
    .bind(schema)
    .bind(table)
    .fetch_one(&env.db)
    .await?;
    report.line(format!(
        "schema {schema:?} and table {table:?}: created, a job put and got back; faults.queue untouched: {exists}"
    ));
    report.check(
        got.is_some_and(|job| job.data::<String>().ok().as_deref() == Some("Cox")) && exists,
        "names crafted for SQL injection are only names",
    );
    Ok(())
}

/// `profile.poison_among` good jobs (half of them transactional) with poison rows among them,
/// written by SQL as no pq would: times pq cannot read (`enqueued_at = '-infinity'`, an
/// `expected_at` in year 294000), a negative attempt count, an error history that is not a
/// list. Each poison row fails alone with its reason, or runs once as the good ones do; no
/// worker stops or stalls on them.
pub async fn poison_rows(profile: &Profile, _seed: u64, logs: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut env = Env::start("poison-rows", logs).await?;
    let options = WorkerOptions::default();
    let mut producers = start_producers(&mut env, 2, profile.poison_among, Duration::ZERO, 0)?;
    // Poison rows among the good jobs, not ahead of them all.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut ledger = Ledger::default();
    let mut keys = (9 * KEY_SPACE)..;
    let insert = format!(
        "INSERT INTO {} (q_name, task, data) VALUES ($1, $2, $3::json) RETURNING id",
        env.table
    );
    // (task, the column other SQL sets, its value, the error the job must fail with: none if
    // it must run once.)
    let poison: &[(&str, &str, &str, Option<&str>)] = &[
        (
            "faults::plain",
            "enqueued_at",
            "'-infinity'",
            Some("enqueued_at"),
        ),
        (
            "faults::plain",
            "expected_at",
            "'294000-01-01'",
            Some("expected_at"),
        ),
        ("faults::plain", "expected_at", "'infinity'", None),
        ("faults::plain", "attempts", "-3", None),
        (
            "faults::fail",
            "errors",
            "'\"not a list\"'",
            Some("poisoned"),
        ),
    ];
    for &(task, column, value, fails) in poison {
        let key = keys.next().expect("endless");
        let data = match task {
            "faults::fail" => serde_json::json!({ "message": "poisoned" }).to_string(),
            _ => serde_json::json!({ "key": key, "work_ms": 0 }).to_string(),
        };
        let id: i64 = sqlx::query_scalar(&insert)
            .bind(QUEUE)
            .bind(task)
            .bind(&data)
            .fetch_one(&env.db)
            .await?;
        sqlx::query(&format!(
            "UPDATE {} SET {column} = {value} WHERE id = $1",
            env.table
        ))
        .bind(id)
        .execute(&env.db)
        .await?;
        match fails {
            Some(reason) => {
                ledger.expected_failures.insert(id, reason.to_owned());
            }
            None => {
                ledger.ok.insert(id, key);
            }
        }
    }
    let mut workers = start_workers(&mut env, 4, &options)?;
    let (produced, _) = env
        .wait_producers(&mut producers, allowance(profile.poison_among))
        .await?;
    ledger.ok.extend(produced.ok);
    ledger.uncertain.extend(produced.uncertain);
    env.wait_drained(allowance(profile.poison_among)).await?;
    for worker in &mut workers {
        report.check(
            worker.exited().is_none(),
            format!("{} stopped on a poison row", worker.name),
        );
    }
    env.stop_workers(&mut workers, &mut report).await?;
    report.line(format!(
        "{} good jobs and {} poison rows drained by 4 workers",
        profile.poison_among,
        poison.len()
    ));
    env.account(
        &ledger,
        &HashSet::new(),
        Duplicates::None,
        options.keep_completed,
        &mut report,
    )
    .await?;
    Ok(report)
}
