//! Process signals → a cancellation token.

use tokio_util::sync::CancellationToken;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A token cancelled when `signal` resolves.
pub fn cancel_on(
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    token
}
