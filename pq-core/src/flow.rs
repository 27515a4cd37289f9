//! Flow control, fleet-wide and enforced by the claim (`sql/functions/claim_limited.sql`): a
//! queue's limits, set by operators at run time ([`Queue::limits`]), and a task's policy,
//! declared by the workers that register it ([`Pq::declare_flows`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::types::PgInterval;
use sqlx::Row;

use crate::error::{Error, Result};
use crate::pq::Pq;
use crate::queue::Queue;

/// The fastest rate a limit may set: faster is no limit at all for a queue on one table.
pub const MAX_RATE_PER_SECOND: f64 = 1_000_000.0;

/// The longest period a rate may count over.
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(24 * 60 * 60);

/// How many jobs may start per period, fleet-wide: `"100/s"`, `"10/m"`, `"5/h"`, `"1/d"`, or
/// `"30/10s"` (any duration of [`parse_duration`](crate::parse_duration)).
///
/// ```
/// let rate: pq::Rate = "100/s".parse()?;
/// assert_eq!(rate.jobs, 100);
/// assert_eq!(rate.per, std::time::Duration::from_secs(1));
/// assert!("0/s".parse::<pq::Rate>().is_err());
/// # Ok::<(), pq::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many jobs.
    pub jobs: u32,
    /// Per how long.
    pub per: Duration,
}

impl Rate {
    /// `jobs` per `per`, checked: at least one job, a period over zero and at most a day, and
    /// no faster than [`MAX_RATE_PER_SECOND`].
    pub fn new(jobs: u32, per: Duration) -> Result<Self> {
        let rate = Self { jobs, per };
        let reason = if jobs == 0 {
            "a rate lets at least one job start"
        } else if per.is_zero() {
            "a rate's period is longer than zero"
        } else if per > MAX_RATE_PERIOD {
            "a rate's period is at most a day"
        } else if f64::from(jobs) / per.as_secs_f64() > MAX_RATE_PER_SECOND {
            "a rate is at most 1,000,000 jobs a second"
        } else {
            return Ok(rate);
        };
        Err(invalid(rate.to_string(), reason))
    }

    /// The burst a rate allows when none is set: what it lets start in 100 ms, at least one.
    pub fn default_burst(&self) -> u32 {
        let jobs = f64::from(self.jobs) * 0.1 / self.per.as_secs_f64();
        (jobs.ceil() as u32).max(1)
    }
}

impl FromStr for Rate {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let (jobs, per) = spec
            .split_once('/')
            .ok_or_else(|| invalid(spec, "a rate reads `jobs/period`, as 100/s or 30/10s"))?;
        let jobs: u32 = jobs
            .trim()
            .parse()
            .map_err(|_| invalid(spec, "a rate's number of jobs is a whole number"))?;
        let per = match per.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            other => crate::when::parse_duration(other)
                .map_err(|_| invalid(spec, "a rate's period is s, m, h, d or a duration as 10s"))?,
        };
        match Rate::new(jobs, per) {
            Err(Error::InvalidLimit { reason, .. }) => Err(invalid(spec, reason)),
            rate => rate,
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per.as_secs() {
            1 if self.per.subsec_nanos() == 0 => write!(f, "{}/s", self.jobs),
            60 if self.per.subsec_nanos() == 0 => write!(f, "{}/m", self.jobs),
            3600 if self.per.subsec_nanos() == 0 => write!(f, "{}/h", self.jobs),
            86_400 if self.per.subsec_nanos() == 0 => write!(f, "{}/d", self.jobs),
            _ => write!(f, "{}/{}ms", self.jobs, self.per.as_millis()),
        }
    }
}

fn invalid(spec: impl Into<String>, reason: &'static str) -> Error {
    Error::InvalidLimit {
        limit: spec.into().chars().take(100).collect(),
        reason,
    }
}

/// What a sequence does when its next job fails and will be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sequence {
    /// Its key waits: the failed job's retries come first (the default).
    Block,
    /// The key goes on with the next job; the failed one runs when its retry is due.
    Skip,
}

impl Sequence {
    fn as_str(self) -> &'static str {
        match self {
            Sequence::Block => "block",
            Sequence::Skip => "skip",
        }
    }
}

