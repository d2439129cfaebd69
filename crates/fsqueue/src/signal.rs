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
    crate::notify::stopping();
}

/// Runs a service until it returns: `service` receives the shutdown future
/// and runs on `runtime`. Exit code 0 on `Ok`, 1 (with `<program>: error:`
/// on stderr) when the runtime cannot start or the service fails.
pub fn run_service<E, Fut>(
    program: &str,
    runtime: std::io::Result<tokio::runtime::Runtime>,
    service: impl FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
) -> std::process::ExitCode
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let failed = |msg: String| {
        eprintln!("{program}: error: {msg}");
        std::process::ExitCode::from(1)
    };
    let rt = match runtime {
        Ok(rt) => rt,
        Err(e) => return failed(format!("cannot start the async runtime: {e}")),
    };
    match rt.block_on(service(Box::pin(shutdown()))) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => failed(e.to_string()),
    }
}
