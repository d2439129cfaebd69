//! `callback_url` delivery (SPEC §5.3): when a runner ends a job (`done`,
//! `failed` — including `cancelled` — or parks it for a human with
//! `needs_human`), it POSTs the job's `result.json` to the job's
//! `callback_url`.
//!
//! - **Signed**: with `CALLBACK_SECRET` set, the header
//!   `X-Orch-Signature-256: sha256=<hex HMAC-SHA256 of the exact body>` lets
//!   the receiver check origin and integrity (GitHub's scheme). Every POST
//!   also carries `X-Orch-Job-Id`, `X-Orch-Status` and `X-Orch-Delivery`
//!   (one id for all attempts of one delivery, so a receiver can dedupe).
//! - **Never blocking, never lost**: deliveries go through the durable
//!   outbox (`outbox`), written before the job's queue move and sent in the
//!   background by any runner once the move is done, so the job is already
//!   in its final queue state, its slot free, and a runner killed with
//!   SIGKILL loses nothing.
//! - **Retried**: up to [`ATTEMPTS`] attempts in all, across restarts, each
//!   bounded by [`ATTEMPT_TIMEOUT`], with exponential backoff and jitter, on
//!   connection errors, timeouts, 5xx, 408 and 429. Other 4xx answers are
//!   final: the receiver said no.
//! - **SSRF-safe**: the host is resolved once and *every* address checked;
//!   loopback, link-local, private, CGNAT, unspecified, multicast and
//!   broadcast addresses are refused unless `CALLBACK_ALLOW_PRIVATE=1`. The
//!   connection then goes to a checked address (no second lookup that a
//!   rebinding DNS server could answer differently).
//! - **Recorded**: the outcome of the latest delivery is written to
//!   `artifacts/<job_id>/callback.json` (URL without its query string,
//!   status reported, each attempt's HTTP status or error, `delivered`),
//!   and logged with the job id.
//!
//! `http://` is spoken directly (HTTP/1.1, `Connection: close`, over a
//! tokio `TcpStream`). `https://` goes through the `curl` binary via the one
//! executor (orch links no TLS library), pinned to the checked address with
//! `--resolve`; without `curl` on `PATH` an https delivery fails with a
//! clear error in `callback.json`.

use contracts::Status;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Attempts per delivery.
pub const ATTEMPTS: u32 = 5;
/// Limit of one attempt (resolve, connect, send, read the status line).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// First backoff; doubled after every failed attempt, ±20 % jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// The response head is read up to this size; only the status matters.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// File name of the delivery record in the job's artifacts directory.
pub const CALLBACK_JSON: &str = "callback.json";

/// Settings of the callback client.
#[derive(Debug, Clone)]
pub struct Settings {
    pub secret: Option<String>,
    pub allow_private: bool,
}

/// The outcome of one POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// A 2xx answer.
    Delivered(u16),
    /// Another answer; `retry` for 5xx, 408 and 429.
    Answered { code: u16, retry: bool },
    /// No answer (or refused before sending); `retry` when worth another
    /// attempt.
    Failed { error: String, retry: bool },
}

/// One attempt to POST `body` to `url`, bounded by [`ATTEMPT_TIMEOUT`],
/// with the headers every attempt of a delivery carries (and the
/// signature, with a secret).
pub async fn post(
    settings: &Settings,
    url: &str,
    job_id: &str,
    status: Status,
    delivery: &str,
    body: &[u8],
) -> Posted {
    let target = match Target::parse(url) {
        Ok(t) => t,
        Err(error) => {
            return Posted::Failed {
                error,
                retry: false,
            };
        }
    };
    let mut headers = vec![
        ("Content-Type", "application/json".to_owned()),
        ("User-Agent", format!("orch/{}", env!("CARGO_PKG_VERSION"))),
        ("X-Orch-Job-Id", job_id.to_owned()),
        ("X-Orch-Status", status.as_str().to_owned()),
        ("X-Orch-Delivery", delivery.to_owned()),
    ];
    if let Some(secret) = &settings.secret {
        headers.push(("X-Orch-Signature-256", signature(secret.as_bytes(), body)));
    }
    let outcome = tokio::time::timeout(
        ATTEMPT_TIMEOUT,
        attempt(&target, settings.allow_private, &headers, body),
    )
    .await
    .unwrap_or_else(|_| {
        Err(Failure::Retry(format!(
            "no answer within {}s",
            ATTEMPT_TIMEOUT.as_secs()
        )))
    });
    match outcome {
        Ok(code) if (200..300).contains(&code) => Posted::Delivered(code),
        Ok(code) => Posted::Answered {
            code,
            retry: code >= 500 || code == 408 || code == 429,
        },
        Err(Failure::Final(error)) => Posted::Failed {
            error,
            retry: false,
        },
        Err(Failure::Retry(error)) => Posted::Failed { error, retry: true },
    }
}

