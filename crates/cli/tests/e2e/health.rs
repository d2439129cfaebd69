//! `orch health`, the containers' health check: against the real gateway and
//! a real runner, and against servers that misbehave (never answer, answer
//! forever, answer 503 or something that is not orch).

use crate::support::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime};

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Serves one connection with `answer` (after reading the request head),
/// on a thread; returns the URL.
fn one_shot(answer: impl FnOnce(std::net::TcpStream) + Send + 'static) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            answer(s);
        }
    });
    format!("http://{addr}/health")
}

#[test]
fn healthy_gateway_and_runner_pass_and_a_stopped_runner_fails() {
    let o = Orch::new();
    let mut gw = o
        .cmd("orch-gateway")
        .args(["--bind", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("WEBHOOK_TOKEN", "health-test-token-123")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(gw.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("gateway exited before listening")
            .unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest
                .chars()
                .take_while(|c| !c.is_whitespace())
                .collect::<String>();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    // The path defaults to /health.
    let out = o.orch(&["health", "--url", &format!("http://{addr}")], None);
    assert!(out.status.success(), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "ok", "{doc:#}");
    assert!(doc["queue"].is_object(), "{doc:#}");

    // A runner is healthy once its heartbeat is published.
    let mut r = o.spawn_runner(&["--id", "hc-1"]);
    wait_for("the runner's heartbeat", Duration::from_secs(30), || {
        o.orch(&["health", "--runner", "hc-1"], None)
            .status
            .success()
    });
    let out = o.orch(&["health", "--runner", "hc-1"], None);
    let hb: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hb["runner_id"], "hc-1");
    // The gateway sees it too (its health document is refreshed in the
    // background).
    wait_for(
        "the gateway to see the runner",
        Duration::from_secs(30),
        || {
            let out = o.orch(&["health", "--url", &format!("http://{addr}/health")], None);
            out.status.success()
                && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    .is_ok_and(|d| d["runners"]["alive"] == 1)
        },
    );

    // Killed: the heartbeat stays behind but ages past the lease.
    sigkill(&mut r);
    let hb_path = o.queue().join("runners/hc-1.json");
    std::fs::File::options()
        .write(true)
        .open(&hb_path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let out = o.orch(&["health", "--runner", "hc-1"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("more than its 30s lease"),
        "{}",
        text(&out)
    );
    // Stopped cleanly: no heartbeat at all.
    let r2 = o.spawn_runner(&["--id", "hc-2"]);
    wait_for("the second heartbeat", Duration::from_secs(30), || {
        o.queue().join("runners/hc-2.json").is_file()
    });
    sigterm(&r2);
    let out = r2.wait_with_output().unwrap();
    assert!(out.status.success());
    let out = o.orch(&["health", "--runner", "hc-2"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no heartbeat"),
        "{}",
        text(&out)
    );
    // Never existed, or not a runner id at all.
    assert_eq!(
        o.orch(&["health", "--runner", "nobody"], None)
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        o.orch(&["health", "--runner", "../x"], None).status.code(),
        Some(2)
    );
    // A heartbeat planted as a symlink is refused.
    std::os::unix::fs::symlink("/etc/passwd", o.queue().join("runners/evil.json")).unwrap();
    let out = o.orch(&["health", "--runner", "evil"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    sigterm(&gw);
    assert!(gw.wait().unwrap().success());
}

#[test]
fn unreachable_silent_endless_and_foreign_servers_fail() {
    let o = Orch::new();
    let run = |url: &str| o.orch(&["health", "--timeout", "2", "--url", url], None);

    // Nobody listens.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = run(&format!("http://127.0.0.1:{port}/health"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out)
    );

    // Accepts, never answers: the timeout ends it.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let url = one_shot(move |_s| {
        let _ = rx.recv();
    });
    let out = run(&url);
    drop(tx);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no complete answer within"),
        "{}",
        text(&out)
    );

    // Answers without end: refused past the size limit.
    let url = one_shot(|mut s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n");
        let block = vec![b'x'; 64 * 1024];
        while s.write_all(&block).is_ok() {}
    });
    let out = run(&url);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("larger than"),
        "{}",
        text(&out)
    );

    // An unhealthy gateway: 503 with its document, which is printed.
    let url = one_shot(|mut s| {
        let body = br#"{"status":"unavailable","checks":[{"check":"disk","ok":false}]}"#;
        let _ = write!(
            s,
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(body);
    });
    let out = run(&url);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"check\":\"disk\""),
        "{}",
        text(&out)
    );

    // Something that is not orch, answering 200.
    let url = one_shot(|mut s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n<html></html>");
    });
    let out = run(&url);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not with an orch health document"),
        "{}",
        text(&out)
    );

    // Bad URLs are usage errors (exit 2) that touch no network.
    for url in ["https://127.0.0.1/health", "127.0.0.1:8080", "http://h/a b"] {
        let out = o.orch(&["health", "--url", url], None);
        assert_eq!(out.status.code(), Some(2), "{url}: {}", text(&out));
    }
    let out = o.orch(&["health", "--timeout", "0"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
