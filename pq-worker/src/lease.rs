//! Keeps a worker's leases alive and rescues the jobs of workers that died.

use std::time::Duration;

use pq_core::Pq;

use crate::complete::{lock, InFlight};

/// How many expired leases one rescue statement returns to their queues.
const RESCUE_BATCH: u32 = 1000;

/// Every `lease / 3`, extends the lease of every job this worker holds; so a job that runs
/// longer than its lease is never handed to another worker while this one lives.
pub(crate) async fn renew_leases(pq: Pq, in_flight: InFlight, lease: Duration) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let claims: Vec<_> = lock(&in_flight).iter().copied().collect();
        if claims.is_empty() {
            continue;
        }
        match pq.renew(&claims, lease).await {
            Ok(held) if held.len() < claims.len() => tracing::warn!(
                lost = claims.len() - held.len(),
                "pq: leases lost (the jobs were rescued after this worker stalled)"
            ),
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "pq: cannot renew leases"),
        }
    }
}

/// Every `interval`, returns jobs whose lease ran out to their queues.
pub(crate) async fn rescue_expired(pq: Pq, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pq.rescue(RESCUE_BATCH).await {
            Ok(0) => {}
            Ok(rescued) => tracing::warn!(rescued, "pq: rescued jobs whose worker was lost"),
            Err(error) => tracing::error!(%error, "pq: cannot rescue expired leases"),
        }
    }
}
