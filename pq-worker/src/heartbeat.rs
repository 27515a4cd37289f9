//! Keeps a worker's registration alive, one statement every third of its lease whatever it
//! runs, hearing of the requests to cancel its jobs as it does, rescues the jobs of workers
//! whose heartbeat ran out, deletes the finished jobs whose results expired and the step records
//! of ended jobs (a task of its own), and warns of jobs in its queues that no live worker can run.

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

/// How many rows one statement of [`maintain`] deletes, at most.
const MAINTENANCE_BATCH: u32 = 1000;

/// How long one round of [`maintain`] deletes for, at most, batch after batch.
const MAINTENANCE_ROUND: Duration = Duration::from_secs(5);

/// Deletes, every `every` until dropped, the finished jobs whose results expired, the step
/// records of ended jobs and the edges of gone ones, a batch of 1,000 after another until none is left or the round's
/// time is up. A task of its own, so that a long round never holds back a heartbeat; every
/// worker runs it, their batches skipping the rows another holds.
pub(crate) async fn maintain(pq: Pq, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let round = tokio::time::Instant::now() + MAINTENANCE_ROUND;
        let expired = batches(round, || pq.expire(MAINTENANCE_BATCH)).await;
        let swept = batches(round, || pq.sweep_steps(MAINTENANCE_BATCH)).await;
        let edges = batches(round, || pq.sweep_edges(MAINTENANCE_BATCH)).await;
        match (expired, swept, edges) {
            (Ok(expired), Ok(swept), Ok(edges)) if expired + swept + edges > 0 => {
                tracing::debug!(
                    expired,
                    swept,
                    edges,
                    "pq: deleted expired jobs, ended jobs' step records and gone jobs' edges"
                );
            }
            (Ok(_), Ok(_), Ok(_)) => {}
            (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
                tracing::error!(%error, "pq: cannot delete expired jobs, step records or edges");
            }
        }
    }
}

/// Runs `batch` until it deletes less than a whole batch, or `until`; returns how many rows.
async fn batches<F, Fut>(until: tokio::time::Instant, mut batch: F) -> pq_core::Result<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = pq_core::Result<u64>>,
{
    let mut total = 0;
    loop {
        let deleted = batch().await?;
        total += deleted;
        if deleted < u64::from(MAINTENANCE_BATCH) || tokio::time::Instant::now() >= until {
            return Ok(total);
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