/// The pause after failed attempt `attempt`.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_BASE.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(10) as i32);
    let h = contracts::ids::random_hex32();
    let r = u32::from_str_radix(&h[..8], 16).unwrap_or(0) as f64 / u32::MAX as f64;
    Duration::from_secs_f64(base * (0.8 + 0.4 * r))
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let hex = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(body);
            mac.finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        }
        // HMAC takes keys of any length; this arm cannot run.
        Err(_) => String::new(),
    };
    format!("sha256={hex}")
}

enum Failure {
    /// Worth another attempt (network trouble).
    Retry(String),
    /// Nothing will change on a retry (refused address, bad URL).
    Final(String),
}

/// A parsed `callback_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Host as written (brackets stripped from IPv6 literals).
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Target {
    /// Parses with the same parser as intake validation
    /// (`contracts::validate::parse_callback_url`).
    pub fn parse(url: &str) -> Result<Self, String> {
        let u = contracts::validate::parse_callback_url(url)
            .map_err(|e| format!("callback_url: {e}"))?;
        let https = u.scheme() == "https";
        let host = u.host_str().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let port = u
            .port_or_known_default()
            .unwrap_or(if https { 443 } else { 80 });
        let path = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        };
        Ok(Self {
            https,
            host,
            port,
            path,
        })
    }

    fn host_header(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }
}

/// The URL as recorded: scheme, host, port and path; credentials and the
/// query (which may carry a token) are dropped.
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        // Unparseable: only the scheme is safe to show.
        Err(_) => url.split_once("://").map_or_else(
            || "(invalid URL)".to_owned(),
            |(scheme, _)| {
                format!(
                    "{}://(invalid URL)",
                    scheme.chars().take(10).collect::<String>()
                )
            },
        ),
    }
}

/// True for addresses a callback may not reach without
/// `CALLBACK_ALLOW_PRIVATE=1`.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                // 100.64.0.0/10, carrier-grade NAT
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                // 0.0.0.0/8, "this network"
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local
                || (s[0] & 0xfe00) == 0xfc00
                // fe80::/10 link-local
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Resolves the host and checks every address.
async fn resolve(t: &Target, allow_private: bool) -> Result<Vec<SocketAddr>, Failure> {
    let addrs: Vec<SocketAddr> = match t.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, t.port)],
        Err(_) => tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(|e| Failure::Retry(format!("cannot resolve {}: {e}", t.host)))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(Failure::Retry(format!("{} has no address", t.host)));
    }
    if !allow_private && let Some(bad) = addrs.iter().find(|a| is_private(a.ip())) {
        return Err(Failure::Final(format!(
            "refused: {} resolves to {}, a loopback, link-local or private address; hint: set CALLBACK_ALLOW_PRIVATE=1 to allow it",
            t.host,
            bad.ip()
        )));
    }
    Ok(addrs)
}

