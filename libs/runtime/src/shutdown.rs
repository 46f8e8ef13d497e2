//! The signal that starts a graceful shutdown (factor 9).

/// Resolves on the first SIGTERM (what orchestrators send) or SIGINT (Ctrl-C).
pub async fn signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on unix");
    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    tracing::info!(signal = name, "shutdown requested");
}