/// A task's flow policy, from its attribute (`#[pq::task(limit = .., limit_key = [..],
/// sequence = [..], rate = "..", burst = ..)]`), declared by every worker that registers the
/// task ([`Pq::declare_flows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowPolicy {
    /// How many of its jobs run at once, fleet-wide: for the task, or for each key if
    /// `keyed`.
    pub max_running: Option<u32>,
    /// Whether its jobs are keyed (`limit_key`), `max_running` and `rate` applying to each key.
    pub keyed: bool,
    /// For a sequence, what a failed job does to its key: the jobs of one key run one at a
    /// time, in enqueue order.
    pub sequence: Option<Sequence>,
    /// How many of its jobs may start per period (for each key, if `keyed`), with `burst` at
    /// once at most.
    pub rate: Option<(u32, Duration)>,
    /// The burst of its rate (default: [`Rate::default_burst`]).
    pub burst: Option<u32>,
}

impl FlowPolicy {
    /// No policy: the start of a `const` policy.
    pub const NONE: FlowPolicy = FlowPolicy {
        max_running: None,
        keyed: false,
        sequence: None,
        rate: None,
        burst: None,
    };
}

/// A task's policy as a worker declares it: the task, its queue (which becomes limited) and
/// the policy, or `None` to lift a policy an earlier binary declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowDeclaration {
    /// The task's name.
    pub task: String,
    /// Its queue.
    pub queue: String,
    /// Its policy.
    pub policy: Option<FlowPolicy>,
}

/// A queue's limits, set by [`QueueLimits::apply`]; `None` where there is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// How many of its jobs run at once, fleet-wide.
    pub max_running: Option<u32>,
    /// How many may start per period.
    pub rate: Option<Rate>,
    /// How many may start at once, for a rate.
    pub burst: Option<u32>,
}

/// Sets a queue's limits: what [`Queue::limits`] starts. [`apply`](Self::apply) replaces the
/// queue's whole policy with what is set here (what is not set is lifted).
#[derive(Debug)]
#[must_use = "limits do nothing until applied"]
pub struct QueueLimits {
    queue: Queue,
    limits: Result<Limits>,
}

impl Queue {
    /// Starts setting this queue's limits, fleet-wide and at run time: how many of its jobs
    /// run at once over every worker, and how many start per period. Exact: a claim never
    /// takes more than they allow, whatever the number of workers (see
    /// `docs/guarantees.md`).
    ///
    /// ```no_run
    /// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
    /// pq.queue("mail").limits().max_running(20).rate("100/s").burst(20).apply().await?;
    /// pq.queue("mail").limits().apply().await?; // lifts them
    /// # Ok(()) }
    /// ```
    pub fn limits(&self) -> QueueLimits {
        QueueLimits {
            queue: self.clone(),
            limits: Ok(Limits::default()),
        }
    }
}

impl QueueLimits {
    /// At most `jobs` of the queue's jobs running at once, over every worker (at least 1).
    pub fn max_running(mut self, jobs: u32) -> Self {
        if let Ok(limits) = &mut self.limits {
            if jobs == 0 {
                self.limits = Err(invalid("max_running 0", "a queue runs at least one job"));
            } else if jobs > i32::MAX as u32 {
                self.limits = Err(invalid(jobs.to_string(), "a limit is at most 2147483647"));
            } else {
                limits.max_running = Some(jobs);
            }
        }
        self
    }

    /// At most this many of its jobs starting per period, as `"100/s"` (see [`Rate`]).
    pub fn rate(mut self, rate: &str) -> Self {
        if let Ok(limits) = &mut self.limits {
            match rate.parse() {
                Ok(rate) => limits.rate = Some(rate),
                Err(error) => self.limits = Err(error),
            }
        }
        self
    }

    /// How many may start at once, for a rate (default: [`Rate::default_burst`]).
    pub fn burst(mut self, jobs: u32) -> Self {
        if let Ok(limits) = &mut self.limits {
            if jobs == 0 {
                self.limits = Err(invalid("burst 0", "a burst lets at least one job start"));
            } else if jobs > i32::MAX as u32 {
                self.limits = Err(invalid(jobs.to_string(), "a burst is at most 2147483647"));
            } else {
                limits.burst = Some(jobs);
            }
        }
        self
    }

