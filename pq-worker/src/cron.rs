//! Recurring jobs: cron schedules, declared by every worker that defines them, and fired by
//! whichever of them locks a due schedule first, on the database's clock (see
//! pq-core/src/schedules.rs): each fire time gets its jobs once, however many workers define
//! the schedule and however their clocks differ, with no leader to elect. Fire times follow from
//! the last one, not from when a worker looked, so they do not drift; they follow the
//! schedule's time zone through daylight saving changes as croner does: a fixed time (one
//! hour, minute and second) that a spring-forward skips runs at the first instant after the
//! gap, and one that a fall-back repeats runs once; times a list or a step gives within the
//! changed hour are skipped in a gap and run twice in a repeated hour.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures_util::FutureExt;
use pq_core::{fired_job, DueSchedule, Firing, Pq, ScheduleDefinition, DECLARE_EVERY};

/// What the fire times a schedule missed (its workers were down, or it was paused) come to
/// once a worker fires it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMissed {
    /// One run for all of them, told how many it stands for ([`TaskContext::fires`]).
    ///
    /// [`TaskContext::fires`]: crate::TaskContext::fires
    Coalesce,
    /// A run for each, oldest first: at most [`MAX_CATCH_UP`], the latest.
    CatchUp,
    /// None: only a fire time that came within [`ON_TIME`] runs.
    Skip,
}

impl OnMissed {
    /// How the attribute and the schedules' table write it.
    pub fn as_str(self) -> &'static str {
        match self {
            OnMissed::Coalesce => "coalesce",
            OnMissed::CatchUp => "catch_up",
            OnMissed::Skip => "skip",
        }
    }

    fn parse(text: &str) -> Option<OnMissed> {
        [OnMissed::Coalesce, OnMissed::CatchUp, OnMissed::Skip]
            .into_iter()
            .find(|policy| policy.as_str() == text)
    }
}

/// How many missed fire times a `catch_up` schedule runs at most: the latest.
pub const MAX_CATCH_UP: usize = 100;

/// How late a fire time may be found and still count as on time for a `skip` schedule.
pub const ON_TIME: Duration = Duration::from_secs(60);

/// How many missed fire times are counted one by one; past that, the count says at least this.
const COUNTED: u64 = 10_000;

/// How long a worker waits at most between two looks at its schedules: a schedule triggered,
/// resumed or changed elsewhere is seen within this.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// A `cron` task's schedule, from its attribute: see `#[pq::task(cron = ..)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cron {
    /// The cron expression, five fields (minute to weekday) or six (with seconds first).
    pub expression: &'static str,
    /// The IANA time zone it is read in.
    pub timezone: &'static str,
    /// What missed fire times come to.
    pub on_missed: OnMissed,
}

/// Why a schedule cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("invalid cron expression {expression:?}: {reason}")]
    Expression {
        /// The expression as given.
        expression: String,
        /// What the parser said.
        reason: String,
    },
    /// The time zone is not an IANA name.
    #[error("unknown time zone {0:?}: expected an IANA name like \"Europe/Berlin\" or \"UTC\"")]
    TimeZone(String),
    /// The call's arguments cannot be encoded as JSON.
    #[error("cannot encode the periodic call's arguments: {0}")]
    Encode(#[from] serde_json::Error),
    /// The schedule's name, made of the call's arguments, is too long to be a key.
    #[error("the schedule's name ({0} bytes, the task's name and its arguments) is longer than 1,000 bytes: give it one with Schedule::named")]
    NameTooLong(usize),
}

/// When a recurring job fires: a cron expression, read in a time zone (UTC by default), and
/// what missed fire times come to (coalesced by default). For [`Worker::schedule`].
///
/// ```
/// let nightly = pq::Schedule::new("0 3 * * *")?
///     .timezone("Europe/Berlin")?
///     .on_missed(pq::OnMissed::CatchUp);
/// # Ok::<(), pq::ScheduleError>(())
/// ```
///
/// [`Worker::schedule`]: crate::Worker::schedule
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    cron: croner::Cron,
    timezone: Tz,
    on_missed: OnMissed,
    name: Option<String>,
}

impl Schedule {
    /// A schedule of this cron expression: five fields (minute, hour, day of month, month, day
    /// of week) or six (seconds first), with ranges, steps, lists, names, `L`, `W`, `#` and
    /// `@daily`-style nicknames, as the `croner` crate reads them.
    pub fn new(expression: &str) -> Result<Schedule, ScheduleError> {
        Ok(Schedule {
            cron: parse(expression).map_err(|reason| ScheduleError::Expression {
                expression: expression.to_owned(),
                reason,
            })?,
            expression: expression.to_owned(),
            timezone: Tz::UTC,
            on_missed: OnMissed::Coalesce,
            name: None,
        })
    }

