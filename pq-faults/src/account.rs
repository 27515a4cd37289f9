//! The accounting that ends every scenario: what was enqueued (the producers' ledgers), what
//! ran (the effects table) and what is left (the queue table), job by job.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::PgPool;

use crate::report::Report;

/// What the producers say they enqueued.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Job id to key, for every enqueue call that returned an id.
    pub ok: HashMap<i64, i64>,
    /// Keys whose enqueue call returned an error: the job may still exist, if the connection
    /// broke after the commit.
    pub uncertain: HashSet<i64>,
    /// The slowest successful enqueue call.
    pub slowest_ok: Duration,
    /// The slowest failed enqueue call: how fast an enqueue fails while the database is away.
    pub slowest_error: Duration,
    /// A few of the errors, each different, to show.
    pub error_samples: Vec<String>,
    /// Jobs meant to fail, with a piece of the error they must fail with.
    pub expected_failures: HashMap<i64, String>,
}

impl Ledger {
    /// Adds a producer's ledger file (see `child::producer`).
    pub fn read(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the ledger {}", path.display()))?;
        for line in text.lines() {
            let mut fields = line.splitn(4, ' ');
            let kind = fields.next().unwrap_or("");
            let mut number = || -> Result<i64> {
                fields
                    .next()
                    .context("short ledger line")?
                    .parse()
                    .with_context(|| format!("bad ledger line {line:?}"))
            };
            match kind {
                "ok" => {
                    let key = number()?;
                    let id = number()?;
                    let micros = number()?;
                    self.ok.insert(id, key);
                    self.slowest_ok = self.slowest_ok.max(micros_to_duration(micros));
                }
                "err" => {
                    let key = number()?;
                    let micros = number()?;
                    self.uncertain.insert(key);
                    self.slowest_error = self.slowest_error.max(micros_to_duration(micros));
                    let message: String = fields.next().unwrap_or("").chars().take(160).collect();
                    if self.error_samples.len() < 3 && !self.error_samples.contains(&message) {
                        self.error_samples.push(message);
                    }
                }
                _ => anyhow::bail!("bad ledger line {line:?}"),
            }
        }
        Ok(())
    }
}

fn micros_to_duration(micros: i64) -> Duration {
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// One run's effect.
#[derive(Debug, Clone)]
struct Effect {
    key: i64,
    attempt: i32,
    pid: i32,
    kind: String,
}

/// `id, state, attempts, last_error, errors::text` of a job's row.
type RowColumns = (i64, String, i32, Option<String>, Option<String>);

/// A job's row as left in the queue table.
#[derive(Debug)]
struct Row {
    state: String,
    attempts: i32,
    last_error: Option<String>,
    /// The attempts that recorded an error, with the error.
    errors: HashMap<i64, String>,
}

/// How duplicates of plain handlers are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicates {
    /// None may happen: nothing interrupted a running job.
    None,
    /// Only where the earlier run's worker process was interrupted (killed or stopped).
    OnlyInterrupted,
    /// As `OnlyInterrupted`, but the interrupted workers gave their jobs back (their `run()`
    /// was dropped), which does not count the attempt: a later run may have the attempt
    /// number of the interrupted one.
    GivenBack,
    /// As `OnlyInterrupted`, but an operator's retry started the jobs' attempts over, so a
    /// later run may have the attempt number of the interrupted one.
    OperatorRetried,
    /// Where the earlier run's worker was interrupted, or the job recorded an error for that
    /// attempt (its lease expired while the database was away, say).
    Explained,
}

/// Every job, accounted for.
#[derive(Debug, Default)]
pub struct Accounting {
    pub enqueued: usize,
    pub transactional: usize,
    /// Jobs whose enqueue call failed, yet which exist (the commit went through).
    pub despite_error: usize,
    pub effects: usize,
    pub exactly_once: usize,
    /// Plain jobs that ran more than once, and how many extra effects they had.
    pub duplicated_jobs: usize,
    pub extra_effects: usize,
    /// Why, for each explanation, how many extra effects.
    pub explanations: BTreeMap<String, usize>,
    pub unexplained: Vec<String>,
    /// Transactional jobs with more than one effect: never allowed.
    pub transactional_duplicates: Vec<String>,
    pub lost: Vec<String>,
    pub stuck: Vec<String>,
    pub failed: Vec<String>,
    /// Effects or rows that no ledger explains.
    pub strays: Vec<String>,
    /// Jobs that ran and were completed, but are gone although the workers keep completed jobs.
    pub not_kept: Vec<String>,
    pub expected_failures_ok: usize,
}

