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
    options: PgConnectOptions,
    waiters: Arc<Waiters>,
    task: OnceCell<JoinHandle<()>>,
}

/// A [`Notify`] per queue name that someone waits on.
#[derive(Default)]
struct Waiters {
    queues: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Waiters {
    fn get(&self, queue: &str) -> Arc<Notify> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(queues.entry(queue.to_owned()).or_default())
    }

    fn wake(&self, queue: &str) {
        let queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.is_empty() {
            queues.values().for_each(|n| n.notify_waiters());
        } else if let Some(notify) = queues.get(queue) {
            notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        self.wake("");
    }
}

impl Listener {
    pub fn new(channel: String, options: PgConnectOptions) -> Self {
        Self {
            channel,
            options,
            waiters: Arc::default(),
            task: OnceCell::new(),
        }
    }

    /// The [`Notify`] woken when a job is put on `queue`, or when notifications may have been
    /// missed. The first call connects and LISTENs before it returns, so a job put after it
    /// returns is never missed.
    pub async fn subscribe(&self, queue: &str) -> Result<Arc<Notify>> {
        self.task
            .get_or_try_init(|| async {
                let listener = self.connect().await?;
                let waiters = Arc::downgrade(&self.waiters);
                let task = ListenTask {
                    channel: self.channel.clone(),
                    options: self.options.clone(),
                    waiters,
                };
                Ok::<_, crate::Error>(tokio::spawn(task.run(listener)))
            })
            .await?;
        Ok(self.waiters.get(queue))
    }

    async fn connect(&self) -> Result<PgListener> {
        connect(&self.options, &self.channel).await
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