    /// Writes the limits; returns once no claim under way can have missed them (as
    /// [`Admin::pause`](crate::Admin::pause) does). An invalid limit is refused here, with
    /// what is wrong ([`Error::InvalidLimit`]).
    pub async fn apply(self) -> Result<()> {
        let limits = self.limits?;
        if limits.burst.is_some() && limits.rate.is_none() {
            return Err(invalid("burst", "a burst goes with a rate"));
        }
        self.queue
            .pq()
            .admin()
            .limit(self.queue.name(), limits)
            .await
    }
}

/// A policy as stored: a queue's own, or a task's: a row of [`Admin::limits`](crate::Admin::limits).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LimitInfo {
    /// `"queue"` or `"task"`.
    pub kind: &'static str,
    /// The queue's or the task's name.
    pub name: String,
    /// The queue (a task's own queue).
    pub queue: String,
    /// How many run at once, fleet-wide.
    pub max_running: Option<u32>,
    /// Whether `max_running` and `rate` count per key (a task's `limit_key`).
    pub per_key: bool,
    /// A task's sequence, if it is one.
    pub sequence: Option<Sequence>,
    /// How many may start per period, as `"100/s"`.
    pub rate: Option<String>,
    /// How many at once, for a rate.
    pub burst: Option<u32>,
    /// How many of its jobs run now, under a live lease.
    pub running: u64,
}

impl Pq {
    /// Declares tasks' policies, as a worker does for the tasks it registers, before it
    /// claims: writes each, and marks each task's queue limited, so that claims of it take the
    /// limited path (a queue without a policy keeps the plain one, whatever tasks its workers
    /// know). A declaration without a policy lifts nothing (another binary may still declare
    /// one; see [`Admin::forget_task_policy`](crate::Admin::forget_task_policy)): returns those
    /// of them whose task has a policy in the table all the same.
    pub async fn declare_flows(&self, flows: &[FlowDeclaration]) -> Result<Vec<String>> {
        if flows.is_empty() {
            return Ok(Vec::new());
        }
        let sql = self.statements().await?;
        let table = &sql.table;
        let declared: Vec<&FlowDeclaration> = flows.iter().filter(|f| f.policy.is_some()).collect();
        let lacking: Vec<&str> = flows
            .iter()
            .filter(|f| f.policy.is_none())
            .map(|f| f.task.as_str())
            .collect();
        let statement = format!(
            "WITH declared AS (INSERT INTO {flows} AS f (task, q_name, max_running, per_key, \
                 sequence, rate, per, burst) \
               SELECT t, q, m, k, s, r, p * interval '1 microsecond', b \
               FROM unnest($1::text[], $2::text[], $3::int4[], $4::bool[], $5::text[], \
                 $6::int4[], $7::int8[], $8::int4[]) AS d(t, q, m, k, s, r, p, b) \
               ON CONFLICT (task) DO UPDATE SET q_name = EXCLUDED.q_name, \
                 max_running = EXCLUDED.max_running, per_key = EXCLUDED.per_key, \
                 sequence = EXCLUDED.sequence, rate = EXCLUDED.rate, per = EXCLUDED.per, \
                 burst = EXCLUDED.burst, seen_at = statement_timestamp(), \
                 tat = CASE WHEN (f.rate, f.per) IS NOT DISTINCT FROM (EXCLUDED.rate, EXCLUDED.per) \
                   THEN f.tat END), \
             marked AS (INSERT INTO {queues} AS s (q_name, limited) \
               SELECT DISTINCT q, true FROM unnest($2::text[]) AS q \
               ON CONFLICT (q_name) DO UPDATE SET limited = true WHERE NOT s.limited) \
             SELECT task FROM {flows} WHERE task = ANY ($9) ORDER BY task",
            flows = table.qualified_derived("flows"),
            queues = table.qualified_derived("queues"),
        );
        let tasks: Vec<&str> = declared.iter().map(|d| d.task.as_str()).collect();
        let task_queues: Vec<&str> = declared.iter().map(|d| d.queue.as_str()).collect();
        let max_running: Vec<Option<i32>> = declared
            .iter()
            .map(|d| {
                d.policy
                    .and_then(|p| p.max_running)
                    .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
            })
            .collect();
        let keyed: Vec<bool> = declared
            .iter()
            .map(|d| d.policy.is_some_and(|p| p.keyed))
            .collect();
        let sequence: Vec<Option<&str>> = declared
            .iter()
            .map(|d| d.policy.and_then(|p| p.sequence).map(Sequence::as_str))
            .collect();
        let mut rates = Vec::new();
        let mut pers = Vec::new();
        let mut bursts = Vec::new();
        for declaration in &declared {
            let policy = declaration.policy.expect("declared");
            let rate = match policy.rate {
                Some((jobs, per)) => Some(Rate::new(jobs, per)?),
                None => None,
            };
            rates.push(rate.map(|r| i32::try_from(r.jobs).unwrap_or(i32::MAX)));
            pers.push(rate.map(|r| crate::lease::micros(r.per)));
            bursts.push(rate.map(|r| {
                i32::try_from(policy.burst.unwrap_or_else(|| r.default_burst())).unwrap_or(i32::MAX)
            }));
            if policy.max_running == Some(0) || policy.burst == Some(0) {
                return Err(invalid(
                    &declaration.task,
                    "a limit or a burst is at least 1",
                ));
            }
        }
        self.with_connection("declaring tasks' limits", async |connection| {
            Ok(sql
                .query_scalar(&statement)
                .bind(&tasks)
                .bind(&task_queues)
                .bind(&max_running)
                .bind(&keyed)
                .bind(&sequence)
                .bind(&rates)
                .bind(&pers)
                .bind(&bursts)
                .bind(&lacking)
                .fetch_all(connection)
                .await?)
        })
        .await
    }
}

