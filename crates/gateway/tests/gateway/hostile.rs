//! Hostile connections: a request head of 100 KB, one client opening
//! connections by the thousand, and a gateway at its connection limit.
//! Clients are told apart by their loopback source address (127.0.0.x).

use crate::support::*;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection from `127.0.0.<host>`.
async fn connect_from(host: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0)))?;
    s.connect(to).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kb_header_gets_431() {
    let gw = Gateway::start(&[], &[]);
    let big = "a".repeat(100 * 1024);
    let auth = format!("Bearer {TOKEN}");
    let r = request(
        gw.addr,
        "POST",
        "/webhook",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("X-Big", &big),
        ],
        br#"{"goal":"never queued"}"#,
    )
    .await;
    assert_eq!(r.status, 431);
    // Many small headers adding up to the same: 431 as well.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut head = String::from("GET /health HTTP/1.1\r\nHost: x\r\n");
    for i in 0..2000 {
        head.push_str(&format!("X-H{i}: {}\r\n", "b".repeat(40)));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes()).await;
    assert_eq!(read_response(&mut s).await.status, 431);
    assert_eq!(gw.count("pending"), 0);
    assert_eq!(gw.get("/health", None).await.status, 200);
}

/// One client (127.0.0.3) keeps 1,500 slow connections coming: each sends
/// half a request head and waits; whenever one is closed, it opens another.
/// Probes from another address are answered every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_with_1500_slow_connections_does_not_take_health_down() {
    // Slow clients are cut off only after a minute: whatever answers the
    // probes meanwhile is the connection policy, not the timeout.
    let gw = Gateway::start(
        &[
            ("GATEWAY_MAX_CONNECTIONS_PER_CLIENT", "64"),
            ("GATEWAY_HEADER_TIMEOUT_MS", "60000"),
        ],
        &[],
    );
    let addr = gw.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..1500)
        .map(|_| {
            let (stop, opened) = (stop.clone(), opened.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = connect_from(3, addr).await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    opened.fetch_add(1, Ordering::Relaxed);
                    let _ = s.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\n").await;
                    // Hold it until the server closes it (or the test ends).
                    let mut buf = [0u8; 256];
                    let _ = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await;
                }
            })
        })
        .collect();
    // Let the crowd build up, then probe.
    let built = eventually(Duration::from_secs(30), async || {
        opened.load(Ordering::Relaxed) >= 1500
    })
    .await;
    assert!(
        built,
        "the attacker opened only {}",
        opened.load(Ordering::Relaxed)
    );
    let mut ok = 0;
    for _ in 0..5 {
        let mut s = connect_from(1, addr).await.expect("probe connects");
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(20), read_response(&mut s))
            .await
            .expect("/health answered within 20 s");
        if r.status == 200 {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let opened_total = opened.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
    assert_eq!(ok, 5, "/health answered {ok} of 5 probes");
    // The cap is what kept it up: the attacker's surplus connections were
    // closed and it had to reconnect.
    assert!(opened_total > 1500, "{opened_total}");
    let metrics = gw.get("/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("orch_gateway_connections_refused_total{reason=\"client_cap\"}"),
        "{text}"
    );
}

/// At the global connection limit, /health and /metrics are still answered
/// (an overflow lane), everything else gets 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_probes_are_still_answered() {
    let gw = Gateway::start(&[("GATEWAY_MAX_CONNECTIONS", "4")], &[]);
    let addr = gw.addr;
    // Four slow clients on four addresses fill every slot.
    let mut hogs = Vec::new();
    for host in 4..8 {
        let mut s = connect_from(host, addr).await.unwrap();
        s.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        hogs.push(s);
    }
    // Slots are taken in accept order: wait until the hogs are in.
    let full = eventually(Duration::from_secs(10), async || {
        let m = gw.get("/metrics", None).await;
        String::from_utf8_lossy(&m.body).contains("orch_gateway_connections 5")
    })
    .await;
    assert!(full, "the hogs did not fill the slots");
    assert_eq!(gw.get("/health", None).await.status, 200);
    let r = gw
        .post_json("/webhook", r#"{"goal":"over the limit"}"#)
        .await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").is_some());
    drop(hogs);
    // Once they are gone, intake is back.
    let back = eventually(Duration::from_secs(10), async || {
        gw.post_json("/webhook", r#"{"goal":"after the hogs"}"#)
            .await
            .status
            == 202
    })
    .await;
    assert!(back);
}

/// Inputs where openapi.json and the server disagreed: each is refused by
/// the server and outside what the document allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_and_server_agree_on_edge_inputs() {
    let spec: serde_json::Value = serde_json::from_str(include_str!("../../openapi.json")).unwrap();
    let gw = Gateway::start(&[], &[]);
    let auth = format!("Bearer {TOKEN}");
    let post = |headers: Vec<(&'static str, String)>, body: &'static str| {
        let auth = auth.clone();
        let addr = gw.addr;
        async move {
            let mut h: Vec<(&str, &str)> = vec![
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ];
            for (k, v) in &headers {
                h.push((k, v.as_str()));
            }
            request(addr, "POST", "/webhook", &h, body.as_bytes()).await
        }
    };
    // A 300-character X-GitHub-Delivery next to an Idempotency-Key: 400.
    let r = post(
        vec![
            ("Idempotency-Key", "k-1".into()),
            ("X-GitHub-Delivery", "d".repeat(300)),
        ],
        r#"{"goal":"x"}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "bad_idempotency_key");
    // An empty key: 400.
    let r = post(vec![("Idempotency-Key", String::new())], r#"{"goal":"x"}"#).await;
    assert_eq!(r.status, 400);
    // An empty goal: 422.
    let r = post(vec![], r#"{"goal":""}"#).await;
    assert_eq!(r.status, 422);
    // An empty since: 400.
    let r = gw.get("/jobs?since=", Some(TOKEN)).await;
    assert_eq!(r.status, 400);
    assert_eq!(gw.count("pending"), 0);
    // ... and the document says so.
    let params = spec["paths"]["/webhook"]["post"]["parameters"]
        .as_array()
        .unwrap();
    for p in params {
        assert_eq!(p["schema"]["minLength"], 1, "{}", p["name"]);
        assert_eq!(p["schema"]["maxLength"], 256, "{}", p["name"]);
    }
    assert_eq!(
        spec["components"]["schemas"]["Payload"]["properties"]["goal"]["minLength"],
        1
    );
    let since = spec["paths"]["/jobs"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "since")
        .unwrap();
    assert_eq!(since["schema"]["anyOf"][0]["pattern"], "^[0-9]{1,10}$");
    assert_eq!(since["schema"]["anyOf"][1]["format"], "date-time");
}
