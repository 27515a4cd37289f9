//! The attribute's arguments: `#[pq::task(queue = "apples", max_retries = 2, ...)]`.

use std::fmt;
use std::time::Duration;

use proc_macro2::{Group, TokenStream};
use syn::parse::Parser;
use syn::{Expr, ExprLit, ExprUnary, Lit, LitStr, Path, Token, UnOp};

use crate::errors::Errors;

/// The arguments as written: `None` where the task keeps the runtime's default.
#[derive(Default)]
pub(crate) struct TaskArgs {
    pub(crate) queue: Option<LitStr>,
    pub(crate) name: Option<LitStr>,
    pub(crate) schedule_at: Option<Duration>,
    pub(crate) expected_at: Option<Duration>,
    pub(crate) max_retries: Option<u32>,
    pub(crate) retry_in: Option<Duration>,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) on_cancel: Option<OnCancel>,
    /// The parameters a unique task's key is made of, as written.
    pub(crate) unique: Option<Vec<syn::Ident>>,
    pub(crate) on_conflict: Option<OnConflict>,
    pub(crate) debounce: Option<Duration>,
    pub(crate) debounce_max: Option<Duration>,
    /// A recurring task's cron expression, checked.
    pub(crate) cron: Option<LitStr>,
    pub(crate) timezone: Option<LitStr>,
    pub(crate) on_missed: Option<OnMissed>,
    /// How many of the task's jobs run at once, fleet-wide (for each key, with `limit_key`).
    pub(crate) limit: Option<u32>,
    /// The parameters a per-key limit's key is made of.
    pub(crate) limit_key: Option<Vec<syn::Ident>>,
    /// The parameters a sequence's key is made of.
    pub(crate) sequence: Option<Vec<syn::Ident>>,
    pub(crate) on_failure: Option<OnFailure>,
    /// A rate: jobs per period.
    pub(crate) rate: Option<(u32, Duration)>,
    pub(crate) burst: Option<u32>,
    /// How long a job whose task returns a value keeps it.
    pub(crate) keep_result: Option<Duration>,
    /// Where each argument was written, for errors that concern two of them.
    spans: Vec<(Key, Path)>,
}

/// `on_missed = "coalesce" | "catch_up" | "skip"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnMissed {
    Coalesce,
    CatchUp,
    Skip,
}

/// `on_failure = "block" | "skip"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnFailure {
    Block,
    Skip,
}

/// `on_conflict = "skip" | "replace"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnConflict {
    Skip,
    Replace,
}

/// `on_cancel = "cooperate" | "abort"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnCancel {
    Cooperate,
    Abort,
}

/// `backoff = "fixed" | "exponential"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backoff {
    Fixed,
    Exponential,
}

/// One argument the attribute accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Queue,
    Name,
    ScheduleAt,
    ExpectedAt,
    MaxRetries,
    RetryIn,
    Backoff,
    Timeout,
    OnCancel,
    Unique,
    OnConflict,
    Debounce,
    DebounceMax,
    Cron,
    Timezone,
    OnMissed,
    Limit,
    LimitBy,
    Sequence,
    OnFailure,
    Rate,
    Burst,
    KeepResult,
}