/// One attempt: the HTTP status the receiver answered.
async fn attempt(
    t: &Target,
    allow_private: bool,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<u16, Failure> {
    let addrs = resolve(t, allow_private).await?;
    if t.https {
        return attempt_curl(t, addrs[0], headers, body).await;
    }
    let mut last = String::new();
    let mut stream = None;
    for a in &addrs {
        match tokio::net::TcpStream::connect(a).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    let mut stream = stream.ok_or(Failure::Retry(last))?;
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        t.path,
        t.host_header(),
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let io = |e: std::io::Error| Failure::Retry(format!("connection to {}: {e}", t.host));
    stream.write_all(req.as_bytes()).await.map_err(io)?;
    stream.write_all(body).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < MAX_RESPONSE_HEAD {
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&head).ok_or_else(|| {
        Failure::Retry(format!(
            "{} did not answer with an HTTP status line",
            t.host
        ))
    })
}

/// `HTTP/1.1 204 No Content` → 204.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    let proto = parts.next()?;
    if !proto.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// An https attempt through `curl`, pinned to the checked address.
async fn attempt_curl(
    t: &Target,
    addr: SocketAddr,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<u16, Failure> {
    let path_var = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let Some(curl) = workers::exec::find_on_path("curl", &path_var) else {
        return Err(Failure::Final(
            "https callbacks need `curl` on the runner's PATH (orch links no TLS library); hint: install curl or use an http:// receiver".into(),
        ));
    };
    let ip = match addr.ip() {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    let url = format!("https://{}{}", t.host_header(), t.path);
    let mut spec = workers::exec::ExecSpec::new(curl, std::env::temp_dir())
        .arg("--silent")
        .arg("--show-error")
        .arg("--proto")
        .arg("=https")
        .arg("--max-redirs")
        .arg("0")
        .arg("--max-time")
        .arg(ATTEMPT_TIMEOUT.as_secs().to_string())
        .arg("--resolve")
        .arg(format!("{}:{}:{ip}", t.host, t.port))
        .arg("--output")
        .arg("/dev/null")
        .arg("--write-out")
        .arg("%{http_code}")
        .arg("--data-binary")
        .arg("@-");
    for (k, v) in headers {
        spec = spec.arg("--header").arg(format!("{k}: {v}"));
    }
    spec = spec.arg("--").arg(url);
    spec.env = ["PATH", "HOME"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    spec.stdin = Some(body.to_vec());
    spec.timeout = Some(ATTEMPT_TIMEOUT + Duration::from_secs(2));
    spec.max_output_chars = 64 * 1024;
    spec.kill_grace = Duration::from_secs(1);
    let out = workers::exec::run(&spec, tokio_util::sync::CancellationToken::new())
        .await
        .map_err(|e| Failure::Final(format!("cannot run curl: {e}")))?;
    let code = String::from_utf8_lossy(&out.stdout.bytes)
        .trim()
        .parse::<u16>()
        .unwrap_or(0);
    if code == 0 {
        let err = String::from_utf8_lossy(&out.stderr.bytes);
        return Err(Failure::Retry(format!(
            "curl: {} ({})",
            err.trim(),
            out.exit
        )));
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = Target::parse("http://example.com:8080/hook?x=1#frag").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port, t.path.as_str()),
            (false, "example.com", 8080, "/hook?x=1")
        );
        let t = Target::parse("https://[::1]/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 443));
        assert_eq!(t.host_header(), "[::1]");
        let t = Target::parse("http://h").unwrap();
        assert_eq!(t.path, "/");
        assert!(Target::parse("http://user:pw@h/").is_err());
        // One parser: scheme case and host spelling as at intake.
        let t = Target::parse("HTTP://Example.com/x").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port),
            (false, "example.com", 80)
        );
        assert_eq!(Target::parse("http://0x7f.1/").unwrap().host, "127.0.0.1");
        // Nothing of the credentials reaches callback.json.
        let shown = redact_url("https://alice:s3cr3t@example.com/hook?token=t#f");
        assert_eq!(shown, "https://example.com/hook");
        assert!(Target::parse("ftp://h/").is_err());
        assert!(Target::parse("http://h:99999/").is_err());
        assert_eq!(redact_url("http://h/p?token=s"), "http://h/p");
    }

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn signature_matches_a_known_answer() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status_line(b"garbage"), None);
    }
}
