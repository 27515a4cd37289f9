//! When a worker stops: by default at the first SIGINT or SIGTERM, gracefully, and at once at
//! the second; or when the application's own future completes.

use std::future::Future;
use std::pin::Pin;

pub(crate) type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What tells a running worker to stop.
pub(crate) enum Stop {
    /// SIGINT or SIGTERM: the first asks for a graceful shutdown, the second for one at once.
    Signals(Option<Signals>),
    /// The application's future: a graceful shutdown when it completes (to stop at once, drop
    /// the worker's `run` future).
    Custom(Option<Signal>),
}

impl Stop {
    pub(crate) fn signals() -> Self {
        Stop::Signals(Signals::new())
    }

    /// Completes at the next request to stop: the first is for a graceful shutdown, the next
    /// one for an immediate one. Cancel-safe: a call dropped before it completes loses nothing.
    pub(crate) async fn next(&mut self) {
        match self {
            Stop::Signals(Some(signals)) => signals.next().await,
            Stop::Custom(slot) => match slot {
                Some(signal) => {
                    signal.as_mut().await;
                    *slot = None;
                }
                None => std::future::pending().await,
            },
            Stop::Signals(None) => std::future::pending().await,
        }
    }
}

/// The process's SIGINT and SIGTERM.
pub(crate) struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Option<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(interrupt), Ok(terminate)) => Some(Self {
                    interrupt,
                    terminate,
                }),
                _ => {
                    tracing::warn!(
                        "pq: cannot listen for signals; the worker stops only with its own signal"
                    );
                    None
                }
            }
        }
        #[cfg(not(unix))]
        {
            Some(Self {})
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => tracing::info!("pq: SIGINT"),
            _ = self.terminate.recv() => tracing::info!("pq: SIGTERM"),
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