impl Key {
    const ALL: [Key; 23] = [
        Key::Queue,
        Key::Name,
        Key::ScheduleAt,
        Key::ExpectedAt,
        Key::MaxRetries,
        Key::RetryIn,
        Key::Backoff,
        Key::Timeout,
        Key::OnCancel,
        Key::Unique,
        Key::OnConflict,
        Key::Debounce,
        Key::DebounceMax,
        Key::Cron,
        Key::Timezone,
        Key::OnMissed,
        Key::Limit,
        Key::LimitBy,
        Key::Sequence,
        Key::OnFailure,
        Key::Rate,
        Key::Burst,
        Key::KeepResult,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Key::Queue => "queue",
            Key::Name => "name",
            Key::ScheduleAt => "schedule_at",
            Key::ExpectedAt => "expected_at",
            Key::MaxRetries => "max_retries",
            Key::RetryIn => "retry_in",
            Key::Backoff => "backoff",
            Key::Timeout => "timeout",
            Key::OnCancel => "on_cancel",
            Key::Unique => "unique",
            Key::OnConflict => "on_conflict",
            Key::Debounce => "debounce",
            Key::DebounceMax => "debounce_max",
            Key::Cron => "cron",
            Key::Timezone => "timezone",
            Key::OnMissed => "on_missed",
            Key::Limit => "limit",
            Key::LimitBy => "limit_key",
            Key::Sequence => "sequence",
            Key::OnFailure => "on_failure",
            Key::Rate => "rate",
            Key::Burst => "burst",
            Key::KeepResult => "keep_result",
        }
    }

    /// How the argument is written, to show in errors.
    fn example(self) -> &'static str {
        match self {
            Key::Queue => r#"queue = "emails""#,
            Key::Name => r#"name = "billing::charge""#,
            Key::ScheduleAt => r#"schedule_at = "5m""#,
            Key::ExpectedAt => r#"expected_at = "1h""#,
            Key::MaxRetries => "max_retries = 3",
            Key::RetryIn => r#"retry_in = "30s""#,
            Key::Backoff => r#"backoff = "exponential""#,
            Key::Timeout => r#"timeout = "5m""#,
            Key::OnCancel => r#"on_cancel = "abort""#,
            Key::Unique => "unique = [user_id]",
            Key::OnConflict => r#"on_conflict = "replace""#,
            Key::Debounce => r#"debounce = "30s""#,
            Key::DebounceMax => r#"debounce_max = "5m""#,
            Key::Cron => r#"cron = "0 3 * * *""#,
            Key::Timezone => r#"timezone = "Europe/Berlin""#,
            Key::OnMissed => r#"on_missed = "catch_up""#,
            Key::Limit => "limit = 5",
            Key::LimitBy => "limit_key = [customer_id]",
            Key::Sequence => "sequence = [account_id]",
            Key::OnFailure => r#"on_failure = "skip""#,
            Key::Rate => r#"rate = "100/s""#,
            Key::Burst => "burst = 20",
            Key::KeepResult => r#"keep_result = "7d""#,
        }
    }

    fn from_path(path: &Path) -> Option<Key> {
        let ident = path.get_ident()?;
        Key::ALL.into_iter().find(|key| ident == key.as_str())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TaskArgs {
    /// Parses the attribute's arguments, recording every mistake in `errors`.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> TaskArgs {
        let mut args = TaskArgs::default();
        let mut seen = Vec::new();
        let parser = syn::meta::parser(|meta| {
            // Consume the value before judging the key, so that parsing goes on to the next argument.
            let value = if meta.input.peek(Token![=]) {
                Some(meta.value()?.parse::<Expr>()?)
            } else {
                if meta.input.peek(syn::token::Paren) {
                    meta.input.parse::<Group>()?;
                }
                None
            };
            let Some(key) = Key::from_path(&meta.path) else {
                errors.spanned(
                    &meta.path,
                    format!(
                        "unknown argument `{}`; expected one of {}",
                        path_to_string(&meta.path),
                        valid_keys()
                    ),
                );
                return Ok(());
            };
            if seen.contains(&key) {
                errors.spanned(
                    &meta.path,
                    format!(
                        "duplicate argument `{key}`; it is already set earlier in this attribute"
                    ),
                );
                return Ok(());
            }
            seen.push(key);
            args.spans.push((key, meta.path.clone()));
            match value {
                Some(value) => args.set(key, &value, errors),
                None => errors.spanned(
                    &meta.path,
                    format!("`{key}` needs a value, like `{}`", key.example()),
                ),
            }
            Ok(())
        });
        if let Err(error) = parser.parse2(tokens) {
            errors.push(error);
        }
        args
    }

    fn set(&mut self, key: Key, value: &Expr, errors: &mut Errors) {
        match key {
            Key::Queue => {
                self.queue = stored_name(string(key, value, errors), "queue name", errors)
            }
            Key::Name => self.name = stored_name(string(key, value, errors), "task name", errors),
            Key::ScheduleAt => self.schedule_at = duration(key, value, errors),
            Key::ExpectedAt => self.expected_at = duration(key, value, errors),
            Key::MaxRetries => self.max_retries = max_retries(value, errors),
            Key::RetryIn => self.retry_in = duration(key, value, errors),
            Key::Backoff => self.backoff = backoff(value, errors),
            Key::Timeout => self.timeout = timeout(value, errors),
            Key::OnCancel => self.on_cancel = on_cancel(value, errors),
            Key::Unique => self.unique = names(key, value, errors),
            Key::OnConflict => self.on_conflict = on_conflict(value, errors),
            Key::Debounce => self.debounce = nonzero(key, value, errors),
            Key::DebounceMax => self.debounce_max = nonzero(key, value, errors),
            Key::Cron => self.cron = cron(value, errors),
            Key::Timezone => self.timezone = timezone(value, errors),
            Key::OnMissed => self.on_missed = on_missed(value, errors),
            Key::Limit => self.limit = positive(key, value, errors),
            Key::LimitBy => self.limit_key = names(key, value, errors),
            Key::Sequence => self.sequence = names(key, value, errors),
            Key::OnFailure => self.on_failure = on_failure(value, errors),
            Key::Rate => self.rate = rate(value, errors),
            Key::Burst => self.burst = positive(key, value, errors),
            Key::KeepResult => self.keep_result = nonzero(key, value, errors),
        }
    }

    /// Where `key` was written, if it was.
    fn path(&self, key: Key) -> Option<&Path> {
        self.spans
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, path)| path)
    }

    /// Checks what depends on the function (the parameters `unique` names) or on two arguments
    /// at once. `parameters` are the task's arguments, those the worker supplies left out.
    pub(crate) fn check(
        &self,
        parameters: &[&syn::Ident],
        returns_value: bool,
        errors: &mut Errors,
    ) {
        let listed: Vec<String> = parameters.iter().map(|p| format!("`{p}`")).collect();
        let lists = [
            (Key::Unique, &self.unique),
            (Key::LimitBy, &self.limit_key),
            (Key::Sequence, &self.sequence),
        ];
        for (key, names) in lists {
            let Some(names) = names else { continue };
            for (n, name) in names.iter().enumerate() {
                if names[..n].contains(name) {
                    errors.spanned(name, format!("`{name}` is named twice in `{key}`"));
                } else if !parameters.contains(&name) {
                    let expected = match listed.as_slice() {
                        [] => "this task takes no argument to key it by".to_owned(),
                        _ => format!("expected one of {}", listed.join(", ")),
                    };
                    errors.spanned(
                        name,
                        format!("`{key}` names the task's arguments, and `{name}` is not one; {expected}"),
                    );
                }
            }
        }
        if let (Some(path), None, None) = (self.path(Key::LimitBy), self.limit, self.rate) {
            errors.spanned(
                path,
                "`limit_key` says what a limit counts per key: add `limit = ..`, how many of a key's jobs run at once, or `rate = \"../s\"`, how many start per period",
            );
        }
        if self.sequence.is_some() {
            for key in [Key::Limit, Key::LimitBy] {
                if let Some(path) = self.path(key) {
                    errors.spanned(
                        path,
                        format!("a sequence runs one job of a key at a time, in order: leave `{key}` out"),
                    );
                }
            }
        }
        if let (Some(path), None) = (self.path(Key::OnFailure), &self.sequence) {
            errors.spanned(
                path,
                "`on_failure` says what a failed job does to its sequence: add `sequence = [..]`",
            );
        }
        if let (Some(path), false) = (self.path(Key::KeepResult), returns_value) {
            errors.spanned(
                path,
                "`keep_result` says how long a job keeps the value its task returns, and this task returns none: return `Result<T, E>` with a `T` other than `()`",
            );
        }
        if let (Some(path), None) = (self.path(Key::Burst), self.rate) {
            errors.spanned(path, "`burst` goes with a rate: add `rate = \"../s\"`");
        }
        if let (Some(path), false) = (self.path(Key::Cron), parameters.is_empty()) {
            errors.spanned(
                path,
                "a `cron` task runs with no arguments, and this one takes some; for a task with arguments, schedule its calls with `Worker::periodic`",
            );
        }
        for key in [Key::Timezone, Key::OnMissed] {
            if let (None, Some(path)) = (self.path(Key::Cron), self.path(key)) {
                errors.spanned(
                    path,
                    format!(
                        "`{key}` applies to a recurring task: add `cron = \"..\"`, its schedule"
                    ),
                );
            }
        }
        for key in [Key::OnConflict, Key::Debounce, Key::DebounceMax] {
            if let (None, Some(path)) = (&self.unique, self.path(key)) {
                errors.spanned(
                    path,
                    format!("`{key}` applies to a unique task: add `unique = [..]`, the arguments that make a job unique"),
                );
            }
        }
        if let (Some(_), Some(path)) = (self.debounce, self.path(Key::OnConflict)) {
            errors.spanned(
                path,
                "`debounce` says what a duplicate does (it replaces the waiting job and pushes its time back): leave `on_conflict` out",
            );
        }
        match (self.debounce, self.debounce_max, self.path(Key::DebounceMax)) {
            (None, Some(_), Some(path)) => errors.spanned(
                path,
                "`debounce_max` bounds a debounce: add `debounce = \"..\"`, the delay after the latest call",
            ),
            (Some(debounce), Some(max), Some(path)) if max < debounce => errors.spanned(
                path,
                "`debounce_max` is the latest a debounced job runs after the first call, so it cannot be shorter than `debounce`",
            ),
            _ => {}
        }
    }
}

