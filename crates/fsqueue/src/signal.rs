//! The shutdown signal every long-running orch process obeys: the first
//! SIGTERM or SIGINT resolves the future (systemd's stop, docker's stop and
//! Ctrl-C all look the same to the processes).

/// Resolves on the first SIGTERM or SIGINT. If the handlers cannot be
/// installed (never on Linux in practice), it never resolves and the process
/// falls back to the default signal disposition.
pub async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
