//! Keeps a worker's registration alive, one statement every third of its lease whatever it
//! runs, hearing of the requests to cancel its jobs as it does, and rescues the jobs of workers
//! whose heartbeat ran out.

use std::sync::Arc;
use std::time::Duration;

use pq_core::protocol::{Heartbeat, WorkerInfo};
use pq_core::{Pq, WorkerId};

use crate::cancel::Cancels;

/// How many jobs of lost workers one rescue statement returns to their queues.
const RESCUE_BATCH: u32 = 1000;

/// Beats every `info.lease / 3`, and rescues every half lease (at least every second), until
/// dropped. A failed beat was already tried again at once on a fresh connection; the next tick
/// tries once more.
pub(crate) async fn keep_alive(
    pq: Pq,
    worker: WorkerId,
    info: WorkerInfo,
    max_rescues: u32,
    cancels: Arc<Cancels>,
) {
    let mut beat = tokio::time::interval(info.lease / 3);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    let mut rescue = tokio::time::interval((info.lease / 2).max(Duration::from_secs(1)));
    rescue.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = beat.tick() => match pq.heartbeat(worker, &info).await {
                Ok(Heartbeat { lapsed, cancel }) => {
                    if lapsed {
                        tracing::warn!(
                            worker = worker.0,
                            "pq: this worker's lease had run out (it was frozen or cut off): other workers may have rescued its jobs, whose outcomes it can no longer record"
                        );
                    }
                    cancels.set(cancel);
                }
                Err(error) => tracing::error!(%error, "pq: cannot renew this worker's lease"),
            },
            _ = rescue.tick() => match pq.rescue(RESCUE_BATCH, max_rescues).await {
                Ok(0) => {}
                Ok(rescued) => tracing::warn!(rescued, "pq: rescued jobs whose worker was lost"),
                Err(error) => tracing::error!(%error, "pq: cannot rescue the jobs of lost workers"),
            },
        }
    }
}