fn valid_keys() -> String {
    let keys: Vec<_> = Key::ALL.iter().map(|key| format!("`{key}`")).collect();
    keys.join(", ")
}

fn path_to_string(path: &Path) -> String {
    let segments: Vec<_> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    segments.join("::")
}

/// The literal itself, seeing through the invisible group a `macro_rules!` fragment comes in.
fn literal(value: &Expr) -> Option<&Lit> {
    match value {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        Expr::Group(group) => literal(&group.expr),
        _ => None,
    }
}

fn string(key: Key, value: &Expr, errors: &mut Errors) -> Option<LitStr> {
    match literal(value) {
        Some(Lit::Str(string)) => Some(string.clone()),
        _ => {
            errors.spanned(
                value,
                format!("`{key}` takes a string literal, like `{}`", key.example()),
            );
            None
        }
    }
}

/// A queue or task name, stored as PostgreSQL text: not blank, and without NUL.
fn stored_name(string: Option<LitStr>, what: &str, errors: &mut Errors) -> Option<LitStr> {
    let string = string?;
    let value = string.value();
    let problem = if value.trim().is_empty() {
        "cannot be empty"
    } else if value.contains('\0') {
        "cannot contain a NUL character"
    } else {
        return Some(string);
    };
    errors.spanned(&string, format!("the {what} {problem}"));
    None
}

