//! Keeps a worker's registration alive, one statement every third of its lease whatever it
//! runs, hearing of the requests to cancel its jobs as it does, rescues the jobs of workers
//! whose heartbeat ran out, and warns of jobs in its queues that no live worker can run.

use std::sync::Arc;
use std::time::Duration;

use pq_core::protocol::{Heartbeat, WorkerInfo};
use pq_core::{Pq, WorkerId};

use crate::cancel::Cancels;

/// How many jobs of lost workers one rescue statement returns to their queues.
const RESCUE_BATCH: u32 = 1000;

/// How many jobs in line of each queue the look for unrunnable jobs reads: those that wait
/// longest are at the front.
const UNRUNNABLE_HEAD: u32 = 1000;

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

/// Warns, every `warn_after` (at most every minute) until dropped, of the jobs of `queues`
/// ready for `warn_after` or longer that no live worker can run. A task of its own, so that a
/// slow look never holds back a heartbeat.
pub(crate) async fn watch_unrunnable(pq: Pq, queues: Vec<String>, warn_after: Duration) {
    let mut tick = tokio::time::interval(warn_after.min(Duration::from_secs(60)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let admin = pq.admin();
    loop {
        tick.tick().await;
        let look = admin.unrunnable_in(Some(&queues), Some(UNRUNNABLE_HEAD));
        match tokio::time::timeout(warn_after, look).await {
            Ok(looked) => warn_unrunnable(looked, warn_after),
            Err(_) => tracing::debug!("pq: the look for jobs no worker can run timed out"),
        }
    }
}

fn warn_unrunnable(looked: pq_core::Result<Vec<pq_core::Unrunnable>>, warn_after: Duration) {
    match looked {
        Ok(groups) => {
            for group in groups {
                if group.oldest_ready.is_some_and(|age| age >= warn_after) {
                    tracing::warn!(
                        queue = group.queue,
                        task = group.task.as_deref().unwrap_or("(none)"),
                        jobs = group.jobs,
                        oldest_ready_seconds = group.oldest_ready.map(|age| age.as_secs()),
                        "pq: jobs wait that no live worker of their queue can run: no worker registered their task"
                    );
                }
            }
        }
        Err(error) => tracing::debug!(%error, "pq: cannot look for jobs no worker can run"),
    }
}
