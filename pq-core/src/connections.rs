//! The connections pq's own statements run on: taken from the pool, and kept warm between
//! statements instead of going back to it after each one.
//!
//! sqlx checks every connection that returns to its pool with a round trip, and the pool hands
//! it out again only after that. For a statement that is itself one round trip (a put, a claim)
//! that is a second round trip, and a third with the check before acquiring that
//! [`PqBuilder`](crate::PqBuilder) turns off: a busy producer loses a quarter of its puts to
//! them (BENCHMARKS.md, #20).
//! So a connection whose statement succeeded waits here for pq's next statement, and returns to
//! the pool, checked as usual, once it has sat unused for [`IDLE`] or the pool closes. A
//! statement that failed drops its connection back to the pool at once, where sqlx's check finds
//! out whether it is still usable. A statement that never finished (it timed out, or its future
//! was dropped) closes its connection: its answer may still be on the way, and sqlx's check
//! would wait for it on a server that hangs.
//!
//! A connection is kept only while the pool has an idle connection or room for another, so
//! that no one waits on the pool while pq holds a connection back: when the pool runs out,
//! pq's connections return to it after each statement, as they would without this module, and
//! its waiters (pq's or the application's) get them in turn. So keeping pays where the pool
//! has more connections than pq's busiest moment needs, as with the default 10.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, PgConnection, PgPool, Postgres};

use crate::error::{Error, Result};

/// How long a kept connection may sit unused before it returns to the pool.
pub(crate) const IDLE: Duration = Duration::from_millis(250);

/// The pool, and the connections kept from it.
pub(crate) struct Connections {
    pool: PgPool,
    kept: Arc<Kept>,
}

#[derive(Default)]
struct Kept {
    idle: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    /// Whether a task is returning idle connections to the pool.
    sweeping: AtomicBool,
}

impl Connections {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self {
            pool,
            kept: Arc::default(),
        }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Why the pool gave no connection within `after`: every one was in use, or, when it had
    /// room for more, see [`why_no_connection`].
    pub(crate) async fn why_none(&self, what: &'static str, after: Duration) -> Error {
        let size = self.pool.options().get_max_connections();
        if self.pool.size() >= size && self.pool.num_idle() == 0 {
            return Error::PoolBusy { what, after, size };
        }
        why_no_connection(&self.pool.connect_options(), what, after).await
    }

    /// The connection used last, or one from the pool.
    pub(crate) async fn acquire(&self) -> Result<Warm<'_>> {
        let kept = self.kept.take();
        let connection = match kept {
            Some(connection) => connection,
            None => self.pool.acquire().await?,
        };
        Ok(Warm {
            connection: Some(connection),
            home: self,
            finished: false,
        })
    }
}

/// Why a pool that had room for a connection to `options` made none within `after`, which it
/// does not say (a server that refuses connections and one slow to answer both make it time
/// out): one connection of its own, for at most a second, closed at once.
pub(crate) async fn why_no_connection(
    options: &PgConnectOptions,
    what: &'static str,
    after: Duration,
) -> Error {
    let probe = async {
        let connection = options.connect().await?;
        let _ = sqlx::Connection::close(connection).await;
        Ok::<_, sqlx::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(1), probe).await {
        Ok(Err(error)) => Error::Unreachable { what, error },
        // It connects now: it was only slow.
        Ok(Ok(())) | Err(_) => Error::Timeout { what, after },
    }
}

impl Kept {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PoolConnection<Postgres>, Instant)>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self) -> Option<PoolConnection<Postgres>> {
        self.lock().pop().map(|(connection, _)| connection)
    }

    /// Keeps `connection` for the next statement, and makes sure a task will return it to the
    /// pool if none comes.
    fn keep(self: &Arc<Self>, pool: &PgPool, connection: PoolConnection<Postgres>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // No runtime to return it later: return it now.
        };
        // A pool with no idle connection and no room for another may have callers waiting:
        // the connection goes back to it, where they are served in turn. Kept, it would pass
        // them by for as long as pq keeps using it.
        let exhausted = pool.num_idle() == 0 && pool.size() >= pool.options().get_max_connections();
        if pool.is_closed() || exhausted {
            return;
        }
        self.lock().push((connection, Instant::now()));
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            runtime.spawn(sweep(Arc::downgrade(self), pool.clone()));
        }
    }
}

/// Returns kept connections to the pool once idle for [`IDLE`], or at once when it closes; ends
/// when none is kept.
async fn sweep(kept: Weak<Kept>, pool: PgPool) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(IDLE) => {}
            () = pool.close_event() => {}
        }
        let Some(kept) = kept.upgrade() else { return };
        let stale: Vec<_> = {
            let mut idle = kept.lock();
            let keep_from = if pool.is_closed() {
                idle.len()
            } else {
                // Oldest first: they were pushed in the order they were last used.
                idle.partition_point(|(_, since)| since.elapsed() >= IDLE)
            };
            idle.drain(..keep_from).collect()
        };
        drop(stale); // Back to the pool, each checked by sqlx as it goes.
        if kept.lock().is_empty() {
            kept.sweeping.store(false, Ordering::Release);
            // A connection kept after the check, before the flag fell, found the flag still
            // up and started no task: carry on for it.
            if kept.lock().is_empty() || kept.sweeping.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }
}

/// A connection of pq's, for one statement. [`keep`](Warm::keep) it once the statement
/// succeeded, or say it [`finished`](Warm::finished) with an error, and it goes back to the
/// pool; dropped without either, its statement may still be running, and it is closed.
pub(crate) struct Warm<'a> {
    connection: Option<PoolConnection<Postgres>>,
    home: &'a Connections,
    finished: bool,
}

impl Warm<'_> {
    /// The statement succeeded: the connection is ready for the next one.
    pub(crate) fn keep(mut self) {
        if let Some(connection) = self.connection.take() {
            self.home.kept.keep(&self.home.pool, connection);
        }
    }

    /// The statement failed, but its answer came: the pool may check and reuse the connection.
    pub(crate) fn finished(mut self) {
        self.finished = true;
    }
}

impl Drop for Warm<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            if !self.finished {
                // Closes the socket at once; the pool opens another when it needs one.
                drop(connection.detach());
            }
        }
    }
}

impl Deref for Warm<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.connection.as_ref().expect("taken only by keep")
    }
}

impl DerefMut for Warm<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.connection.as_mut().expect("taken only by keep")
    }
}