fn duration(key: Key, value: &Expr, errors: &mut Errors) -> Option<Duration> {
    let string = string(key, value, errors)?;
    let text = string.value();
    match humantime::parse_duration(text.trim()) {
        // pq-core's `MAX_DELAY`: longer delays overflow PostgreSQL's timestamps.
        Ok(duration) if duration > Duration::from_secs(1000 * 365 * 24 * 3600) => {
            errors.spanned(
                &string,
                format!(
                    "invalid duration {text:?}: a duration cannot be longer than a thousand years"
                ),
            );
            None
        }
        Ok(duration) => Some(duration),
        Err(error) => {
            errors.spanned(
                &string,
                format!("invalid duration {text:?}: {}", explain(&text, error)),
            );
            None
        }
    }
}

/// A duration that is not zero: a run limited to no time at all could never succeed.
fn timeout(value: &Expr, errors: &mut Errors) -> Option<Duration> {
    let timeout = duration(Key::Timeout, value, errors)?;
    if timeout.is_zero() {
        errors.spanned(
            value,
            "a `timeout` of zero would stop every run at once; give it a duration, like `timeout = \"5m\"`",
        );
        return None;
    }
    Some(timeout)
}

/// Why `humantime` rejected `text`, and what it accepts.
fn explain(text: &str, error: humantime::DurationError) -> String {
    use humantime::DurationError as E;
    const EXAMPLES: &str = r#"write a number and a unit, like "30s", "5m", "1h30m" or "2d""#;
    match error {
        _ if text.trim_start().starts_with('-') => "a duration cannot be negative".to_owned(),
        E::Empty => format!("it is empty; {EXAMPLES}"),
        E::InvalidCharacter(at) => match text.get(at..).and_then(|rest| rest.chars().next()) {
            Some(c) => format!("unexpected character `{c}`; {EXAMPLES}"),
            None => EXAMPLES.to_owned(),
        },
        E::NumberExpected(at) => match text.get(at..) {
            Some(rest) if !rest.is_empty() => {
                format!("expected a number before `{rest}`; {EXAMPLES}")
            }
            _ => format!("expected a number; {EXAMPLES}"),
        },
        E::UnknownUnit { unit, value, .. } if unit.is_empty() => {
            format!("the unit is missing, like \"{value}s\" or \"{value}m\"")
        }
        E::UnknownUnit { unit, .. } => {
            format!("unknown unit `{unit}`, expected one of ns, us, ms, s, m, h, d, w, M, y")
        }
        E::NumberOverflow => "too large, or more precise than a nanosecond".to_owned(),
    }
}

