//! How long a failed job waits before its next attempt.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pq_core::protocol::Claim;

use crate::task::{Backoff, TaskOptions};

/// The longest an exponential backoff waits.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// The delay before the next attempt of `claim`'s job, whose runs failed `failures` times so
/// far (this one included), by the task's backoff.
pub(crate) fn retry_delay(options: &TaskOptions, claim: Claim, failures: u32) -> Duration {
    match options.backoff {
        Backoff::Fixed => options.retry_in,
        Backoff::Exponential => {
            let exponent = failures.saturating_sub(1).min(32);
            let delay = options
                .retry_in
                .saturating_mul(1 << exponent.min(31))
                .min(MAX_BACKOFF);
            // Up to 25% less, so that jobs that failed together spread out.
            let jitter = delay.mul_f64(0.25 * unit_random(claim, failures));
            delay - jitter
        }
    }
}

/// A number in [0, 1), different for each job, run and moment: enough for jitter.
fn unit_random(claim: Claim, failures: u32) -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut x = (claim.id.0 as u64)
        ^ (claim.number as u64).rotate_left(17)
        ^ (u64::from(failures) << 32)
        ^ u64::from(nanos);
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use pq_core::JobId;

    fn claim() -> Claim {
        Claim::new(JobId(42), 7)
    }

    #[test]
    fn a_fixed_backoff_always_waits_retry_in() {
        let options = TaskOptions {
            retry_in: Duration::from_secs(10),
            ..TaskOptions::DEFAULT
        };
        for attempt in 1..5 {
            assert_eq!(
                retry_delay(&options, claim(), attempt),
                Duration::from_secs(10)
            );
        }
    }

    #[test]
    fn an_exponential_backoff_doubles_with_up_to_a_quarter_of_jitter() {
        let options = TaskOptions {
            retry_in: Duration::from_secs(10),
            backoff: Backoff::Exponential,
            ..TaskOptions::DEFAULT
        };
        for (attempt, full) in [(1, 10), (2, 20), (3, 40), (4, 80)] {
            let delay = retry_delay(&options, claim(), attempt);
            let full = Duration::from_secs(full);
            assert!(
                delay <= full && delay >= full.mul_f64(0.75),
                "{attempt}: {delay:?}"
            );
        }
        assert!(retry_delay(&options, claim(), 60) <= MAX_BACKOFF);
    }
}