impl crate::Admin {
    /// Sets `queue`'s limits (see [`Queue::limits`], which checks them first), replacing its
    /// policy: a limit that is `None` is lifted. Returns once no claim under way can have
    /// missed the change.
    pub async fn limit(&self, queue: &str, limits: Limits) -> Result<()> {
        crate::job::check_queue_name(queue)?;
        if limits.max_running == Some(0) || limits.burst == Some(0) {
            return Err(invalid(queue, "a limit or a burst is at least 1"));
        }
        if let Some(rate) = limits.rate {
            Rate::new(rate.jobs, rate.per)?;
        }
        let sql = self.pq().statements().await?;
        let statement = format!(
            "INSERT INTO {queues} AS s (q_name, max_running, rate, per, burst, limited) \
             VALUES ($1, $2, $3, $4 * interval '1 microsecond', $5, \
               $2 IS NOT NULL OR $3 IS NOT NULL \
               OR EXISTS (SELECT FROM {flows} AS f WHERE f.q_name = $1)) \
             ON CONFLICT (q_name) DO UPDATE SET max_running = EXCLUDED.max_running, \
               rate = EXCLUDED.rate, per = EXCLUDED.per, burst = EXCLUDED.burst, \
               limited = EXCLUDED.limited, \
               tat = CASE WHEN (s.rate, s.per) IS NOT DISTINCT FROM (EXCLUDED.rate, EXCLUDED.per) \
                 THEN s.tat END",
            queues = sql.table.qualified_derived("queues"),
            flows = sql.table.qualified_derived("flows"),
        );
        let rate = limits.rate;
        let burst = rate.map(|r| limits.burst.unwrap_or_else(|| r.default_burst()));
        let to_i32 = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        self.pq()
            .with_connection("limiting a queue", async |connection| {
                sql.query(&statement)
                    .bind(queue)
                    .bind(limits.max_running.map(to_i32))
                    .bind(rate.map(|r| to_i32(r.jobs)))
                    .bind(rate.map(|r| crate::lease::micros(r.per)))
                    .bind(burst.map(to_i32))
                    .execute(connection)
                    .await?;
                Ok(())
            })
            .await?;
        self.hold_claims().await
    }