fn max_retries(value: &Expr, errors: &mut Errors) -> Option<u32> {
    const EXPECTED: &str = "expected a whole number of retries, like `max_retries = 3`";
    let message = match (value, literal(value)) {
        (_, Some(Lit::Int(int))) => match int.base10_parse::<u32>() {
            Ok(max_retries) => return Some(max_retries),
            Err(_) => format!("`max_retries` is at most {}", u32::MAX),
        },
        (
            Expr::Unary(ExprUnary {
                op: UnOp::Neg(_), ..
            }),
            _,
        ) => {
            format!("`max_retries` cannot be negative; {EXPECTED}")
        }
        (_, Some(Lit::Float(_))) => format!("`max_retries` cannot be a fraction; {EXPECTED}"),
        (_, Some(Lit::Str(string))) => match string.value().trim().parse::<u32>() {
            Ok(n) => format!("`max_retries` takes a number, not a string: `max_retries = {n}`"),
            Err(_) => format!("`max_retries` takes a number, not a string; {EXPECTED}"),
        },
        _ => format!("`max_retries` takes an integer literal; {EXPECTED}"),
    };
    errors.spanned(value, message);
    None
}

fn on_cancel(value: &Expr, errors: &mut Errors) -> Option<OnCancel> {
    let string = string(Key::OnCancel, value, errors)?;
    match string.value().as_str() {
        "cooperate" => Some(OnCancel::Cooperate),
        "abort" => Some(OnCancel::Abort),
        other => {
            errors.spanned(
                &string,
                format!(r#"unknown on_cancel {other:?}, expected "cooperate" or "abort""#),
            );
            None
        }
    }
}

/// `unique = [a, b]` (or `limit_key`, `sequence`): plain names, at least one.
fn names(key: Key, value: &Expr, errors: &mut Errors) -> Option<Vec<syn::Ident>> {
    let expected = format!(
        "`{key}` takes a list of the task's arguments, like `{}`",
        key.example()
    );
    let Expr::Array(array) = value else {
        errors.spanned(value, expected);
        return None;
    };
    if array.elems.is_empty() {
        errors.spanned(value, format!("`{key}` names no argument; {expected}"));
        return None;
    }
    let mut names = Vec::new();
    for element in &array.elems {
        match element {
            Expr::Path(path) if path.qself.is_none() && path.path.get_ident().is_some() => {
                names.extend(path.path.get_ident().cloned());
            }
            other => errors.spanned(other, format!("not an argument's name; {expected}")),
        }
    }
    Some(names)
}

/// A whole number of at least 1 (`limit`, `burst`).
fn positive(key: Key, value: &Expr, errors: &mut Errors) -> Option<u32> {
    let message = match literal(value) {
        Some(Lit::Int(int)) => match int.base10_parse::<u32>() {
            Ok(0) => format!("`{key}` is at least 1: with 0, no job would ever start"),
            Ok(n) if n <= i32::MAX as u32 => return Some(n),
            _ => format!("`{key}` is a whole number from 1 to {}", i32::MAX),
        },
        _ => format!(
            "`{key}` takes a whole number of jobs, like `{}`",
            key.example()
        ),
    };
    errors.spanned(value, message);
    None
}

/// `rate = "100/s"`: jobs per period, as pq-core's `Rate` reads it (s, m, h, d or a duration);
/// at least one job, a period over zero and at most a day, at most 1,000,000 jobs a second.
fn rate(value: &Expr, errors: &mut Errors) -> Option<(u32, Duration)> {
    let string = string(Key::Rate, value, errors)?;
    let text = string.value();
    let parsed = (|| {
        let (jobs, per) = text
            .split_once('/')
            .ok_or("a rate reads `jobs/period`, like \"100/s\" or \"30/10s\"")?;
        let jobs: u32 = jobs
            .trim()
            .parse()
            .map_err(|_| "a rate's number of jobs is a whole number")?;
        let per = match per.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            other => humantime::parse_duration(other)
                .map_err(|_| "a rate's period is s, m, h, d or a duration, like \"10s\"")?,
        };
        if jobs == 0 {
            Err("a rate lets at least one job start")
        } else if per.is_zero() {
            Err("a rate's period is longer than zero")
        } else if per > Duration::from_secs(86_400) {
            Err("a rate's period is at most a day")
        } else if f64::from(jobs) / per.as_secs_f64() > 1_000_000.0 {
            Err("a rate is at most 1,000,000 jobs a second")
        } else {
            Ok((jobs, per))
        }
    })();
    match parsed {
        Ok(rate) => Some(rate),
        Err(reason) => {
            errors.spanned(&string, format!("invalid rate {text:?}: {reason}"));
            None
        }
    }
}

