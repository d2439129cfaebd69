//! The accept loop: HTTP/1.1 on hyper, one task per connection.
//!
//! Defences against slow or greedy clients live here:
//!
//! * the loop never stops accepting (a connection left in the kernel's
//!   backlog cannot be answered, `/health` included);
//! * a cap on the connections of one client (its address; an IPv6 /64):
//!   a connection over it is closed at once, so one client that opens
//!   connections by the thousand only ever holds its share;
//! * a cap on all connections: past it, a connection goes to a small
//!   overflow lane that answers `GET /health` and `GET /metrics` only (503
//!   with `Retry-After` otherwise) with a short header timeout, so probes
//!   are answered while intake is saturated; past the lane too, the
//!   connection is closed;
//! * hyper's header read timeout (a client dribbling its headers is
//!   disconnected) and a bounded request head: a head over
//!   [`MAX_HEAD_BYTES`] gets 431;
//! * a connection that ended in a protocol error is closed gracefully
//!   (answer sent, write side shut, unread input drained for a moment), so
//!   the client reads the error answer instead of a reset.
//!
//! Body timeouts and limits are per route (`http::read_body`).
//!
//! Shutdown: when the shutdown future resolves the listener is closed (new
//! connections are refused), every connection is told to finish its
//! in-flight request and close, and the loop waits for them up to the
//! configured grace.

use crate::app::{App, handle};
use crate::http::{ApiError, Body};
use crate::ratelimit::client_key;
use hyper::body::Incoming;
use hyper::header;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Connections of the overflow lane.
const OVERFLOW_SLOTS: usize = 32;
/// Header timeout of the overflow lane (or the configured one if shorter).
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// After a protocol error: how long and how much unread input is drained
/// before the socket is closed.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Open connections per client key.
#[derive(Default)]
struct PerClient {
    open: Mutex<HashMap<String, usize>>,
}

/// One counted connection; uncounted when dropped.
struct ClientSlot {
    table: Arc<PerClient>,
    key: String,
}

impl PerClient {
    fn try_open(self: &Arc<Self>, key: String, cap: usize) -> Option<ClientSlot> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: self.clone(),
            key,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.table.open.lock()
            && let Some(n) = open.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Which lane a connection is served in.
enum Lane {
    Normal(#[allow(dead_code)] OwnedSemaphorePermit),
    Overflow(#[allow(dead_code)] OwnedSemaphorePermit),
}

fn refused(reason: &'static str) {
    metrics::counter!("orch_gateway_connections_refused_total", "reason" => reason).increment(1);
}

pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(app.cfg.max_connections));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_SLOTS));
    let per_client = Arc::new(PerClient::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while conns.try_join_next().is_some() {}
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
        // A trusted proxy carries many clients: it is not capped as one.
        let cap = if app.cfg.trusted_proxies.contains(peer.ip()) {
            usize::MAX
        } else {
            app.cfg.max_connections_per_client
        };
        let Some(client_slot) = per_client.try_open(client_key(peer.ip()), cap) else {
            refused("client_cap");
            continue;
        };
        let lane = match slots.clone().try_acquire_owned() {
            Ok(p) => Lane::Normal(p),
            Err(_) => match overflow.clone().try_acquire_owned() {
                Ok(p) => Lane::Overflow(p),
                Err(_) => {
                    refused("overflow");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        metrics::gauge!("orch_gateway_connections").increment(1.0);
        let app = app.clone();
        let stop = stop_rx.clone();
        conns.spawn(async move {
            let _slot = client_slot;
            serve_connection(app, stream, peer, lane, stop).await;
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

/// The overflow lane's answer: probes are served, the rest is told to
/// come back.
async fn overflow_handle(
    app: Arc<App>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let probe = matches!(req.uri().path(), "/health" | "/metrics")
        && (req.method() == Method::GET || req.method() == Method::HEAD);
    if probe {
        return handle(app, peer, req).await;
    }
    metrics::counter!("orch_http_requests_total", "route" => "overflow", "code" => "503")
        .increment(1);
    ApiError::unavailable("the gateway is at its connection limit; retry shortly")
        .header(header::RETRY_AFTER, "1")
        .header(header::CONNECTION, "close")
        .into_response()
}

async fn serve_connection(
    app: Arc<App>,
    mut stream: TcpStream,
    peer: SocketAddr,
    lane: Lane,
    mut stop: watch::Receiver<bool>,
) {
    let overflow = matches!(lane, Lane::Overflow(_));
    let header_timeout = if overflow {
        app.cfg.header_timeout.min(OVERFLOW_HEADER_TIMEOUT)
    } else {
        app.cfg.header_timeout
    };
    let svc = service_fn(move |req| {
        let app = app.clone();
        async move {
            Ok::<_, Infallible>(if overflow {
                overflow_handle(app, peer, req).await
            } else {
                handle(app, peer, req).await
            })
        }
    });
    let failed = {
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_header_size(MAX_HEAD_BYTES)
            .max_buf_size(MAX_HEAD_BYTES.max(8192))
            .keep_alive(!overflow)
            .serve_connection(TokioIo::new(&mut stream), svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => match r {
                Ok(()) => false,
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                    e.is_parse() || e.is_parse_too_large()
                }
            },
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
                false
            }
        }
    };
    if failed {
        linger(&mut stream).await;
    }
    drop(lane);
}

/// Closes a connection whose request was refused mid-head (431, 400)
/// without a reset: the answer is already written; shut the write side,
/// then read and drop what the client still sends, for a moment, so the
/// kernel does not answer its unread data with a reset that would destroy
/// the answer in flight.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