    /// Forgets a task's policy, which the workers that register the task declared: its jobs
    /// run without it from the next claim, until a worker that has it starts. `false` if the
    /// task had none. A worker whose program lacks a policy its task has in the table keeps
    /// to it, and says so when it starts: a binary rolled back must not lift a sequence.
    ///
    /// ```no_run
    /// # async fn example(pq: pq::Pq) -> Result<(), pq::Error> {
    /// pq.admin().forget_task_policy("my_app::send_sms").await?;
    /// # Ok(()) }
    /// ```
    pub async fn forget_task_policy(&self, task: &str) -> Result<bool> {
        let sql = self.pq().statements().await?;
        let statement = format!(
            "DELETE FROM {} WHERE task = $1",
            sql.table.qualified_derived("flows")
        );
        let deleted = self
            .pq()
            .with_connection("forgetting a task's policy", async |connection| {
                Ok(sql.query(&statement).bind(task).execute(connection).await?)
            })
            .await?;
        self.hold_claims().await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// Every policy: the queues' own limits, then the tasks' policies, each with how many of
    /// its jobs run now.
    pub async fn limits(&self) -> Result<Vec<LimitInfo>> {
        let sql = self.pq().statements().await?;
        let t = sql.table.qualified();
        let statement = format!(
            "WITH live AS (SELECT j.q_name, j.task FROM {t} AS j WHERE j.state = 'running' \
               AND EXISTS (SELECT FROM {workers} AS w \
                 WHERE w.id = j.worker_id AND w.expires_at > statement_timestamp())) \
             SELECT 'queue', s.q_name, s.q_name, s.max_running, false, NULL::text, s.rate, s.per, \
               s.burst, (SELECT count(*) FROM live WHERE live.q_name = s.q_name) \
             FROM {queues} AS s WHERE s.max_running IS NOT NULL OR s.rate IS NOT NULL \
             UNION ALL \
             SELECT 'task', f.task, f.q_name, f.max_running, f.per_key, f.sequence, f.rate, f.per, \
               f.burst, (SELECT count(*) FROM live WHERE live.task = f.task) \
             FROM {flows} AS f ORDER BY 1, 2",
            workers = sql.table.qualified_derived("workers"),
            queues = sql.table.qualified_derived("queues"),
            flows = sql.table.qualified_derived("flows"),
        );
        let rows = self
            .pq()
            .with_connection("reading limits", async |connection| {
                Ok(sql.query(&statement).fetch_all(connection).await?)
            })
            .await?;
        let u32_of = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok());
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get(0)?;
                let per: Option<PgInterval> = row.try_get(7)?;
                let jobs = u32_of(row.try_get(6)?);
                let rate = match (jobs, per) {
                    (Some(jobs), Some(per)) => Some(
                        Rate {
                            jobs,
                            per: Duration::from_micros(
                                u64::try_from(per.microseconds).unwrap_or(0)
                                    + u64::try_from(per.days).unwrap_or(0) * 86_400_000_000,
                            ),
                        }
                        .to_string(),
                    ),
                    _ => None,
                };
                let sequence: Option<String> = row.try_get(5)?;
                Ok(LimitInfo {
                    kind: if kind == "queue" { "queue" } else { "task" },
                    name: row.try_get(1)?,
                    queue: row.try_get(2)?,
                    max_running: u32_of(row.try_get(3)?),
                    per_key: row.try_get(4)?,
                    sequence: sequence.map(|s| match s.as_str() {
                        "skip" => Sequence::Skip,
                        _ => Sequence::Block,
                    }),
                    rate,
                    burst: u32_of(row.try_get(8)?),
                    running: u64::try_from(row.try_get::<i64, _>(9)?).unwrap_or(0),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_people_write_them_and_absurd_ones_are_refused() {
        let rate = |s: &str| s.parse::<Rate>();
        assert_eq!(
            rate("100/s").unwrap(),
            Rate {
                jobs: 100,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!(rate("10/m").unwrap().per, Duration::from_secs(60));
        assert_eq!(rate(" 5 / h ").unwrap().per, Duration::from_secs(3600));
        assert_eq!(rate("30/10s").unwrap().per, Duration::from_secs(10));
        assert_eq!(rate("100/s").unwrap().to_string(), "100/s");
        assert_eq!(rate("3/500ms").unwrap().to_string(), "3/500ms");
        for bad in [
            "",
            "100",
            "0/s",
            "-1/s",
            "1.5/s",
            "10/0s",
            "1/2d",
            "2000000/s",
            "x/s",
            "5/fortnight",
        ] {
            let error = rate(bad).unwrap_err();
            assert!(
                matches!(error, Error::InvalidLimit { .. }),
                "{bad}: {error}"
            );
        }
        assert_eq!(rate("5000/s").unwrap().default_burst(), 500);
        assert_eq!(rate("1/h").unwrap().default_burst(), 1);
    }
}
