//! `orch health`: liveness checks small enough to be a container's
//! `HEALTHCHECK` in an image that holds nothing but orch's binaries (no curl,
//! no shell).
//!
//! - `orch health --url http://HOST:PORT[/health]` asks a gateway: one
//!   HTTP/1.1 `GET` over std TCP with `Connection: close`. Healthy means
//!   status 200 and a JSON body whose `status` is `"ok"` (the gateway answers
//!   503 when its queue is not writable or its disk is nearly full).
//! - `orch health --runner ID` checks a runner from its side of the shared
//!   queue: its heartbeat document `QUEUE_ROOT/runners/ID.json` must exist,
//!   name that runner, and be younger than the lease it announces (the
//!   runner rewrites it every third of its lease, from the same loop that
//!   renews its jobs' leases; a runner that hangs stops rewriting it).
//!
//! Everything is bounded: the URL's length, the time (`--timeout` covers
//! name resolution, connecting, sending and reading) and the answer's size.
//! The health document is printed on stdout; what went wrong on stderr.
//! Exit codes as everywhere: 0 healthy, 1 unreachable or unhealthy, 2 a bad
//! URL or runner id.

use crate::CliError;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime};

/// Longest URL accepted.
const MAX_URL: usize = 2048;
/// Largest answer read (headers and body); a health document is ~1 KiB.
const MAX_RESPONSE: usize = 256 * 1024;
/// Largest heartbeat document read.
const MAX_HEARTBEAT: u64 = 64 * 1024;

/// A parsed `http://` URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// Host name or address, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// Path and query; `/health` when the URL has none.
    pub path: String,
}

/// Parses the `--url` value. Only plain `http` is spoken: TLS ends at the
/// reverse proxy, and the check runs next to the gateway.
pub(crate) fn parse_url(url: &str) -> Result<Target, CliError> {
    let bad = |why: &str| CliError::invalid(format!("--url {}: {why}", quote(url)));
    if url.len() > MAX_URL {
        return Err(bad(&format!("longer than {MAX_URL} bytes")));
    }
    if url.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Err(bad(
            "contains spaces, control or non-ASCII characters (percent-encode them)",
        ));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("expected http://HOST[:PORT][/PATH]")
            .hint("e.g. orch health --url http://127.0.0.1:8080/health"));
    };
    if scheme.eq_ignore_ascii_case("https") {
        return Err(bad("https is not supported: TLS ends at the reverse proxy")
            .hint("point the check at the gateway's own address (GATEWAY_BIND), e.g. http://127.0.0.1:8080/health"));
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(bad(&format!(
            "unsupported scheme {scheme:?}; expected http"
        )));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(bad("user information in the URL is not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return Err(bad("unterminated [IPv6] address"));
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad(&format!("{h:?} is not an IPv6 address")));
        }
        match after {
            "" => (h, None),
            p => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return Err(bad("expected :PORT after the IPv6 address")),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && !p.starts_with('+') => n,
            _ => return Err(bad(&format!("port {p:?} is not a number from 1 to 65535"))),
        },
    };
    // The fragment never goes on the wire.
    let tail = tail.split('#').next().unwrap_or("");
    let path = match tail {
        "" | "/" => "/health".to_owned(),
        t if t.starts_with('?') => format!("/health{t}"),
        t => t.to_owned(),
    };
    Ok(Target {
        host: host.to_owned(),
        port,
        authority: authority.to_owned(),
        path,
    })
}

/// A status code and a body, read from the wire.
#[derive(Debug)]
pub(crate) struct Answer {
    pub code: u16,
    pub body: Vec<u8>,
}

/// `orch health --url`.
pub fn check_url(url: &str, timeout: Duration) -> Result<u8, CliError> {
    let target = parse_url(url)?;
    let answer = get(&target, timeout).map_err(|e| {
        CliError::failed(format!("{url}: {e}"))
            .hint("is the gateway running and listening there? (GATEWAY_BIND; `docker compose ps`)")
    })?;
    judge(url, &answer)
}

/// Healthy is 200 with `{"status": "ok", ...}`; the body is printed either
/// way so the container's health log shows which check failed.
fn judge(url: &str, a: &Answer) -> Result<u8, CliError> {
    let doc: Option<serde_json::Value> = serde_json::from_slice(&a.body).ok();
    let status = doc
        .as_ref()
        .and_then(|d| d.get("status"))
        .and_then(|s| s.as_str());
    if doc.is_some() {
        println!("{}", String::from_utf8_lossy(&a.body).trim_end());
    }
    match (a.code, status) {
        (200, Some("ok")) => Ok(0),
        (200, _) if doc.is_none() => Err(CliError::failed(format!(
            "{url}: answered 200 but not with an orch health document"
        ))
        .hint("is this URL the gateway's /health?")),
        (code, s) => Err(CliError::failed(format!(
            "{url}: unhealthy: HTTP {code}, status {}",
            s.unwrap_or("unknown")
        ))
        .hint("the `checks` list in the document says what failed")),
    }
}

