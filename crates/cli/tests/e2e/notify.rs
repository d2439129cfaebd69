//! systemd's notify protocol, spoken by the real service binaries to a
//! socket bound here in place of systemd: READY=1 once serving, WATCHDOG=1
//! from the working loop when WATCHDOG_USEC asks for it, STOPPING=1 on
//! SIGTERM.

use crate::support::*;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Messages received until `until` matches one (or the time is up).
fn collect(sock: &UnixDatagram, limit: Duration, until: &str) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = m == until;
            got.push(m);
            if done {
                break;
            }
        }
    }
    got
}

#[test]
fn services_report_ready_watchdog_and_stopping() {
    for program in ["orch-runner", "orch-gateway", "orch-scheduler"] {
        let o = Orch::new();
        let path = o.root().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let mut cmd = o.cmd(program);
        if program == "orch-gateway" {
            cmd.args(["--bind", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "400000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let first = collect(&sock, Duration::from_secs(20), "READY=1");
        assert_eq!(
            first.last().map(String::as_str),
            Some("READY=1"),
            "{program}: {first:?}"
        );
        // Pings keep coming (the timeout asked for is 0.4 s).
        let pings = collect(&sock, Duration::from_millis(1500), "never");
        let n = pings.iter().filter(|m| *m == "WATCHDOG=1").count();
        assert!(n >= 3, "{program}: {n} watchdog pings in 1.5 s: {pings:?}");
        sigterm(&child);
        let last = collect(&sock, Duration::from_secs(10), "STOPPING=1");
        assert!(
            last.contains(&"STOPPING=1".to_owned()),
            "{program}: {last:?}"
        );
        assert!(child.wait().unwrap().success(), "{program}");
    }
}

#[test]
fn no_watchdog_pings_for_another_process_or_without_a_socket() {
    // WATCHDOG_PID names another process, or WATCHDOG_USEC is garbage:
    // readiness yes, pings no.
    let o = Orch::new();
    for (usec, pid) in [("400000", "1"), ("lots", ""), ("-5", ""), ("0", "")] {
        let path = o.root().join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        let mut child = o
            .cmd("orch-scheduler")
            .env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", usec)
            .env("WATCHDOG_PID", pid)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let got = collect(&sock, Duration::from_secs(2), "never");
        assert!(got.contains(&"READY=1".to_owned()), "{usec}/{pid}: {got:?}");
        assert!(
            !got.contains(&"WATCHDOG=1".to_owned()),
            "{usec}/{pid}: {got:?}"
        );
        sigterm(&child);
        assert!(child.wait().unwrap().success());
    }
    // A NOTIFY_SOCKET that leads nowhere does not stop the service.
    let mut child = o
        .cmd("orch-scheduler")
        .env("NOTIFY_SOCKET", o.root().join("missing.sock"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "exited");
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}