    /// Reads the expression in this IANA time zone (default `"UTC"`).
    pub fn timezone(mut self, zone: &str) -> Result<Schedule, ScheduleError> {
        self.timezone = Tz::from_str(zone).map_err(|_| ScheduleError::TimeZone(zone.to_owned()))?;
        Ok(self)
    }

    /// What missed fire times come to (default [`OnMissed::Coalesce`]).
    pub fn on_missed(mut self, on_missed: OnMissed) -> Schedule {
        self.on_missed = on_missed;
        self
    }

    /// Names the schedule, the key of its row (default: the task's name, with the call's
    /// arguments when it has any). Workers that define a schedule of one name share it.
    pub fn named(mut self, name: impl Into<String>) -> Schedule {
        self.name = Some(name.into());
        self
    }

    /// Its name, if it was given one.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The first fire time after `after`, or at it when `inclusive`; `None` if none comes.
    fn next(&self, after: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.timezone);
        let next = self.cron.find_next_occurrence(&local, inclusive).ok()?;
        Some(next.with_timezone(&Utc))
    }

    /// The fire times from `from` (inclusive) up to `now`, and the first after `now`.
    fn due(&self, from: DateTime<Utc>, now: DateTime<Utc>) -> Due {
        let mut due = Due {
            count: 0,
            kept: VecDeque::new(),
            next: None,
        };
        let mut fire = self.next(from, true);
        while let Some(at) = fire.filter(|at| *at <= now) {
            due.count += 1;
            if due.kept.len() == MAX_CATCH_UP {
                due.kept.pop_front();
            }
            due.kept.push_back(at);
            if due.count == COUNTED {
                // A long outage of a frequent schedule: the rest are not counted one by one,
                // and the fire times kept are the latest, counted back from now.
                due.kept.clear();
                let mut back = now.with_timezone(&self.timezone);
                let mut inclusive = true;
                while due.kept.len() < MAX_CATCH_UP {
                    match self.cron.find_previous_occurrence(&back, inclusive) {
                        Ok(earlier) if earlier.with_timezone(&Utc) >= at => {
                            due.kept.push_front(earlier.with_timezone(&Utc));
                            back = earlier;
                            inclusive = false;
                        }
                        _ => break,
                    }
                }
                fire = self.next(now, false);
                break;
            }
            fire = self.next(at, false);
        }
        due.next = fire;
        due
    }
}

/// The fire times of a schedule that have come.
struct Due {
    count: u64,
    /// The latest of them, at most [`MAX_CATCH_UP`], oldest first.
    kept: VecDeque<DateTime<Utc>>,
    /// The first fire time still to come.
    next: Option<DateTime<Utc>>,
}

/// Parses a cron expression as pq reads them (seconds optional). The `#[pq::task]` attribute
/// parses its `cron` the same way, to refuse a bad one at compile time.
fn parse(expression: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expression)
        .map_err(|error| error.to_string().trim_end_matches('.').to_owned())
}

/// A schedule a worker defines, with the job each of its fire times writes.
#[derive(Debug, Clone)]
pub(crate) struct Periodic {
    pub schedule: Schedule,
    pub name: String,
    pub task: &'static str,
    pub queue: String,
    /// The job's arguments, as JSON text.
    pub data: String,
    /// The task's flow key of such arguments ([`TaskDefinition::flow_key`]): its jobs are
    /// keyed as its calls are.
    ///
    /// [`TaskDefinition::flow_key`]: crate::TaskDefinition::flow_key
    pub flow_key: fn(&str) -> Option<String>,
}

impl Periodic {
    /// A `cron` task's schedule, named after the task.
    pub(crate) fn of_task(
        task: &'static str,
        queue: &'static str,
        cron: Cron,
        flow_key: fn(&str) -> Option<String>,
    ) -> Result<Periodic, ScheduleError> {
        let schedule = Schedule::new(cron.expression)?
            .timezone(cron.timezone)?
            .on_missed(cron.on_missed);
        Ok(Periodic {
            schedule,
            name: task.to_owned(),
            task,
            queue: queue.to_owned(),
            data: "{}".to_owned(),
            flow_key,
        })
    }

    fn definition(&self, now: DateTime<Utc>) -> Option<ScheduleDefinition> {
        Some(ScheduleDefinition {
            name: self.name.clone(),
            expression: self.schedule.expression.clone(),
            timezone: self.schedule.timezone.name().to_owned(),
            on_missed: self.schedule.on_missed.as_str().to_owned(),
            task: self.task.to_owned(),
            queue: self.queue.clone(),
            data: self.data.clone(),
            next_at: self.schedule.next(now, false)?,
        })
    }
}

