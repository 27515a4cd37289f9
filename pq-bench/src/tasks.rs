//! The benchmark's tasks: a no-op for the drains, and a probe that reports when its handler
//! starts, for the latency figure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

/// The queue every benchmark job goes to (the tasks' `queue = "bench"`).
pub const QUEUE: &str = "bench";

/// The no-op task's stable name, as the drains' fills write it.
pub const NOOP: &str = "pq_bench::noop";

/// How many no-op jobs this process ran.
pub static HANDLED: AtomicU64 = AtomicU64::new(0);

/// Where the probe reports `(n, when its handler started)`; set by the latency figure.
pub static STARTED: OnceLock<UnboundedSender<(u32, Instant)>> = OnceLock::new();

/// Does nothing but count itself.
#[pq::task(name = "pq_bench::noop", queue = "bench")]
pub async fn noop(n: u32) {
    let _ = n;
    HANDLED.fetch_add(1, Ordering::Relaxed);
}

/// The no-op, unique by its argument: its enqueue meets the unique index.
#[pq::task(name = "pq_bench::unique_noop", queue = "bench", unique = [n])]
pub async fn unique_noop(n: u32) {
    let _ = n;
    HANDLED.fetch_add(1, Ordering::Relaxed);
}

/// The keyed no-op's stable name, as the limits figure's fills write it.
pub const KEYED: &str = "pq_bench::keyed";

/// The no-op, one job running per key over every worker (the limits figure); on a queue of
/// its own, which its policy makes limited.
#[pq::task(name = "pq_bench::keyed", queue = "bench_keyed", limit_key = [key], limit = 1)]
pub async fn keyed(key: u32) {
    let _ = key;
    HANDLED.fetch_add(1, Ordering::Relaxed);
}

/// The keyed and paced no-op's stable name, as the limits figure's fills write it.
pub const KEY_PACED: &str = "pq_bench::key_paced";

/// The no-op, 10 jobs a second per key over every worker (the limits figure).
#[pq::task(name = "pq_bench::key_paced", queue = "bench_key_paced", limit_key = [key], rate = "10/s", burst = 1)]
pub async fn key_paced(key: u32) {
    let _ = key;
    HANDLED.fetch_add(1, Ordering::Relaxed);
}

/// The stable name of the task that returns a value, as the results figure's fills write it.
pub const SQUARE: &str = "pq_bench::square";

/// Returns its argument squared, which its job keeps: the no-op with a result (the results
/// figure).
#[pq::task(name = "pq_bench::square", queue = "bench")]
pub async fn square(n: u32) -> Result<u64, std::convert::Infallible> {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    Ok(u64::from(n) * u64::from(n))
}

/// The stable name of the task that runs for a while, as the prefetch figure's fills write it.
pub const PAUSE: &str = "pq_bench::pause";

/// Runs for `millis` and counts itself: an I/O-like job, for the prefetch figure's drains.
#[pq::task(name = "pq_bench::pause", queue = "bench")]
pub async fn pause(millis: u64) {
    tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
    HANDLED.fetch_add(1, Ordering::Relaxed);
}

/// Where the urgent probe reports `(n, when its handler started)`; set by the prefetch figure.
pub static URGENT: OnceLock<UnboundedSender<(u32, Instant)>> = OnceLock::new();

/// Reports the instant its handler started, as `probe` does, for the prefetch figure.
#[pq::task(name = "pq_bench::urgent", queue = "bench")]
pub async fn urgent(n: u32) {
    let now = Instant::now();
    if let Some(started) = URGENT.get() {
        let _ = started.send((n, now));
    }
}

/// Reports the instant its handler started.
#[pq::task(name = "pq_bench::probe", queue = "bench")]
pub async fn probe(n: u32) {
    let now = Instant::now();
    if let Some(started) = STARTED.get() {
        let _ = started.send((n, now));
    }
}

/// Runs for `millis` without doing anything: a long job, for the heartbeat figure.
#[pq::task(name = "pq_bench::sleeper", queue = "bench_long")]
pub async fn sleeper(millis: u64) {
    tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
}

/// Sums its parents' results: the fan-in of the workflows figure.
#[pq::task(name = "pq_bench::total", queue = "bench")]
pub async fn total(#[parents] squares: Vec<u64>) -> Result<u64, std::convert::Infallible> {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    Ok(squares.iter().sum())
}
