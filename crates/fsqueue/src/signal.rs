//! The shutdown signal every long-running orch process obeys: the first
//! SIGTERM or SIGINT resolves the future (systemd's stop, docker's stop and
//! Ctrl-C all look the same to the processes).

/// Resolves on the first SIGTERM or SIGINT. If the handlers cannot be
/// installed (never on Linux in practice), it never resolves and the process
/// falls back to the default signal disposition.
pub async fn shutdown() {
    installed().await
}

/// Installs the SIGTERM and SIGINT handlers now (inside a runtime context)
/// and returns the future that resolves on the first of them: a signal
/// that arrives before the future is first polled is not lost (with a lazy
/// future, it would kill the process with the default disposition).
fn installed() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        crate::notify::stopping();
    }
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
    // Handlers first: a stop requested during start-up is obeyed.
    let stop = {
        let _ctx = rt.enter();
        installed()
    };
    match rt.block_on(service(Box::pin(stop))) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => failed(e.to_string()),
    }
}