fn on_failure(value: &Expr, errors: &mut Errors) -> Option<OnFailure> {
    let string = string(Key::OnFailure, value, errors)?;
    match string.value().as_str() {
        "block" => Some(OnFailure::Block),
        "skip" => Some(OnFailure::Skip),
        other => {
            errors.spanned(
                &string,
                format!(r#"unknown on_failure {other:?}, expected "block" (its retries first) or "skip""#),
            );
            None
        }
    }
}

/// A cron expression, read as the worker reads it (pq-worker/src/cron.rs: seconds optional).
fn cron(value: &Expr, errors: &mut Errors) -> Option<LitStr> {
    let string = string(Key::Cron, value, errors)?;
    let parsed = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(&string.value());
    match parsed {
        Ok(_) => Some(string),
        Err(error) => {
            errors.spanned(
                &string,
                format!(
                    "invalid cron expression {:?}: {}; expected five fields (minute hour day-of-month month day-of-week) or six (seconds first), like \"0 3 * * *\"",
                    string.value(),
                    error.to_string().trim_end_matches('.')
                ),
            );
            None
        }
    }
}

/// An IANA time zone that chrono-tz knows.
fn timezone(value: &Expr, errors: &mut Errors) -> Option<LitStr> {
    let string = string(Key::Timezone, value, errors)?;
    match string.value().parse::<chrono_tz::Tz>() {
        Ok(_) => Some(string),
        Err(_) => {
            errors.spanned(
                &string,
                format!(
                    "unknown time zone {:?}: expected an IANA name like \"Europe/Berlin\" or \"UTC\"",
                    string.value()
                ),
            );
            None
        }
    }
}

fn on_missed(value: &Expr, errors: &mut Errors) -> Option<OnMissed> {
    let string = string(Key::OnMissed, value, errors)?;
    match string.value().as_str() {
        "coalesce" => Some(OnMissed::Coalesce),
        "catch_up" => Some(OnMissed::CatchUp),
        "skip" => Some(OnMissed::Skip),
        other => {
            errors.spanned(
                &string,
                format!(
                    r#"unknown on_missed {other:?}, expected "coalesce", "catch_up" or "skip""#
                ),
            );
            None
        }
    }
}

fn on_conflict(value: &Expr, errors: &mut Errors) -> Option<OnConflict> {
    let string = string(Key::OnConflict, value, errors)?;
    match string.value().as_str() {
        "skip" => Some(OnConflict::Skip),
        "replace" => Some(OnConflict::Replace),
        other => {
            errors.spanned(
                &string,
                format!(r#"unknown on_conflict {other:?}, expected "skip" or "replace" (or `debounce = "..."` instead)"#),
            );
            None
        }
    }
}

/// A duration that is not zero.
fn nonzero(key: Key, value: &Expr, errors: &mut Errors) -> Option<Duration> {
    let delay = duration(key, value, errors)?;
    if delay.is_zero() {
        errors.spanned(
            value,
            format!(
                "`{key}` cannot be zero; give it a duration, like `{}`",
                key.example()
            ),
        );
        return None;
    }
    Some(delay)
}

fn backoff(value: &Expr, errors: &mut Errors) -> Option<Backoff> {
    let string = string(Key::Backoff, value, errors)?;
    match string.value().as_str() {
        "fixed" => Some(Backoff::Fixed),
        "exponential" => Some(Backoff::Exponential),
        other => {
            errors.spanned(
                &string,
                format!(r#"unknown backoff {other:?}, expected "fixed" or "exponential""#),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn parse(tokens: TokenStream) -> Result<TaskArgs, Vec<String>> {
        let mut errors = Errors::default();
        let args = TaskArgs::parse(tokens, &mut errors);
        match errors.finish() {
            Ok(()) => Ok(args),
            Err(error) => Err(error.into_iter().map(|e| e.to_string()).collect()),
        }
    }

    fn errors_of(tokens: TokenStream) -> Vec<String> {
        match parse(tokens) {
            Ok(_) => panic!("the arguments were accepted"),
            Err(errors) => errors,
        }
    }

    #[test]
    fn no_arguments_keep_every_default() {
        let args = parse(TokenStream::new()).unwrap();
        assert!(args.queue.is_none() && args.name.is_none());
        assert_eq!(
            (args.schedule_at, args.expected_at, args.retry_in),
            (None, None, None)
        );
        assert_eq!((args.max_retries, args.backoff), (None, None));
    }

    #[test]
    fn every_argument_is_parsed() {
        let args = parse(quote! {
            queue = "apples", name = "fruit::eat", schedule_at = "1h", expected_at = "1h30m",
            max_retries = 2, retry_in = "10s", backoff = "exponential", timeout = "5m",
        })
        .unwrap();
        assert_eq!(args.timeout, Some(Duration::from_secs(300)));
        assert_eq!(args.queue.unwrap().value(), "apples");
        assert_eq!(args.name.unwrap().value(), "fruit::eat");
        assert_eq!(args.schedule_at, Some(Duration::from_secs(3600)));
        assert_eq!(args.expected_at, Some(Duration::from_secs(5400)));
        assert_eq!(args.max_retries, Some(2));
        assert_eq!(args.retry_in, Some(Duration::from_secs(10)));
        assert_eq!(args.backoff, Some(Backoff::Exponential));
    }

    #[test]
    fn a_zero_retry_delay_is_allowed() {
        let args = parse(quote!(retry_in = "0s", backoff = "fixed")).unwrap();
        assert_eq!(args.retry_in, Some(Duration::ZERO));
        assert_eq!(args.backoff, Some(Backoff::Fixed));
    }

    #[test]
    fn an_unknown_argument_lists_the_valid_ones() {
        assert_eq!(
            errors_of(quote!(queues = "apples")),
            [
                "unknown argument `queues`; expected one of `queue`, `name`, `schedule_at`, \
              `expected_at`, `max_retries`, `retry_in`, `backoff`, `timeout`, `on_cancel`, \
              `unique`, `on_conflict`, `debounce`, `debounce_max`, `cron`, `timezone`, \
              `on_missed`, `limit`, `limit_key`, `sequence`, `on_failure`, `rate`, `burst`, `keep_result`"
            ]
        );
    }

    #[test]
    fn a_duplicate_is_rejected_once_and_the_first_value_kept() {
        assert_eq!(
            errors_of(quote!(
                queue = "a",
                max_retries = 1,
                queue = "b",
                queue = "c"
            )),
            [
                "duplicate argument `queue`; it is already set earlier in this attribute",
                "duplicate argument `queue`; it is already set earlier in this attribute",
            ]
        );
    }

    #[test]
    fn bad_durations_name_the_string_and_say_why() {
        let cases = [
            (
                quote!(retry_in = "10x"),
                r#"invalid duration "10x": unknown unit `x`, expected one of ns, us, ms, s, m, h, d, w, M, y"#,
            ),
            (
                quote!(retry_in = "-5s"),
                r#"invalid duration "-5s": a duration cannot be negative"#,
            ),
            (
                quote!(schedule_at = ""),
                r#"invalid duration "": it is empty; write a number and a unit, like "30s", "5m", "1h30m" or "2d""#,
            ),
            (
                quote!(expected_at = "10"),
                r#"invalid duration "10": the unit is missing, like "10s" or "10m""#,
            ),
            (
                quote!(expected_at = "1h+5m"),
                r#"invalid duration "1h+5m": unexpected character `+`; write a number and a unit, like "30s", "5m", "1h30m" or "2d""#,
            ),
        ];
        for (tokens, expected) in cases {
            assert_eq!(errors_of(tokens), [expected]);
        }
    }

    #[test]
    fn max_retries_must_be_a_non_negative_integer() {
        let cases = [
            (quote!(max_retries = -1), "`max_retries` cannot be negative; expected a whole number of retries, like `max_retries = 3`"),
            (quote!(max_retries = 1.5), "`max_retries` cannot be a fraction; expected a whole number of retries, like `max_retries = 3`"),
            (quote!(max_retries = "2"), "`max_retries` takes a number, not a string: `max_retries = 2`"),
            (quote!(max_retries = "two"), "`max_retries` takes a number, not a string; expected a whole number of retries, like `max_retries = 3`"),
            (quote!(max_retries = 5000000000), "`max_retries` is at most 4294967295"),
            (quote!(max_retries = RETRIES), "`max_retries` takes an integer literal; expected a whole number of retries, like `max_retries = 3`"),
        ];
        for (tokens, expected) in cases {
            assert_eq!(errors_of(tokens), [expected]);
        }
    }

    #[test]
    fn string_arguments_reject_other_literals_and_empty_strings() {
        assert_eq!(
            errors_of(quote!(
                queue = apples,
                name = 7,
                retry_in = 10,
                backoff = "linear",
                queue = ""
            )),
            [
                r#"`queue` takes a string literal, like `queue = "emails"`"#,
                r#"`name` takes a string literal, like `name = "billing::charge"`"#,
                r#"`retry_in` takes a string literal, like `retry_in = "30s"`"#,
                r#"unknown backoff "linear", expected "fixed" or "exponential""#,
                "duplicate argument `queue`; it is already set earlier in this attribute",
            ]
        );
        assert_eq!(
            errors_of(quote!(name = " ")),
            ["the task name cannot be empty"]
        );
    }

    #[test]
    fn every_mistake_is_reported_and_parsing_goes_on_after_each() {
        let errors = errors_of(quote!(
            colour = "red",
            queue,
            max_retries(3),
            retry_in = "soon",
            backoff = "fixed"
        ));
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(errors[1].starts_with("`queue` needs a value"));
        assert!(errors[2].starts_with("`max_retries` needs a value"));
    }

    #[test]
    fn a_syntax_error_is_reported() {
        assert_eq!(
            errors_of(quote!(queue = "a" max_retries = 1)),
            ["expected `,`"]
        );
    }
}