impl Accounting {
    /// Compares the ledger with the effects table and the queue table. `interrupted` are the
    /// pids of worker processes that were killed or stopped while running jobs.
    pub async fn take(
        db: &PgPool,
        table: &str,
        effects: &str,
        ledger: &Ledger,
        interrupted: &HashSet<u32>,
        duplicates: Duplicates,
        kept: bool,
    ) -> Result<Accounting> {
        let mut by_job: BTreeMap<i64, Vec<Effect>> = BTreeMap::new();
        let effect_rows: Vec<(i64, i64, i32, i32, String)> = sqlx::query_as(&format!(
            "SELECT job_id, key, attempt, pid, kind FROM {effects} ORDER BY job_id, at"
        ))
        .fetch_all(db)
        .await?;
        let effect_count = effect_rows.len();
        for (job, key, attempt, pid, kind) in effect_rows {
            by_job.entry(job).or_default().push(Effect {
                key,
                attempt,
                pid,
                kind,
            });
        }
        let row_list: Vec<RowColumns> = sqlx::query_as(&format!(
            "SELECT id, state, attempts, last_error, errors::text FROM {table}"
        ))
        .fetch_all(db)
        .await?;
        let mut rows = HashMap::new();
        for (id, state, attempts, last_error, errors) in row_list {
            let errors = errors
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|value| value.as_array().cloned())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|e| Some((e["attempt"].as_i64()?, e["error"].as_str()?.to_owned())))
                .collect();
            rows.insert(
                id,
                Row {
                    state,
                    attempts,
                    last_error,
                    errors,
                },
            );
        }

        let mut account = Accounting {
            enqueued: ledger.ok.len(),
            effects: effect_count,
            ..Accounting::default()
        };
        let mut jobs: Vec<i64> = ledger.ok.keys().copied().collect();
        for (&job, effects) in &by_job {
            if ledger.ok.contains_key(&job) {
                continue;
            }
            if effects.iter().all(|e| ledger.uncertain.contains(&e.key)) {
                account.despite_error += 1;
                jobs.push(job);
            } else {
                account
                    .strays
                    .push(format!("job {job} ran but no producer enqueued it"));
            }
        }
        for (&id, row) in &rows {
            if !ledger.ok.contains_key(&id)
                && !by_job.contains_key(&id)
                && !ledger.expected_failures.contains_key(&id)
            {
                account.strays.push(format!(
                    "job {id} ({}, attempt {}) is in the table but in no ledger",
                    row.state, row.attempts
                ));
            }
        }
        jobs.sort_unstable();

        for job in jobs {
            let effects = by_job.get(&job).map_or(&[][..], Vec::as_slice);
            let row = rows.get(&job);
            if effects.first().is_some_and(|e| e.kind == "transactional") {
                account.transactional += 1;
            }
            match (effects.len(), row) {
                (0, None) => account
                    .lost
                    .push(format!("job {job}: no effect and no row")),
                (0, Some(row)) if row.state == "done" => account
                    .lost
                    .push(format!("job {job}: done, but its effect never happened")),
                (0, Some(row)) if row.state == "failed" => account.failed.push(format!(
                    "job {job} failed after {} attempts: {}",
                    row.attempts,
                    row.last_error.as_deref().unwrap_or("no error")
                )),
                (0, Some(row)) => account.stuck.push(format!(
                    "job {job} is still {} (attempt {})",
                    row.state, row.attempts
                )),
                (_, Some(row)) if row.state != "done" => account.stuck.push(format!(
                    "job {job} ran but is left {} (attempt {})",
                    row.state, row.attempts
                )),
                (_, None) if kept => account.not_kept.push(format!(
                    "job {job} ran and is gone, though its worker keeps completed jobs"
                )),
                (1, _) => account.exactly_once += 1,
                (n, _) if effects[0].kind == "transactional" => {
                    account.transactional_duplicates.push(format!(
                        "transactional job {job} has {n} effects (attempts {:?})",
                        effects.iter().map(|e| e.attempt).collect::<Vec<_>>()
                    ));
                }
                (n, _) => {
                    account.duplicated_jobs += 1;
                    account.extra_effects += n - 1;
                    for (i, effect) in effects[..n - 1].iter().enumerate() {
                        let reason = explain(effect, &effects[i + 1], row, interrupted, duplicates);
                        match reason {
                            Some(reason) => *account.explanations.entry(reason).or_default() += 1,
                            None => account.unexplained.push(format!(
                                "job {job}: attempt {} by pid {} wrote its effect, yet attempt {} ran too",
                                effect.attempt, effect.pid, effects[i + 1].attempt
                            )),
                        }
                    }
                }
            }
        }

        for (&id, expected) in &ledger.expected_failures {
            match rows.get(&id) {
                Some(row)
                    if row.state == "failed"
                        && !by_job.contains_key(&id)
                        && row
                            .last_error
                            .as_deref()
                            .is_some_and(|e| e.contains(expected)) =>
                {
                    account.expected_failures_ok += 1;
                }
                Some(row) => account.failed.push(format!(
                    "job {id} should have failed with {expected:?}, but is {} with {:?}",
                    row.state, row.last_error
                )),
                None => account
                    .lost
                    .push(format!("job {id} should have failed but is gone")),
            }
        }
        Ok(account)
    }

    /// Adds the accounting to `report`, and fails it on anything lost, stuck, failed, stray or
    /// run twice beyond what `duplicates` allows.
    pub fn report(&self, report: &mut Report, duplicates: Duplicates) {
        report.line(format!(
            "jobs enqueued {} ({} transactional){}; effects {}",
            self.enqueued + self.despite_error,
            self.transactional,
            if self.despite_error > 0 {
                format!(
                    ", of which {} exist although their enqueue call returned an error",
                    self.despite_error
                )
            } else {
                String::new()
            },
            self.effects
        ));
        let explained: Vec<String> = self
            .explanations
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        report.line(format!(
            "exactly once {}, duplicated {} plain jobs (+{} effects{}), lost {}, stuck {}, failed {}",
            self.exactly_once,
            self.duplicated_jobs,
            self.extra_effects,
            if explained.is_empty() {
                String::new()
            } else {
                format!(": {}", explained.join(", "))
            },
            self.lost.len(),
            self.stuck.len(),
            self.failed.len()
        ));
        if self.expected_failures_ok > 0 {
            report.line(format!(
                "bad jobs failed as expected: {}",
                self.expected_failures_ok
            ));
        }
        report.check_all("lost", &self.lost);
        report.check_all("stuck", &self.stuck);
        report.check_all("failed", &self.failed);
        report.check_all("stray", &self.strays);
        report.check_all("not kept", &self.not_kept);
        report.check_all(
            "transactional effect not exactly once",
            &self.transactional_duplicates,
        );
        report.check_all("unexplained duplicate", &self.unexplained);
        if duplicates == Duplicates::None {
            report.check(
                self.extra_effects == 0,
                format!(
                    "no duplicates without faults (found {})",
                    self.extra_effects
                ),
            );
        }
    }
}

