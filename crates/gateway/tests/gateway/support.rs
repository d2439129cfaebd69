//! Test support: starts the real `orch-gateway` binary in its own temporary
//! directory on `127.0.0.1:0`, learns the port from its `listening on` log
//! line, and talks to it with a minimal raw-TCP HTTP/1.1 client, so the
//! tests exercise exactly what a deployment runs. Waiting is always polling
//! against a deadline, never a fixed sleep.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const TOKEN: &str = "admin-token-0123456789";

/// A running gateway and its data directory.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts a gateway with `WEBHOOK_TOKEN=TOKEN` plus `env` (which may
    /// override it) and extra flags.
    pub fn start(env: &[(&str, &str)], args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, env, args)
    }

    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)], args: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orch-gateway"));
        cmd.current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("WEBHOOK_TOKEN", TOKEN)
            .env("LOG_LEVEL", "info")
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn orch-gateway");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().expect("address in log line"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "gateway did not start; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Gateway {
            child,
            addr,
            dir,
            log,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn queue(&self) -> fsqueue::Queue {
        fsqueue::Queue::open(self.path("var/queue")).expect("queue")
    }

    /// Job files in one state directory.
    pub fn count(&self, state: &str) -> usize {
        count_files(&self.path(&format!("var/queue/{state}")))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Resident memory of the gateway process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    pub fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut h: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            h.push(("Authorization", a));
        }
        request(self.addr, "GET", path, &h, b"").await
    }

    /// `POST path` with a JSON body and the admin token.
    pub async fn post_json(&self, path: &str, body: &str) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        request(
            self.addr,
            "POST",
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error.code` of an error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// One request on a fresh connection (`Connection: close`), read to EOF.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    try_request(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// `request` that reports a refused connection or a connection closed
/// without an answer (a killed server) instead of panicking.
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    // The server may answer and close before reading everything (413):
    // a write error is not a test failure, the response decides.
    let _ = s.write_all(&out).await;
    try_read_response(&mut s).await
}

/// Reads a whole response (the server closes after it, or we stop at the
/// declared length).
pub async fn read_response(s: &mut TcpStream) -> Resp {
    try_read_response(s).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn try_read_response(s: &mut TcpStream) -> Result<Resp, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(r) = parse_response(&buf)
                    && complete(&r, &buf)
                {
                    return Ok(r);
                }
            }
            Err(_) => return Err("no response within 20 s".into()),
        }
    }
    parse_response(&buf)
        .ok_or_else(|| format!("no parseable response: {:?}", String::from_utf8_lossy(&buf)))
}

fn complete(r: &Resp, _buf: &[u8]) -> bool {
    match r
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) => r.body.len() >= n,
        None => r.status == 204,
    }
}

pub fn parse_response(buf: &[u8]) -> Option<Resp> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(Resp {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    })
}

/// Polls `f` until it returns true or `limit` passes.
pub async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The GitHub signature header value of `body` under `secret`.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        gateway::crypto::hex(&gateway::crypto::hmac_sha256(secret.as_bytes(), body))
    )
}