/// What to write for a schedule whose fire time came, as its stored definition says (a newer
/// worker may have changed it): the jobs its policy gives, and its next fire time. `None` for a
/// definition this worker cannot read (written by a newer pq, or by hand): another worker may.
/// `flow_key` keys the jobs of a task with a flow policy.
pub(crate) fn firing(
    due: &DueSchedule,
    now: DateTime<Utc>,
    flow_key: Option<&str>,
) -> Option<Firing> {
    let schedule = Schedule::new(&due.expression).and_then(|s| s.timezone(&due.timezone));
    let (Ok(schedule), Some(on_missed)) = (schedule, OnMissed::parse(&due.on_missed)) else {
        return None;
    };
    // Fire times up to the last one that wrote a job are never written again (a definition
    // changed meanwhile may put its next fire time before it).
    let from = match due.last_at {
        Some(last) if last >= due.next_at => last + chrono::Duration::microseconds(1),
        _ => due.next_at,
    };
    let come = schedule.due(from, now);
    let last = come.kept.back().copied();
    let fires: Vec<(DateTime<Utc>, u64)> = match (on_missed, last) {
        (_, None) => Vec::new(),
        (OnMissed::Coalesce, Some(last)) => vec![(last, come.count)],
        (OnMissed::CatchUp, Some(_)) => {
            if come.count > MAX_CATCH_UP as u64 {
                tracing::warn!(schedule = %due.name, missed = come.count,
                    "pq: a catch_up schedule missed more fire times than it runs; running the latest {MAX_CATCH_UP}");
            }
            come.kept.iter().map(|fire| (*fire, 1)).collect()
        }
        (OnMissed::Skip, Some(last)) => {
            let late = (now - last).to_std().unwrap_or_default();
            if late <= ON_TIME {
                vec![(last, 1)]
            } else {
                Vec::new()
            }
        }
    };
    let mut jobs = Vec::with_capacity(fires.len());
    let mut fired = None;
    for (fire, count) in fires {
        let data = due.data.clone();
        let job = fired_job(&due.name, &due.task, &due.queue, data, fire, count);
        match job.map(|job| match flow_key {
            Some(key) => job.flow_key(key),
            None => job,
        }) {
            Ok(job) => {
                jobs.push(job);
                fired = Some(fire);
            }
            Err(error) => {
                tracing::error!(schedule = %due.name, %error, "pq: cannot write a schedule's job")
            }
        }
    }
    Some(Firing {
        jobs,
        // A schedule that never fires again (a date in the past) waits a year, harmlessly.
        next_at: come
            .next
            .unwrap_or_else(|| now + chrono::Duration::days(365)),
        fired,
    })
}