/// Why `earlier`'s run wrote its effect and yet the job ran again (`later`), if that is allowed.
fn explain(
    earlier: &Effect,
    later: &Effect,
    row: Option<&Row>,
    interrupted: &HashSet<u32>,
    duplicates: Duplicates,
) -> Option<String> {
    let was_interrupted = u32::try_from(earlier.pid).is_ok_and(|pid| interrupted.contains(&pid));
    if duplicates == Duplicates::None {
        return None;
    }
    if later.attempt <= earlier.attempt {
        // One attempt ran twice: only an operator's retry starts the count over, and only a
        // worker that gives its jobs back does not count the attempt (it may have cut a run
        // short just after its effect).
        return match duplicates {
            Duplicates::OperatorRetried if was_interrupted => Some(
                "running when their worker was stopped, then retried by an operator".to_owned(),
            ),
            Duplicates::GivenBack if was_interrupted && later.attempt == earlier.attempt => Some(
                "given back by their dropped worker after their effect, attempt uncounted"
                    .to_owned(),
            ),
            _ => None,
        };
    }
    if was_interrupted {
        return Some("running when their worker was killed or stopped".to_owned());
    }
    if matches!(
        duplicates,
        Duplicates::OnlyInterrupted | Duplicates::GivenBack | Duplicates::OperatorRetried
    ) {
        return None;
    }
    let error = row?.errors.get(&i64::from(earlier.attempt))?;
    Some(if error.contains("lease expired") {
        "whose lease expired while the database was away".to_owned()
    } else {
        format!(
            "whose run failed after its effect: {}",
            error.chars().take(60).collect::<String>()
        )
    })
}
