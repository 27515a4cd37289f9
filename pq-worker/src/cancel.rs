//! The requests to cancel this worker's running jobs, as its last heartbeat read them, and the
//! wake-up of the runs waiting to hear of one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use foldhash::HashSet;
use pq_core::JobId;
use tokio::sync::Notify;

/// Which running jobs of this worker someone asked to cancel, and which of their runs saw it.
/// Every heartbeat replaces the requests: one stays in the table until its job ends.
#[derive(Debug, Default)]
pub(crate) struct Cancels {
    asked: Mutex<Asked>,
    /// Whether any job is asked: every run checks it as it ends, most often finding none.
    any: AtomicBool,
    changed: Notify,
}

#[derive(Debug, Default)]
struct Asked {
    ids: HashSet<JobId>,
    /// Those whose run was told (`TaskContext::cancelled` or `is_cancelled`).
    seen: HashSet<JobId>,
}

impl Cancels {
    /// The requests a heartbeat read.
    pub(crate) fn set(&self, ids: Vec<JobId>) {
        if ids.is_empty() && !self.any.load(Ordering::Acquire) {
            return;
        }
        let any = !ids.is_empty();
        {
            let mut asked = self.lock();
            asked.ids = ids.into_iter().collect();
            let Asked { ids, seen } = &mut *asked;
            seen.retain(|id| ids.contains(id));
        }
        self.any.store(any, Ordering::Release);
        if any {
            self.changed.notify_waiters();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Asked> {
        self.asked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether someone asked to cancel job `id`.
    pub(crate) fn asked(&self, id: JobId) -> bool {
        self.any.load(Ordering::Acquire) && self.lock().ids.contains(&id)
    }

    /// Whether someone asked to cancel job `id`, its run now told so.
    pub(crate) fn tell(&self, id: JobId) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let mut asked = self.lock();
        let told = asked.ids.contains(&id);
        if told {
            asked.seen.insert(id);
        }
        told
    }

    /// Whether the run of job `id` was told of its cancel.
    pub(crate) fn told(&self, id: JobId) -> bool {
        self.any.load(Ordering::Acquire) && self.lock().seen.contains(&id)
    }

    /// Resolves once someone asked to cancel job `id`, its run then told.
    pub(crate) async fn wait(&self, id: JobId) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so that a request arriving in between still wakes it.
            changed.as_mut().enable();
            if self.tell(id) {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_wait_ends_when_its_job_is_asked_and_not_for_another() {
        let cancels = Arc::new(Cancels::default());
        let waiting = tokio::spawn({
            let cancels = Arc::clone(&cancels);
            async move { cancels.wait(JobId(7)).await }
        });
        tokio::task::yield_now().await;
        cancels.set(vec![JobId(8)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "job 8's request is not job 7's");
        cancels.set(vec![JobId(8), JobId(7)]);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by its request")
            .unwrap();
        assert!(cancels.asked(JobId(7)));
        cancels.set(Vec::new());
        assert!(
            !cancels.asked(JobId(7)),
            "a heartbeat replaces the requests"
        );
    }
}