/// Declares `schedules`, then fires them as they come due, until the worker stops: a task of
/// its own in every worker that defines schedules (not in burst mode). Two schedules of one
/// name are one: the first is kept. Should the loop panic, it starts again.
pub(crate) async fn run(pq: Pq, schedules: Vec<Periodic>) {
    let mut kept: Vec<Periodic> = Vec::with_capacity(schedules.len());
    for schedule in schedules {
        if kept.iter().any(|k| k.name == schedule.name) {
            tracing::error!(schedule = %schedule.name,
                "pq: two schedules of this worker share a name; the first is kept (name them apart with Schedule::named)");
            continue;
        }
        kept.push(schedule);
    }
    loop {
        let fired = AssertUnwindSafe(fire_until_stopped(&pq, &kept))
            .catch_unwind()
            .await;
        if let Err(panic) = fired {
            tracing::error!(
                panic = crate::panic_message(panic.as_ref()),
                "pq: the schedules' loop panicked; starting it again"
            );
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }
}

/// How long a worker leaves a schedule it cannot read before it looks at it again.
const UNREADABLE_FOR: Duration = Duration::from_secs(3600);

async fn fire_until_stopped(pq: &Pq, schedules: &[Periodic]) {
    let mut failures = 0u32;
    let mut declared: Option<tokio::time::Instant> = None;
    let mut unreadable: Vec<(String, tokio::time::Instant)> = Vec::new();
    loop {
        if declared.is_none_or(|at| at.elapsed() >= DECLARE_EVERY) {
            match declare(pq, schedules).await {
                Ok(()) => declared = Some(tokio::time::Instant::now()),
                Err(error) => {
                    tracing::error!(%error, "pq: cannot declare schedules; firing them all the same")
                }
            }
        }
        unreadable.retain(|(_, since)| since.elapsed() < UNREADABLE_FOR);
        let names: Vec<String> = schedules
            .iter()
            .map(|s| s.name.clone())
            .filter(|name| unreadable.iter().all(|(n, _)| n != name))
            .collect();
        let mut left = Vec::new();
        let looked = pq
            .fire_schedules(&names, |due, now| {
                // Keyed by the task this worker knows by that name (another program's
                // definition of the schedule may name another).
                let known = schedules
                    .iter()
                    .find(|s| s.name == due.name && s.task == due.task);
                let key = known.and_then(|s| (s.flow_key)(&due.data));
                let firing = firing(due, now, key.as_deref());
                if firing.is_none() {
                    left.push(due.clone());
                }
                firing
            })
            .await;
        for due in left {
            tracing::error!(schedule = %due.name, expression = %due.expression, timezone = %due.timezone,
                on_missed = %due.on_missed, "pq: cannot read a schedule; leaving it to other workers for an hour");
            unreadable.push((due.name, tokio::time::Instant::now()));
        }
        let wait = match looked {
            Ok((now, next)) => {
                failures = 0;
                let until_next = next.map_or(LOOK_EVERY, |next| {
                    (next - now).to_std().unwrap_or(Duration::from_millis(50))
                });
                until_next.clamp(Duration::from_millis(10), LOOK_EVERY)
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = Duration::from_millis(100)
                    .saturating_mul(1 << failures.min(9))
                    .min(Duration::from_secs(30));
                tracing::error!(%error, ?delay, "pq: cannot fire schedules; retrying");
                delay
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Declares the worker's schedules, with their first fire times on the database's clock.
async fn declare(pq: &Pq, schedules: &[Periodic]) -> pq_core::Result<()> {
    let now = pq.database_now().await?;
    let mut definitions = Vec::with_capacity(schedules.len());
    for schedule in schedules {
        match schedule.definition(now) {
            Some(definition) => definitions.push(definition),
            None => {
                tracing::warn!(schedule = %schedule.name, expression = %schedule.schedule.expression,
                "pq: a schedule that never fires again is not declared")
            }
        }
    }
    pq.declare_schedules(&definitions).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn fires(schedule: &Schedule, from: &str, to: &str) -> Vec<DateTime<Utc>> {
        schedule.due(at(from), at(to)).kept.into_iter().collect()
    }

    #[test]
    fn a_daily_time_follows_its_zone_through_both_daylight_saving_changes() {
        let three = Schedule::new("0 3 * * *")
            .unwrap()
            .timezone("Europe/Berlin")
            .unwrap();
        // Berlin moves from UTC+1 to UTC+2 on 2026-03-29, and back on 2026-10-25.
        assert_eq!(
            fires(&three, "2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z"),
            [
                at("2026-03-28T02:00:00Z"),
                at("2026-03-29T01:00:00Z"),
                at("2026-03-30T01:00:00Z")
            ]
        );
        assert_eq!(
            fires(&three, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
            [at("2026-10-25T02:00:00Z"), at("2026-10-26T02:00:00Z")]
        );
    }

    #[test]
    fn a_time_the_spring_forward_skips_runs_after_the_gap_and_a_repeated_one_runs_once() {
        let half_past_two = Schedule::new("30 2 * * *")
            .unwrap()
            .timezone("Europe/Berlin")
            .unwrap();
        // 02:30 does not exist on 2026-03-29 in Berlin: the first instant after the gap,
        // 03:00 local (01:00 UTC).
        assert_eq!(
            fires(
                &half_past_two,
                "2026-03-28T12:00:00Z",
                "2026-03-29T12:00:00Z"
            ),
            [at("2026-03-29T01:00:00Z")]
        );
        // 02:30 happens twice on 2026-10-25: once.
        assert_eq!(
            fires(
                &half_past_two,
                "2026-10-24T12:00:00Z",
                "2026-10-25T12:00:00Z"
            )
            .len(),
            1
        );
    }

    #[test]
    fn fire_times_follow_from_the_last_one_and_a_long_outage_is_counted_not_enumerated() {
        let every_second = Schedule::new("* * * * * *").unwrap();
        let due = every_second.due(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:09.5Z"));
        assert_eq!(due.count, 10);
        assert_eq!(due.next, Some(at("2026-01-01T00:00:10Z")));
        // A year down: counted up to a bound, the latest kept, the next one right.
        let due = every_second.due(at("2025-01-01T00:00:00Z"), at("2026-01-01T00:00:00.5Z"));
        assert_eq!(due.count, COUNTED);
        assert_eq!(due.kept.len(), MAX_CATCH_UP);
        assert_eq!(due.kept.front(), Some(&at("2025-12-31T23:58:21Z")));
        assert_eq!(due.kept.back(), Some(&at("2026-01-01T00:00:00Z")));
        assert_eq!(due.next, Some(at("2026-01-01T00:00:01Z")));
    }

    #[test]
    fn bad_expressions_and_zones_are_refused_with_the_reason() {
        let error = Schedule::new("61 * * * *").unwrap_err().to_string();
        assert!(
            error.starts_with("invalid cron expression \"61 * * * *\""),
            "{error}"
        );
        let error = Schedule::new("* * * * *")
            .unwrap()
            .timezone("Mars/Olympus")
            .unwrap_err();
        assert!(error.to_string().contains("Mars/Olympus"), "{error}");
    }
}
