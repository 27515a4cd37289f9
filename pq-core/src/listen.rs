//! One LISTEN connection per [`Pq`](crate::Pq) handle, shared by every waiting consumer of the
//! process. It is not taken from the pool, so waiting never holds a pooled connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::{Notify, OnceCell};
use tokio::task::JoinHandle;

use crate::error::Result;

/// How long the listener waits before reconnecting after the connection failed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

pub(crate) struct Listener {
    channel: String,
    /// `None` behind a transaction pooler without a direct URL: nothing is heard, and waiters
    /// wake at their poll intervals.
    options: Option<PgConnectOptions>,
    waiters: Arc<Waiters>,
    task: OnceCell<JoinHandle<()>>,
}

/// Who waits on which queue: a [`Notify`] per subscription, under each of its queues. The map
/// holds them weakly, and forgets a queue once no subscription of it is left, so that a process
/// waiting on ever new queue names does not grow it without bound.
#[derive(Default)]
struct Waiters {
    queues: Mutex<Queues>,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<String, Vec<Weak<Notify>>>,
    /// The map's size after its last sweep: it is swept again once it has doubled.
    swept_at: usize,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn subscribe(&self, queues: &[&str]) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        let mut map = self.lock();
        for queue in queues {
            map.by_name
                .entry((*queue).to_owned())
                .or_default()
                .push(Arc::downgrade(&notify));
        }
        if map.by_name.len() > 2 * map.swept_at.max(16) {
            map.by_name.retain(|_, waiters| {
                waiters.retain(|w| w.strong_count() > 0);
                !waiters.is_empty()
            });
            map.swept_at = map.by_name.len();
        }
        notify
    }

    fn wake(&self, queue: &str) {
        let mut map = self.lock();
        if queue.is_empty() {
            map.by_name
                .values()
                .flatten()
                .filter_map(Weak::upgrade)
                .for_each(|n| n.notify_waiters());
            return;
        }
        let emptied = match map.by_name.get_mut(queue) {
            Some(waiters) => {
                waiters.retain(|waiter| match waiter.upgrade() {
                    Some(notify) => {
                        notify.notify_waiters();
                        true
                    }
                    None => false,
                });
                waiters.is_empty()
            }
            None => false,
        };
        if emptied {
            map.by_name.remove(queue);
        }
    }

    fn wake_all(&self) {
        self.wake("");
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_name.len()
    }
}

impl Listener {
    pub fn new(channel: String, options: Option<PgConnectOptions>) -> Self {
        Self {
            channel,
            options,
            waiters: Arc::default(),
            task: OnceCell::new(),
        }
    }

    /// A [`Notify`] woken when a job is put on any of `queues`, or when notifications may have
    /// been missed. The first call connects and LISTENs before it returns, so a job put after it
    /// returns is never missed.
    pub async fn subscribe(&self, queues: &[&str]) -> Result<Arc<Notify>> {
        let Some(options) = &self.options else {
            return Ok(self.waiters.subscribe(queues));
        };
        self.task
            .get_or_try_init(|| async {
                let listener = connect(options, &self.channel).await?;
                let waiters = Arc::downgrade(&self.waiters);
                let task = ListenTask {
                    channel: self.channel.clone(),
                    options: options.clone(),
                    waiters,
                };
                Ok::<_, crate::Error>(tokio::spawn(task.run(listener)))
            })
            .await?;
        Ok(self.waiters.subscribe(queues))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

async fn connect(options: &PgConnectOptions, channel: &str) -> Result<PgListener> {
    // A pool of one, outside the application's pool, that PgListener reconnects through.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

struct ListenTask {
    channel: String,
    options: PgConnectOptions,
    waiters: Weak<Waiters>,
}

impl ListenTask {
    async fn run(self, mut listener: PgListener) {
        loop {
            let outcome = listener.try_recv().await;
            let Some(waiters) = self.waiters.upgrade() else {
                return;
            };
            match outcome {
                Ok(Some(notification)) => waiters.wake(notification.payload()),
                // The connection dropped and was re-established: anything sent meanwhile is lost.
                Ok(None) => waiters.wake_all(),
                Err(error) => {
                    tracing::warn!(%error, "pq: lost the LISTEN connection, reconnecting");
                    waiters.wake_all();
                    drop(waiters);
                    listener = self.reconnect().await;
                    if let Some(waiters) = self.waiters.upgrade() {
                        waiters.wake_all();
                    }
                }
            }
        }
    }

    async fn reconnect(&self) -> PgListener {
        loop {
            tokio::time::sleep(RECONNECT_DELAY).await;
            match connect(&self.options, &self.channel).await {
                Ok(listener) => return listener,
                Err(error) => tracing::warn!(%error, "pq: cannot LISTEN yet, retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_no_one_waits_on_any_more_are_forgotten() {
        let waiters = Waiters::default();
        let kept = waiters.subscribe(&["kept"]);
        for n in 0..10_000 {
            drop(waiters.subscribe(&[&format!("queue {n}")]));
        }
        assert!(waiters.len() < 100, "{} queues remembered", waiters.len());
        waiters.wake("kept");
        drop(kept);
        waiters.wake("kept");
        assert!(waiters.len() < 100);
    }
}

impl crate::Pq {
    /// Notifications for `queues`: woken when a job is put on one of them, when a rescued,
    /// released or rolled-back job returns to one, or when notifications may have been lost.
    /// Take [`Subscription::notified`] before looking for jobs, so that one put in between
    /// still wakes the wait.
    pub async fn subscribe(&self, queues: &[&str]) -> Result<Subscription> {
        Ok(Subscription(
            self.listener().await?.subscribe(queues).await?,
        ))
    }
}

/// Wake-ups for some queues; see [`Pq::subscribe`](crate::Pq::subscribe).
#[derive(Debug, Clone)]
pub struct Subscription(Arc<Notify>);

impl Subscription {
    /// A future that completes at the next wake-up after it was created and enabled
    /// (`Notified::enable`) or first polled. Spurious wake-ups happen; look again after one.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.notified()
    }
}
