//! Property tests of the duration strings pq accepts: `pq::parse_duration` at run time (for
//! `schedule_at`/`expected_at`, which also refuse delays over `pq::MAX_DELAY` when the job is
//! written), and the check that `#[pq::task]` applies to `schedule_at`, `expected_at` and
//! `retry_in` at compile time (pq-macros/src/args.rs: `humantime::parse_duration` on the
//! literal's text, then at most a thousand years), modelled by `macro_parse` below. The macro
//! itself is not run: compiling a crate per case is far too slow; its messages are pinned by the
//! UI tests in tests/ui.

use std::time::Duration;

use pq::{IntoWhen, When};
use proptest::prelude::*;

const UNITS: &[(&str, u64)] = &[
    ("s", 1),
    ("sec", 1),
    ("m", 60),
    ("min", 60),
    ("h", 3600),
    ("hours", 3600),
    ("d", 86_400),
    ("days", 86_400),
    ("w", 604_800),
];

/// What the macro accepts as an attribute's duration literal.
fn macro_parse(text: &str) -> Option<Duration> {
    humantime::parse_duration(text)
        .ok()
        .filter(|d| *d <= Duration::from_secs(1000 * 365 * 24 * 3600))
}

/// Whether the macro and the runtime agree on `text`. The one difference the fuzzing found: the
/// runtime trims the text first, and humantime refuses whitespace after a bare number, so
/// `retry_in = "0 "` is a compile error while `.schedule_at("0 ")` is no delay. Anything the
/// macro accepts, the runtime reads alike.
fn agree(text: &str) -> bool {
    let runtime = runtime_parse(text);
    match macro_parse(text) {
        Some(at_compile_time) => runtime == Some(at_compile_time),
        None => runtime.is_none() || macro_parse(text.trim()) == runtime,
    }
}

/// What a job written with `.schedule_at(text)` accepts.
fn runtime_parse(text: &str) -> Option<Duration> {
    pq::parse_duration(text)
        .ok()
        .filter(|d| *d <= pq::MAX_DELAY)
}

/// 512 cases a property, or `$PROPTEST_CASES` for a longer hunt.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok());
    ProptestConfig::with_cases(cases.unwrap_or(512))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_number_and_a_unit_is_that_many_units(n in 0u64..1_000_000_000, unit in 0..UNITS.len()) {
        let (name, seconds) = UNITS[unit];
        let parsed = pq::parse_duration(&format!("{n}{name}")).unwrap();
        prop_assert_eq!(parsed, Duration::from_secs(n * seconds));
    }

    #[test]
    fn units_add_up_with_or_without_spaces(h in 0u64..10_000, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
        let expected = Duration::from_secs(h * 3600 + m * 60 + s) + Duration::from_millis(ms);
        prop_assert_eq!(pq::parse_duration(&format!("{h}h{m}m{s}s{ms}ms")).unwrap(), expected);
        prop_assert_eq!(pq::parse_duration(&format!("{h}h {m}m {s}s {ms}ms")).unwrap(), expected);
    }

    #[test]
    fn what_humantime_prints_parses_back(secs in 0u64..10_000_000_000, nanos in 0u32..1_000_000_000) {
        let duration = Duration::new(secs, nanos);
        let printed = humantime::format_duration(duration).to_string();
        prop_assert_eq!(pq::parse_duration(&printed).unwrap(), duration);
    }

    #[test]
    fn surrounding_whitespace_is_ignored(n in 0u64..1_000_000, pad in "[ \t\n]{0,3}") {
        let plain = pq::parse_duration(&format!("{n}s")).unwrap();
        prop_assert_eq!(pq::parse_duration(&format!("{pad}{n}s{pad}")).unwrap(), plain);
    }

    #[test]
    fn a_negative_duration_is_refused(n in 0u64..1_000_000, unit in 0..UNITS.len()) {
        let negative = format!("-{n}{}", UNITS[unit].0);
        prop_assert!(pq::parse_duration(&negative).is_err(), "{} was accepted", negative);
    }

    /// Any text at all: parsed or refused, never a panic, a refusal quotes the input, and the
    /// attribute would decide the same.
    #[test]
    fn any_text_is_parsed_or_refused_naming_it(input in "\\PC{0,24}") {
        prop_assert!(agree(&input), "{:?}: {:?} at run time, {:?} at compile time", input, runtime_parse(&input), macro_parse(&input));
        match pq::parse_duration(&input) {
            Ok(_) => {}
            Err(error) => {
                let message = error.to_string();
                prop_assert!(message.contains(&format!("{input:?}")), "{}", message);
                let is_invalid_time = matches!(error, pq::Error::InvalidTime { .. });
                prop_assert!(is_invalid_time, "{:?}", error);
            }
        }
    }

    /// Text made of the characters durations use, which reaches deeper into the parser.
    #[test]
    fn near_misses_are_parsed_or_refused_alike(input in "[0-9 .+-]{0,6}[a-zµ]{0,4}[0-9 ]{0,4}[a-z]{0,3}") {
        prop_assert!(agree(&input), "{:?}: {:?} at run time, {:?} at compile time", input, runtime_parse(&input), macro_parse(&input));
    }

    /// The attribute and the runtime accept the same strings and read them alike, so a
    /// duration can move between `#[pq::task(retry_in = ...)]` and `.schedule_at(...)`.
    #[test]
    fn the_macro_and_the_runtime_agree_on_limits(n in 0u64..2_000, unit in prop::sample::select(vec!["y", "M", "w", "d"])) {
        let text = format!("{n}{unit}");
        prop_assert_eq!(runtime_parse(&text), macro_parse(&text));
    }

    #[test]
    fn the_macro_and_the_runtime_agree(input in " ?[0-9]{1,6}(ns|us|ms|s|m|h|d|w|M|y| |x){1,3}[0-9]{0,3}[a-z]{0,2} ?") {
        prop_assert!(agree(&input), "{:?}: {:?} at run time, {:?} at compile time", input, runtime_parse(&input), macro_parse(&input));
    }

    #[test]
    fn a_str_into_when_is_the_parsed_delay(n in 0u64..1_000_000) {
        let text = format!("{n}m");
        prop_assert_eq!(text.as_str().into_when().unwrap(), When::In(pq::parse_duration(&text).unwrap()));
    }

    #[test]
    fn chrono_durations_are_delays_unless_negative(secs in -1_000_000i64..1_000_000) {
        let when = chrono::Duration::seconds(secs).into_when();
        if secs < 0 {
            prop_assert!(when.is_err());
        } else {
            prop_assert_eq!(when.unwrap(), When::In(Duration::from_secs(secs.unsigned_abs())));
        }
    }
}

/// The runtime trims (Unicode) whitespace before humantime sees the text; humantime skips it
/// too, so padding means the same to the attribute and to `.schedule_at(...)`.
#[test]
fn padding_means_the_same_to_the_macro_and_the_runtime() {
    let ten = Some(Duration::from_secs(10));
    for padded in [" 10s ", "\t10s\n", "\u{a0}10s", "10s\u{3000}"] {
        assert_eq!(pq::parse_duration(padded).ok(), ten, "{padded:?}");
        assert_eq!(macro_parse(padded), ten, "{padded:?}");
    }
}

#[test]
fn whitespace_after_a_bare_number_is_the_one_disagreement() {
    assert_eq!(runtime_parse("0 "), Some(Duration::ZERO));
    assert_eq!(macro_parse("0 "), None);
    assert_eq!(macro_parse("0"), Some(Duration::ZERO));
}