/// One `GET` within `timeout`, however the server behaves.
pub(crate) fn get(t: &Target, timeout: Duration) -> Result<Answer, String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no complete answer within {}s", timeout.as_secs_f32()))
    };
    // Address literals never touch the resolver; names go through it once.
    let addrs: Vec<SocketAddr> = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {:?}: {e}", t.host))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{:?} resolves to no address", t.host));
    }
    let mut last_err = String::new();
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = format!("cannot connect to {a}: {e}"),
        }
    }
    let mut s = stream.ok_or(last_err)?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: orch-health/{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        t.path,
        t.authority,
        env!("CARGO_PKG_VERSION")
    );
    s.set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(answer) = parse_answer(&buf, false)? {
            return Ok(answer);
        }
        s.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => {
                return parse_answer(&buf, true)?
                    .ok_or_else(|| "the connection closed before a complete answer".into());
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RESPONSE {
                    return Err(format!(
                        "the answer is larger than {} KiB",
                        MAX_RESPONSE / 1024
                    ));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "no complete answer within {}s",
                    timeout.as_secs_f32()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read the answer: {e}")),
        }
    }
}

/// Parses an HTTP/1.x answer from `buf`. `Ok(None)`: not complete yet
/// (`eof` false). A body without length or chunking ends at EOF.
pub(crate) fn parse_answer(buf: &[u8], eof: bool) -> Result<Option<Answer>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if eof && !buf.is_empty() {
            Err("the answer is not HTTP (no end of headers)".into())
        } else {
            Ok(None)
        };
    };
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| "the answer's headers are not text")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut parts = status.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") {
        return Err(format!("the answer is not HTTP/1.x: {}", quote(status)));
    }
    let code: u16 = match code.parse() {
        Ok(c) if (100..=599).contains(&c) && code.len() == 3 => c,
        _ => return Err(format!("bad status line {}", quote(status))),
    };
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            return Err(format!("bad header line {}", quote(l)));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            let n: usize = v
                .parse()
                .map_err(|_| format!("bad Content-Length {}", quote(v)))?;
            if length.is_some_and(|m| m != n) {
                return Err("conflicting Content-Length headers".into());
            }
            length = Some(n);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v
                .to_ascii_lowercase()
                .split(',')
                .any(|t| t.trim() == "chunked");
        }
    }
    let rest = &buf[head_end + 4..];
    if chunked {
        return match dechunk(rest)? {
            Some(body) => Ok(Some(Answer { code, body })),
            None if eof => Err("the connection closed inside a chunked body".into()),
            None => Ok(None),
        };
    }
    match length {
        Some(n) if n > MAX_RESPONSE => Err(format!(
            "the answer announces {n} bytes, more than {} KiB",
            MAX_RESPONSE / 1024
        )),
        Some(n) if rest.len() >= n => Ok(Some(Answer {
            code,
            body: rest[..n].to_vec(),
        })),
        Some(n) if eof => Err(format!(
            "the connection closed after {} of {n} body bytes",
            rest.len()
        )),
        Some(_) => Ok(None),
        None if eof => Ok(Some(Answer {
            code,
            body: rest.to_vec(),
        })),
        None => Ok(None),
    }
}

