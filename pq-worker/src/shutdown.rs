//! The default shutdown signal: SIGINT (Ctrl-C) or SIGTERM.

/// Completes on the first SIGINT or SIGTERM.
pub(crate) async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => tracing::info!("pq: SIGINT, shutting down"),
                    _ = terminate.recv() => tracing::info!("pq: SIGTERM, shutting down"),
                }
            }
            _ => {
                tracing::warn!(
                    "pq: cannot listen for signals; the worker stops only with its own signal"
                );
                std::future::pending::<()>().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
