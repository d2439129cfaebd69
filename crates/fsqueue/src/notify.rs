//! systemd's readiness and watchdog protocol (`sd_notify`), for units with
//! `Type=notify` and `WatchdogSec=`: a datagram to `$NOTIFY_SOCKET` with
//! `READY=1` once the service serves, `WATCHDOG=1` from its working loop,
//! `STOPPING=1` on shutdown. Outside systemd (`NOTIFY_SOCKET` unset) every
//! call is a no-op. Both path sockets and abstract ones (`@name`) are
//! supported; `WATCHDOG_PID`, when set, must be this process.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    /// `WATCHDOG_USEC`: systemd restarts the service when no ping arrives
    /// within it.
    watchdog: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
}

fn notifier() -> &'static Notifier {
    static N: OnceLock<Notifier> = OnceLock::new();
    N.get_or_init(|| {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let socket = get("NOTIFY_SOCKET").and_then(|path| match connect(&path) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(socket = path, error = %e, "NOTIFY_SOCKET is set but unusable; no readiness notifications");
                None
            }
        });
        let ours = get("WATCHDOG_PID")
            .is_none_or(|pid| pid.trim() == std::process::id().to_string());
        let watchdog = get("WATCHDOG_USEC")
            .filter(|_| ours)
            .and_then(|us| us.trim().parse::<u64>().ok())
            .filter(|us| *us > 0)
            .map(Duration::from_micros);
        Notifier {
            socket,
            watchdog,
            last_ping: Mutex::new(None),
        }
    })
}

fn connect(path: &str) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    Ok((UnixDatagram::unbound()?, addr))
}

fn send(msg: &str) {
    if let Some((sock, addr)) = &notifier().socket
        && let Err(e) = sock.send_to_addr(msg.as_bytes(), addr)
    {
        tracing::debug!(error = %e, msg, "sd_notify failed");
    }
}

/// The service is ready (listening, claiming).
pub fn ready() {
    send("READY=1");
}

/// The service is shutting down.
pub fn stopping() {
    send("STOPPING=1");
}

/// A free-form status line shown by `systemctl status`.
pub fn status(text: &str) {
    send(&format!("STATUS={}", text.replace('\n', " ")));
}

/// Half the watchdog timeout, if systemd asked for pings: how often a
/// working loop should call `watchdog`.
pub fn watchdog_interval() -> Option<Duration> {
    notifier().watchdog.map(|w| w / 2)
}

/// A watchdog ping from a working loop. Cheap to call often: at most one
/// datagram per quarter of the watchdog timeout is sent.
pub fn watchdog() {
    let n = notifier();
    let (Some(w), Some(_)) = (n.watchdog, &n.socket) else {
        return;
    };
    let mut last = n.last_ping.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_some_and(|t| t.elapsed() < w / 4) {
        return;
    }
    *last = Some(Instant::now());
    drop(last);
    send("WATCHDOG=1");
}