/// Decodes a complete chunked body; `Ok(None)` while incomplete.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_line = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .ok()
            .filter(|n| *n <= MAX_RESPONSE)
            .ok_or_else(|| format!("bad chunk size {}", quote(size_line)))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            // Trailers are not expected; the body is complete.
            return Ok(Some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        if &rest[size..size + 2] != b"\r\n" {
            return Err("a chunk does not end with CRLF".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// `orch health --runner ID`: the runner's heartbeat is fresh.
pub fn check_runner(queue_root: &std::path::Path, id: &str) -> Result<u8, CliError> {
    if !fsqueue::name::is_valid_runner_id(id) {
        return Err(CliError::invalid(format!(
            "--runner {}: expected 1..64 characters of [A-Za-z0-9_-]",
            quote(id)
        )));
    }
    let path = queue_root
        .join(fsqueue::queue::RUNNERS_DIR)
        .join(format!("{id}.json"));
    let shown = path.display().to_string();
    let meta = std::fs::symlink_metadata(&path).map_err(|e| {
        CliError::failed(format!("runner {id}: no heartbeat at {shown}: {e}"))
            .hint("a runner publishes it within a second of starting; is QUEUE_ROOT the runner's?")
    })?;
    if !meta.is_file() {
        return Err(CliError::failed(format!(
            "runner {id}: {shown} is not a regular file"
        )));
    }
    let mut doc = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_HEARTBEAT).read_to_end(&mut doc))
        .map_err(|e| CliError::failed(format!("runner {id}: cannot read {shown}: {e}")))?;
    let doc: serde_json::Value = serde_json::from_slice(&doc).map_err(|e| {
        CliError::failed(format!(
            "runner {id}: {shown} is not a heartbeat document: {e}"
        ))
    })?;
    if doc.get("runner_id").and_then(|v| v.as_str()) != Some(id) {
        return Err(CliError::failed(format!(
            "runner {id}: {shown} names another runner"
        )));
    }
    // The heartbeat is rewritten every third of the lease: older than one
    // lease means the runner's working loop stalled (or it is gone).
    let lease = doc
        .get("lease_sec")
        .and_then(|v| v.as_u64())
        .unwrap_or(30)
        .clamp(1, 3600);
    let age = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or(Duration::ZERO);
    println!("{doc}");
    if age > Duration::from_secs(lease) {
        return Err(CliError::failed(format!(
            "runner {id}: last heartbeat {}s ago, more than its {lease}s lease",
            age.as_secs()
        ))
        .hint(
            "the runner is stopped or hung; its jobs go back to pending when their leases expire",
        ));
    }
    Ok(0)
}

/// A value for an error message: quoted and cut short.
fn quote(s: &str) -> String {
    let cut: String = s.chars().take(80).collect();
    if cut.len() < s.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        parse_url(url).unwrap_or_else(|e| panic!("{url}: {}", e.message))
    }

    #[test]
    fn urls_with_and_without_port_and_path() {
        let t = target("http://127.0.0.1:8080");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8080, "/health")
        );
        assert_eq!(t.authority, "127.0.0.1:8080");
        let t = target("http://gateway/health?x=1#frag");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("gateway", 80, "/health?x=1")
        );
        let t = target("HTTP://[::1]:9/");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 9, "/health")
        );
        assert_eq!(t.authority, "[::1]:9");
        assert_eq!(target("http://h:1?v").path, "/health?v");
    }

    #[test]
    fn bad_urls_are_usage_errors() {
        for url in [
            "",
            "127.0.0.1:8080",
            "https://127.0.0.1/health",
            "ftp://h/",
            "http://",
            "http://:80/",
            "http://h:0/",
            "http://h:65536/",
            "http://h:+80/",
            "http://h:99999999999999999999/",
            "http://user:pw@h/",
            "http://[::1/",
            "http://[nope]:80/",
            "http://[::1]x/",
            "http://h/he alth",
            "http://h/\r\nX-Evil: 1",
            "http://h/h\u{e9}alth",
        ] {
            let e = parse_url(url).expect_err(url);
            assert_eq!(e.code, 2, "{url}: {}", e.message);
        }
        let long = format!("http://h/{}", "a".repeat(MAX_URL));
        assert!(
            parse_url(&long)
                .unwrap_err()
                .message
                .contains("longer than")
        );
    }

    #[test]
    fn answers_by_length_chunks_and_eof() {
        let a = parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false)
            .unwrap()
            .unwrap();
        assert_eq!((a.code, a.body.as_slice()), (200, &b"ok"[..]));
        // Incomplete until the last byte arrives.
        assert!(
            parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok", false)
                .unwrap()
                .is_none()
        );
        let c = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let a = parse_answer(c, false).unwrap().unwrap();
        assert_eq!((a.code, a.body.as_slice()), (503, &b"abcde"[..]));
        assert!(parse_answer(&c[..c.len() - 7], false).unwrap().is_none());
        assert!(parse_answer(&c[..c.len() - 7], true).is_err());
        let a = parse_answer(b"HTTP/1.0 200 OK\r\n\r\nall of it", true)
            .unwrap()
            .unwrap();
        assert_eq!(a.body, b"all of it");
    }

    #[test]
    fn hostile_answers_are_errors_not_panics() {
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX0\r\n\r\n",
            b"HTTP/1.1 200 \xff\xfe\r\n\r\n",
        ] {
            assert!(
                parse_answer(bad, true).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", true).is_err());
        assert!(parse_answer(b"garbage without end", true).is_err());
    }
}
