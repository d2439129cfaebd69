//! The accept loop: HTTP/1.1 on hyper, one task per connection.
//!
//! Defences against slow or greedy clients live here: a cap on concurrent
//! connections (a semaphore: at the cap the loop stops accepting and new
//! connections wait in the kernel's backlog), hyper's header read timeout
//! (a client dribbling its headers is disconnected), and bounded header
//! buffers. Body timeouts and limits are per route (`http::read_body`).
//!
//! Shutdown: when the shutdown future resolves the listener is closed (new
//! connections are refused), every connection is told to finish its
//! in-flight request and close, and the loop waits for them up to the
//! configured grace.

use crate::app::{App, handle};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Largest request head (request line + headers) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;

pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(app.cfg.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        metrics::gauge!("orch_gateway_connections").increment(1.0);
        let app = app.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let _permit = permit;
            let header_timeout = app.cfg.header_timeout;
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(app, peer, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD_BYTES.max(8192))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            metrics::gauge!("orch_gateway_connections").decrement(1.0);
        });
    }
    drop(listener);
    tracing::info!(
        connections = conns.len(),
        "shutting down: refusing new connections, finishing in-flight requests"
    );
    let _ = stop_tx.send(true);
    let grace = app.cfg.shutdown_grace;
    if tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(
            left = conns.len(),
            "connections still open after the shutdown grace; closing them"
        );
        conns.abort_all();
    }
}
