//! Integration tests of `orch-gateway`: every test starts the real binary
//! in its own temporary directory on an ephemeral loopback port and makes
//! real HTTP requests. Covered: every status code of the API, auth scopes
//! and project limits, delivery deduplication under concurrency, 1,000
//! concurrent intakes against the durable files, body limits without
//! buffering, slow clients, GitHub signatures, path traversal, health,
//! metrics, graceful shutdown, and the OpenAPI document against the routes.
// Tests start the real orch binaries (and test peers) as processes;
// the executor ban is for production code.
#![allow(clippy::disallowed_methods)]

mod hostile;
mod promtext_props;
mod recovery;
mod storm;
mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const GH_SECRET: &str = "gh-secret-for-tests";

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_answers_every_status_code() {
    let gw = Gateway::start(
        &[
            ("WEBHOOK_TOKENS", "reader-tok=*:read,proj-tok=alpha|beta"),
            ("PROJECT_ALIASES", "alpha=/srv/alpha,beta=/srv/beta"),
            ("WEBHOOK_RATE_LIMIT_MAX_REQUESTS", "1000"),
        ],
        &[],
    );
    let a = gw.addr;
    let json_ct = ("Content-Type", "application/json");
    let admin = bearer(TOKEN);

    // 202 only after the file is durable: the file is there when we look.
    let r = gw
        .post_json("/webhook", r#"{"goal": "fix the typo"}"#)
        .await;
    assert_eq!(r.status, 202, "{:?}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    let id = body["job_id"].as_str().unwrap().to_owned();
    assert_eq!(body["status"], "queued");
    assert_eq!(body["status_url"], format!("/jobs/{id}"));
    assert_eq!(r.header("location"), Some(format!("/jobs/{id}").as_str()));
    assert_eq!(gw.count("pending"), 1);

    // requires_approval → awaiting_approval.
    let r = gw
        .post_json(
            "/webhook",
            r#"{"goal": "g", "policy": {"requires_approval": true}}"#,
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["status"], "awaiting_approval");
    assert_eq!(gw.count("awaiting_approval"), 1);

    // 401: missing, malformed, wrong token.
    let r = request(a, "POST", "/webhook", &[json_ct], b"{\"goal\":\"g\"}").await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    for auth in ["Basic abc", "Bearer wrong-token", "Bearer"] {
        let r = request(
            a,
            "POST",
            "/webhook",
            &[("Authorization", auth), json_ct],
            b"{\"goal\":\"g\"}",
        )
        .await;
        assert_eq!(r.status, 401, "{auth}");
    }
    // 403: a read-only token cannot submit; a project token only for its projects.
    let r = request(
        a,
        "POST",
        "/webhook",
        &[("Authorization", &bearer("reader-tok")), json_ct],
        b"{\"goal\":\"g\"}",
    )
    .await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
    let proj = bearer("proj-tok");
    let r = request(
        a,
        "POST",
        "/webhook",
        &[("Authorization", &proj), json_ct],
        br#"{"goal":"g","project_id":"gamma"}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = request(
        a,
        "POST",
        "/webhook",
        &[("Authorization", &proj), json_ct],
        br#"{"goal":"g"}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = request(
        a,
        "POST",
        "/webhook",
        &[("Authorization", &proj), json_ct],
        br#"{"goal":"g","project_id":"beta"}"#,
    )
    .await;
    assert_eq!(r.status, 202);

    // 415, 400, 422.
    let r = request(
        a,
        "POST",
        "/webhook",
        &[("Authorization", &admin), ("Content-Type", "text/plain")],
        b"{\"goal\":\"g\"}",
    )
    .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (415, "unsupported_media_type")
    );
    let r = request(
        a,
        "POST",
        "/webhook",
        &[("Authorization", &admin)],
        b"{\"goal\":\"g\"}",
    )
    .await;
    assert_eq!(r.status, 415);
    for bad in [
        &b"{\"goal\": "[..],
        b"[1,2]",
        b"\"str\"",
        b"",
        b"{\"a\":1,\"a\":2}",
        b"\xff\xfe",
    ] {
        let r = request(
            a,
            "POST",
            "/webhook",
            &[("Authorization", &admin), json_ct],
            bad,
        )
        .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "invalid_json"),
            "{bad:?}"
        );
    }
    let r = gw
        .post_json(
            "/webhook",
            r#"{"goal": "", "tags": "a,b", "metadata": "x", "steps": [{"step_id": "../../evil", "agent": "nope", "role": "r", "prompt": "p"}], "extra": 1}"#,
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (422, "validation_failed")
    );
    let v = r.json();
    let pointers: Vec<&str> = v["error"]["details"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["pointer"].as_str().unwrap())
        .collect();
    for p in [
        "/goal",
        "/tags",
        "/metadata",
        "/steps/0/step_id",
        "/steps/0/agent",
    ] {
        assert!(pointers.contains(&p), "{p} missing from {pointers:?}");
    }
    // A project that is not configured is a contract violation.
    let r = gw
        .post_json("/webhook", r#"{"goal":"g","project_id":"nowhere"}"#)
        .await;
    assert_eq!(r.status, 422);

    // 413 from the declared length, without reading the body.
    let big = vec![b' '; 300 * 1024];
    let r = request(
        a,
        "POST",
        "/webhook",
        &[("Authorization", &admin), json_ct],
        &big,
    )
    .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "payload_too_large")
    );

    // 409: the same Idempotency-Key with a different body.
    let key = ("Idempotency-Key", "key-409");
    let r = request(
        a,
        "POST",
        "/webhook",
        &[("Authorization", &admin), json_ct, key],
        br#"{"goal":"one"}"#,
    )
    .await;
    assert_eq!(r.status, 202);
    let r = request(
        a,
        "POST",
        "/webhook",
        &[("Authorization", &admin), json_ct, key],
        br#"{"goal":"two"}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (409, "idempotency_key_reused")
    );

    // 404 and 405; GitHub intake without a secret does not exist.
    assert_eq!(gw.get("/nope", None).await.status, 404);
    let r = gw.get("/webhook", None).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = gw.post_json("/webhook/github", "{}").await;
    assert_eq!(r.status, 404);

    // 503: the queue cannot make the job durable (its ids/ directory is
    // replaced by a file, which even root cannot write into).
    let before = gw.count("pending");
    let ids = gw.path("var/queue/ids");
    std::fs::remove_dir_all(&ids).unwrap();
    std::fs::write(&ids, b"not a directory").unwrap();
    let r = gw.post_json("/webhook", r#"{"goal":"g"}"#).await;
    assert_eq!((r.status, r.error_code().as_str()), (503, "unavailable"));
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        gw.count("pending"),
        before,
        "a 503 must not leave a job behind"
    );

    // Every intake left one audit line, and no token is in the log.
    let log = gw.log_text();
    assert!(log.matches("intake").count() >= 20, "{log}");
    for secret in [TOKEN, "reader-tok", "proj-tok"] {
        assert!(!log.contains(secret), "a token leaked into the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_per_client_and_token_with_retry_after() {
    // The test talks from 127.0.0.1, declared a trusted proxy, so
    // X-Forwarded-For names distinct clients.
    let gw = Gateway::start(
        &[
            ("WEBHOOK_RATE_LIMIT_MAX_REQUESTS", "3"),
            ("WEBHOOK_RATE_LIMIT_WINDOW_SEC", "60"),
            ("TRUSTED_PROXIES", "127.0.0.1"),
        ],
        &[],
    );
    let a = gw.addr;
    let ct = ("Content-Type", "application/json");
    let expect_429 = |r: &Resp, scope: &str| {
        assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
        let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&secs));
        assert_eq!(r.json()["error"]["details"]["limit"], scope);
    };
    // Per client: invalid tokens are throttled too (the MVP never
    // throttled them); an entry the client wrote left of the real one does
    // not make it a new client.
    let mut codes = Vec::new();
    for xff in [
        "203.0.113.1",
        "203.0.113.1",
        "6.6.6.6, 203.0.113.1",
        "7.7.7.7, 203.0.113.1",
    ] {
        let r = request(
            a,
            "POST",
            "/webhook",
            &[
                ("Authorization", "Bearer bad"),
                ct,
                ("X-Forwarded-For", xff),
            ],
            b"{}",
        )
        .await;
        codes.push(r.status);
        if r.status == 429 {
            expect_429(&r, "client");
        }
    }
    assert_eq!(codes, [401, 401, 401, 429]);
    // The exhausted client is refused on the job API too, before auth.
    let r = request(
        a,
        "GET",
        "/jobs",
        &[
            ("Authorization", &bearer(TOKEN)),
            ("X-Forwarded-For", "203.0.113.1"),
        ],
        b"",
    )
    .await;
    expect_429(&r, "client");
    // Per token: four different clients, one token.
    let mut codes = Vec::new();
    for i in 0..4 {
        let xff = format!("198.51.100.{i}");
        let r = request(
            a,
            "POST",
            "/webhook",
            &[
                ("Authorization", &bearer(TOKEN)),
                ct,
                ("X-Forwarded-For", &xff),
            ],
            br#"{"goal":"g"}"#,
        )
        .await;
        codes.push(r.status);
        if r.status == 429 {
            expect_429(&r, "token");
        }
    }
    assert_eq!(codes, [202, 202, 202, 429]);
    assert_eq!(gw.count("pending"), 3);
    // Reads with a valid token from a fresh client are not intake: served.
    let r = request(
        a,
        "GET",
        "/jobs",
        &[
            ("Authorization", &bearer(TOKEN)),
            ("X-Forwarded-For", "192.0.2.99"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_api_reads_lists_and_moves_jobs() {
    let gw = Gateway::start(
        &[
            (
                "WEBHOOK_TOKENS",
                "submit-tok=*:submit,alpha-reader=alpha:read",
            ),
            ("PROJECT_ALIASES", "alpha=/srv/alpha"),
            ("WEBHOOK_RATE_LIMIT_MAX_REQUESTS", "1000"),
        ],
        &[],
    );
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = if i % 2 == 0 {
            json!({"goal": format!("job {i}"), "tags": ["even"], "project_id": "alpha"})
        } else {
            json!({"goal": format!("job {i}"), "tags": ["odd"]})
        };
        let r = gw.post_json("/webhook", &body.to_string()).await;
        assert_eq!(r.status, 202);
        ids.push(r.json()["job_id"].as_str().unwrap().to_owned());
    }
    // GET /jobs/{id}: the queue state, no invented status.
    let r = gw.get(&format!("/jobs/{}", ids[0]), Some(TOKEN)).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["state"], "pending");
    assert_eq!(v["status"], Value::Null);
    assert_eq!(v["goal"], "job 0");
    assert_eq!(v["project_id"], "alpha");
    assert_eq!(v["job_state"], Value::Null);
    assert_eq!(v["result"], Value::Null);

    // Unknown, malformed and traversing ids are all 404; nothing outside
    // the roots is ever touched.
    for p in [
        "/jobs/0123456789abcdef0123456789abcdef",
        "/jobs/..",
        "/jobs/%2e%2e",
        "/jobs/../../etc/passwd",
        "/jobs/..%2f..%2fetc%2fpasswd",
        "/jobs/.hidden-job",
        "/jobs/short",
        "/jobs/",
        "/jobs/aaaaaaaa/../../etc",
        "/jobs/aaaaaaaa/approve/extra",
    ] {
        let r = gw.get(p, Some(TOKEN)).await;
        assert_eq!(r.status, 404, "{p}");
        assert_eq!(r.error_code(), "not_found", "{p}");
    }
    // Auth and scopes on reads.
    assert_eq!(gw.get("/jobs", None).await.status, 401);
    assert_eq!(gw.get(&format!("/jobs/{}", ids[0]), None).await.status, 401);
    assert_eq!(gw.get("/jobs", Some("submit-tok")).await.status, 403);
    // A project-limited reader sees its project only.
    assert_eq!(
        gw.get(&format!("/jobs/{}", ids[0]), Some("alpha-reader"))
            .await
            .status,
        200
    );
    assert_eq!(
        gw.get(&format!("/jobs/{}", ids[1]), Some("alpha-reader"))
            .await
            .status,
        404
    );
    let v = gw.get("/jobs", Some("alpha-reader")).await.json();
    assert_eq!(v["jobs"].as_array().unwrap().len(), 3);

    // Listing: newest first, filters, pagination.
    let v = gw.get("/jobs", Some(TOKEN)).await.json();
    let listed: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    let mut newest_first: Vec<&str> = ids.iter().map(String::as_str).collect();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    assert_eq!(count_listed(&gw, "/jobs?tag=odd").await, 2);
    assert_eq!(count_listed(&gw, "/jobs?project=alpha&tag=even").await, 3);
    assert_eq!(count_listed(&gw, "/jobs?state=done").await, 0);
    assert_eq!(
        count_listed(&gw, "/jobs?since=2999-01-01T00:00:00Z").await,
        0
    );
    assert_eq!(count_listed(&gw, "/jobs?since=0").await, 5);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/jobs?limit=2&cursor={c}"),
            None => "/jobs?limit=2".to_owned(),
        };
        let v = gw.get(&q, Some(TOKEN)).await.json();
        for j in v["jobs"].as_array().unwrap() {
            seen.push(j["job_id"].as_str().unwrap().to_owned());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);
    for bad in [
        "/jobs?state=bogus",
        "/jobs?limit=0",
        "/jobs?since=soon",
        "/jobs?what=1",
    ] {
        let r = gw.get(bad, Some(TOKEN)).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "bad_query"),
            "{bad}"
        );
    }

    // Transitions: admin only, 409 from the wrong state.
    let act = |id: &str, what: &str, tok: &str| {
        let path = format!("/jobs/{id}/{what}");
        let auth = bearer(tok);
        let addr = gw.addr;
        async move { request(addr, "POST", &path, &[("Authorization", &auth)], b"").await }
    };
    assert_eq!(act(&ids[1], "cancel", "submit-tok").await.status, 403);
    assert_eq!(act(&ids[1], "cancel", "nope").await.status, 401);
    assert_eq!(
        act("0123456789abcdef0123456789abcdef", "cancel", TOKEN)
            .await
            .status,
        404
    );
    assert_eq!(act("..", "cancel", TOKEN).await.status, 404);
    assert_eq!(
        gw.get(&format!("/jobs/{}/cancel", ids[1]), Some(TOKEN))
            .await
            .status,
        405
    );
    let r = act(&ids[1], "approve", TOKEN).await;
    assert_eq!((r.status, r.error_code().as_str()), (409, "wrong_state"));
    assert_eq!(r.json()["error"]["details"]["state"], "pending");
    let r = act(&ids[1], "cancel", TOKEN).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "failed");
    assert_eq!(act(&ids[1], "cancel", TOKEN).await.status, 409);
    let r = act(&ids[1], "retry", TOKEN).await;
    assert_eq!(
        (r.status, r.json()["state"].as_str()),
        (200, Some("pending"))
    );
    assert_eq!(act(&ids[1], "retry", TOKEN).await.status, 409);

    // approve / reject need awaiting_approval.
    let r = gw
        .post_json(
            "/webhook",
            r#"{"goal":"needs a human","policy":{"requires_approval":true}}"#,
        )
        .await;
    let held = r.json()["job_id"].as_str().unwrap().to_owned();
    let r = gw
        .post_json(
            "/webhook",
            r#"{"goal":"also","policy":{"requires_approval":true}}"#,
        )
        .await;
    let held2 = r.json()["job_id"].as_str().unwrap().to_owned();
    assert_eq!(
        act(&held, "approve", TOKEN).await.json()["state"],
        "pending"
    );
    assert_eq!(act(&held2, "reject", TOKEN).await.json()["state"], "failed");
    assert_eq!(act(&held2, "reject", TOKEN).await.status, 409);

    // Cancelling a running job asks its runner (202).
    let q = gw.queue();
    let claimer = fsqueue::Claimer::new(q.clone(), "test-runner").unwrap();
    let mut claimed = None;
    while let Some(c) = claimer.try_claim().unwrap() {
        if c.loc.entry.job_id == ids[3] {
            claimed = Some(c);
            break;
        }
    }
    let claimed = claimed.expect("could not claim the job");
    let r = act(&ids[3], "cancel", TOKEN).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["cancel_requested"], true);
    assert!(q.has_request(&claimed.loc, "cancel", false));
    let v = gw
        .get(&format!("/jobs/{}", ids[3]), Some(TOKEN))
        .await
        .json();
    assert_eq!(v["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_delivery_sent_100_times_concurrently_makes_one_job() {
    let gw = Gateway::start(&[("WEBHOOK_RATE_LIMIT_MAX_REQUESTS", "100000")], &[]);
    let addr = gw.addr;
    let auth = bearer(TOKEN);
    let send = |key: &'static str| {
        let auth = auth.clone();
        async move {
            request(
                addr,
                "POST",
                "/webhook",
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                    ("X-GitHub-Delivery", key),
                ],
                br#"{"goal":"deduplicate me"}"#,
            )
            .await
        }
    };
    let handles: Vec<_> = (0..100)
        .map(|_| tokio::spawn(send("delivery-0001")))
        .collect();
    let mut job_ids = std::collections::BTreeSet::new();
    for h in handles {
        let r = h.await.unwrap();
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        job_ids.insert(r.json()["job_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(job_ids.len(), 1, "{job_ids:?}");
    assert_eq!(gw.count("pending"), 1);
    let id = job_ids.into_iter().next().unwrap();

    // After the job left pending/, a redelivery still returns it and
    // creates nothing.
    let q = gw.queue();
    let claim = fsqueue::Claimer::new(q.clone(), "r1")
        .unwrap()
        .try_claim()
        .unwrap()
        .unwrap();
    let loc = claim.loc.clone();
    let done = loc.entry.unowned();
    q.move_to(&loc, fsqueue::State::Done, &done).unwrap();
    let r = send("delivery-0001").await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["job_id"], id.as_str());
    assert_eq!(r.json()["duplicate"], true);
    assert_eq!(gw.count("pending") + gw.count("running"), 0);
    assert_eq!(gw.count("done"), 1);
    // A different delivery is a different job.
    assert_eq!(send("delivery-0002").await.status, 202);
    assert_eq!(gw.count("pending"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_webhooks_all_durable() {
    let gw = Gateway::start(
        &[
            ("WEBHOOK_RATE_LIMIT_MAX_REQUESTS", "100000"),
            ("GATEWAY_MAX_CONNECTIONS_PER_CLIENT", "2000"),
        ],
        &[],
    );
    let addr = gw.addr;
    let handles = webhook_burst(addr, 1000, Duration::ZERO);
    let mut accepted = 0;
    let mut ids = std::collections::HashSet::new();
    for h in handles {
        let r = h.await.unwrap().unwrap();
        if r.status == 202 {
            accepted += 1;
            ids.insert(r.json()["job_id"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(r.status, 503, "only 202 or 503 are acceptable");
        }
    }
    assert_eq!(ids.len(), accepted);
    assert_eq!(gw.count("pending"), accepted, "every 202 is a durable file");
    assert!(accepted >= 990, "only {accepted} of 1000 accepted");
}

/// Streams `total` bytes of body in chunked encoding to `path`, returning
/// the response (the server answers before the client finishes).
async fn chunked_upload(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    total: usize,
) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            if wr.write_all(&frame).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    use tokio::io::AsyncReadExt;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), rd.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
            Err(_) => panic!("no answer to an oversized body"),
        }
    }
    let sent = writer.await.unwrap();
    assert!(sent < total, "the server read the whole oversized body");
    parse_response(&buf).expect("a response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_without_buffering() {
    let gw = Gateway::start(&[("GITHUB_WEBHOOK_SECRET", GH_SECRET)], &[]);
    let auth = bearer(TOKEN);
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    // /webhook: 256 KiB limit; 64 MiB streamed without a length.
    let base = gw.rss_kib();
    let r = chunked_upload(gw.addr, "/webhook", &h, 64 << 20).await;
    assert_eq!(r.status, 413);
    // GitHub route: 25 MiB limit; 200 MiB streamed.
    let r = chunked_upload(
        gw.addr,
        "/webhook/github",
        &[("Content-Type", "application/json")],
        200 << 20,
    )
    .await;
    assert_eq!(r.status, 413);
    let grown_mib = gw.rss_kib().saturating_sub(base) / 1024;
    assert!(
        grown_mib <= 50,
        "RSS grew by {grown_mib} MiB (2 × 25 MiB allowed)"
    );
    assert_eq!(gw.count("pending"), 0);
    // The gateway still serves.
    assert_eq!(gw.get("/health", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_others_are_served() {
    // One timeout from the environment, one from a flag.
    let gw = Gateway::start(
        &[("GATEWAY_HEADER_TIMEOUT_MS", "1000")],
        &["--body-timeout-ms", "1500"],
    );
    let addr = gw.addr;
    // Headers at one byte a second.
    let slow_headers = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        for b in b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n".iter() {
            if s.write_all(&[*b]).await.is_err() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!("the slow client was never cut off");
    });
    // A body at one byte a second gets 408.
    let slow_body = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /webhook HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let (mut rd, mut wr) = s.into_split();
        tokio::spawn(async move {
            for _ in 0..100 {
                if wr.write_all(b" ").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut buf = Vec::new();
        use tokio::io::AsyncReadExt;
        let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut buf)).await;
        (started.elapsed(), parse_response(&buf))
    });
    // Meanwhile everyone else is served promptly.
    for _ in 0..10 {
        let t = Instant::now();
        assert_eq!(gw.get("/health", None).await.status, 200);
        assert!(t.elapsed() < Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut = slow_headers.await.unwrap();
    assert!(cut < Duration::from_secs(5), "cut off after {cut:?}");
    let (took, resp) = slow_body.await.unwrap();
    let resp = resp.expect("a 408 response");
    assert_eq!(resp.status, 408);
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(gw.count("pending"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_signatures_and_event_mapping() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("github.json"),
        r#"{"repositories": {"octo/app": "app"}, "tags": ["github", "gh"]}"#,
    )
    .unwrap();
    let gw = Gateway::start_in(
        dir,
        &[
            ("GITHUB_WEBHOOK_SECRET", GH_SECRET),
            ("PROJECT_ALIASES", "app=/srv/app"),
        ],
        &["--github-config", "github.json"],
    );
    let a = gw.addr;
    let comment = json!({
        "action": "created",
        "repository": {"full_name": "octo/app"},
        "issue": {"number": 42, "title": "Crash", "html_url": "https://github.com/octo/app/issues/42"},
        "comment": {"id": 7, "body": "/orch fix the crash on start", "author_association": "MEMBER"},
        "sender": {"login": "octocat"}
    })
    .to_string();
    let body = comment.as_bytes();
    let sig = github_signature(GH_SECRET, body);
    let ct = ("Content-Type", "application/json");
    let ev = ("X-GitHub-Event", "issue_comment");

    // Missing, forged, malformed and wrong-secret signatures create nothing.
    let forged = github_signature("not-the-secret", body);
    let tampered_sig = github_signature(GH_SECRET, b"{}");
    for headers in [
        vec![ct, ev],
        vec![ct, ev, ("X-Hub-Signature-256", forged.as_str())],
        vec![ct, ev, ("X-Hub-Signature-256", tampered_sig.as_str())],
        vec![ct, ev, ("X-Hub-Signature-256", "sha256=zz")],
        vec![ct, ev, ("X-Hub-Signature", "sha1=0000")],
    ] {
        let r = request(a, "POST", "/webhook/github", &headers, body).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (401, "unauthorized"),
            "{headers:?}"
        );
    }
    assert_eq!(gw.count("pending"), 0);

    // ping.
    let ping = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let psig = github_signature(GH_SECRET, ping);
    let r = request(
        a,
        "POST",
        "/webhook/github",
        &[
            ct,
            ("X-GitHub-Event", "ping"),
            ("X-Hub-Signature-256", &psig),
        ],
        ping,
    )
    .await;
    assert_eq!(r.status, 200);

    // A command comment becomes a job with the event in metadata.
    let r = request(
        a,
        "POST",
        "/webhook/github",
        &[
            ct,
            ev,
            ("X-Hub-Signature-256", &sig),
            ("X-GitHub-Delivery", "d-1"),
        ],
        body,
    )
    .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["job_id"].as_str().unwrap().to_owned();
    let v = gw.get(&format!("/jobs/{id}"), Some(TOKEN)).await.json();
    assert_eq!(v["goal"], "fix the crash on start");
    assert_eq!(v["project_id"], "app");
    assert_eq!(v["tags"], json!(["github", "gh"]));
    assert_eq!(v["source"]["meta"]["delivery_id"], "d-1");
    let q = gw.queue();
    let doc: Value =
        serde_json::from_slice(&q.read(&q.find(&id).unwrap().unwrap()).unwrap()).unwrap();
    assert_eq!(doc["metadata"]["github"]["number"], 42);
    assert_eq!(doc["metadata"]["github"]["sender"], "octocat");

    // Redelivered, or replayed under another delivery id: same job, nothing new.
    for d in ["d-1", "d-2-replayed"] {
        let r = request(
            a,
            "POST",
            "/webhook/github",
            &[
                ct,
                ev,
                ("X-Hub-Signature-256", &sig),
                ("X-GitHub-Delivery", d),
            ],
            body,
        )
        .await;
        assert_eq!(r.status, 202);
        assert_eq!(r.json()["job_id"], id.as_str());
    }
    assert_eq!(gw.count("pending"), 1);

    // Unmapped events and untrusted commenters: 204, nothing created.
    let push = br#"{"ref":"refs/heads/main"}"#;
    let s = github_signature(GH_SECRET, push);
    let r = request(
        a,
        "POST",
        "/webhook/github",
        &[ct, ("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &s)],
        push,
    )
    .await;
    assert_eq!(r.status, 204);
    let stranger = comment.replace("MEMBER", "NONE");
    let s = github_signature(GH_SECRET, stranger.as_bytes());
    let r = request(
        a,
        "POST",
        "/webhook/github",
        &[ct, ev, ("X-Hub-Signature-256", &s)],
        stranger.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 204);
    // A signed form-encoded delivery is 415.
    let s = github_signature(GH_SECRET, b"payload=%7B%7D");
    let r = request(
        a,
        "POST",
        "/webhook/github",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ev,
            ("X-Hub-Signature-256", &s),
        ],
        b"payload=%7B%7D",
    )
    .await;
    assert_eq!(r.status, 415);
    assert_eq!(gw.count("pending"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_cover_the_system() {
    let gw = Gateway::start(&[], &[]);
    let q = gw.queue();
    // A live runner with a heartbeat, and two runners' metrics files.
    let lock = fsqueue::RunnerLock::acquire(&q, "runner-a").unwrap();
    lock.write_heartbeat(br#"{"runner_id":"runner-a","running":[]}"#)
        .unwrap();
    let mdir = gw.path("var/metrics");
    std::fs::create_dir_all(&mdir).unwrap();
    let runner_prom = "# HELP orch_jobs_claimed_total Jobs claimed.\n# TYPE orch_jobs_claimed_total counter\norch_jobs_claimed_total 3\n";
    std::fs::write(mdir.join("runner-a.prom"), runner_prom).unwrap();
    std::fs::write(mdir.join("runner-b.prom"), runner_prom).unwrap();
    assert_eq!(
        gw.post_json("/webhook", r#"{"goal":"g"}"#).await.status,
        202
    );

    let ok = eventually(Duration::from_secs(5), async || {
        let v = gw.get("/health", None).await.json();
        v["queue"]["pending"] == 1 && v["runners"]["alive"] == 1
    })
    .await;
    assert!(ok, "health never showed the job and the runner");
    let r = gw.get("/health", None).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["queue_writable"], true);
    assert!(v["disk"]["free_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        v["runners"]["list"][0]["heartbeat"]["runner_id"],
        "runner-a"
    );
    assert!(v["budget"].is_object());

    let r = gw.get("/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(r.body).unwrap();
    for needle in [
        "orch_queue_depth{state=\"pending\"} 1",
        "orch_runner_up{runner=\"runner-a\"} 1",
        "orch_jobs_claimed_total{process=\"runner-a\"} 3",
        "orch_jobs_claimed_total{process=\"runner-b\"} 3",
        "orch_webhook_requests_total{route=\"webhook\",code=\"202\"} 1",
        "orch_webhook_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    // The pending job has waited a moment: the oldest-pending gauge says so.
    let age: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("orch_queue_oldest_pending_age_seconds "))
        .unwrap_or_else(|| panic!("no oldest pending age in:\n{text}"))
        .parse()
        .unwrap();
    assert!(age > 0.0 && age < 3600.0, "oldest pending age {age}");
    // One TYPE line per family, however many files carry it.
    let mut types = std::collections::HashSet::new();
    for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert!(
            types.insert(l.split(' ').nth(2).unwrap().to_owned()),
            "{l} twice"
        );
    }

    // An unwritable queue makes /health 503 (the probe target replaced by
    // a non-empty directory, which a rename cannot replace, even as root).
    let probe = gw.path("var/queue/.gateway-probe");
    let _ = std::fs::remove_file(&probe);
    std::fs::create_dir_all(probe.join("blocker")).unwrap();
    let ok = eventually(Duration::from_secs(5), async || {
        gw.get("/health", None).await.status == 503
    })
    .await;
    assert!(ok, "health stayed 200 with an unwritable queue");
    let v = gw.get("/health", None).await.json();
    assert_eq!(v["status"], "unavailable");
    assert_eq!(v["queue_writable"], false);
    drop(lock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let mut gw = Gateway::start(&[], &[]);
    let addr = gw.addr;
    let body = br#"{"goal":"in flight during shutdown"}"#;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..5]).await.unwrap();
    // Make sure the request is being served before the signal.
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.sigterm();
    let refused = eventually(Duration::from_secs(5), async || {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(refused, "new connections still accepted after SIGTERM");
    s.write_all(&body[5..]).await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 202, "the in-flight request was not finished");
    let st = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(10))).expect("exit");
    assert!(st.success(), "{st:?}");
    assert_eq!(gw.count("pending"), 1);
    // The log is read by another thread: its last line may come after the exit.
    let stopped = eventually(Duration::from_secs(5), async || {
        gw.log_text().contains("gateway stopped")
    })
    .await;
    assert!(stopped, "no `gateway stopped` in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_token_warning_only_outside_orch_dev() {
    let gw = Gateway::start(&[("WEBHOOK_TOKEN", "dev-token")], &[]);
    let ok = eventually(Duration::from_secs(5), async || {
        gw.log_text().contains("dev-token")
    })
    .await;
    assert!(ok, "no dev-token warning");
    let quiet = Gateway::start(&[("WEBHOOK_TOKEN", "dev-token"), ("ORCH_DEV", "1")], &[]);
    assert_eq!(quiet.get("/health", None).await.status, 200);
    assert!(
        !quiet.log_text().contains("dev-token"),
        "{}",
        quiet.log_text()
    );
    // Invalid configuration is a start-up error naming the variable.
    for (var, val) in [
        ("WEBHOOK_RATE_LIMIT_MAX_REQUESTS", "lots"),
        ("GATEWAY_HEADER_TIMEOUT_MS", "10"),
        ("GATEWAY_BODY_TIMEOUT_MS", "99999999999999999999999"),
        ("GATEWAY_MAX_CONNECTIONS", "0"),
        ("FSYNC_MODE", "sometimes"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_orch-gateway"))
            .env_clear()
            .env(var, val)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={val}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(var),
            "{var}={val}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orch-gateway"))
        .env_clear()
        .env("WEBHOOK_TOKENS", "super-secret-value")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("super-secret-value"));
}

/// The OpenAPI document and docs/API.md describe exactly the routes the
/// server has: every documented operation exists on the live server, and
/// every other method on a documented path is 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_routes() {
    let spec: Value = serde_json::from_str(include_str!("../../openapi.json")).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (p, ops) in paths {
        for m in ops.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch", "head"].contains(&m.as_str()) {
                documented.push((m.to_uppercase(), p.clone()));
            }
        }
    }
    documented.sort();
    let expected: Vec<(String, String)> = [
        ("GET", "/health"),
        ("GET", "/jobs"),
        ("GET", "/jobs/{id}"),
        ("GET", "/metrics"),
        ("GET", "/schedules"),
        ("POST", "/jobs/{id}/approve"),
        ("POST", "/jobs/{id}/cancel"),
        ("POST", "/jobs/{id}/reject"),
        ("POST", "/jobs/{id}/retry"),
        ("POST", "/webhook"),
        ("POST", "/webhook/github"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(documented, expected);

    let api_md =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/API.md")).unwrap();
    let gw = Gateway::start(&[("GITHUB_WEBHOOK_SECRET", GH_SECRET)], &[]);
    let id = "0123456789abcdef0123456789abcdef";
    for (m, p) in &documented {
        assert!(
            api_md.contains(&format!("{m} {p}")),
            "docs/API.md lacks `{m} {p}`"
        );
        let path = p.replace("{id}", id);
        let auth = bearer(TOKEN);
        let r = request(
            gw.addr,
            m,
            &path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            b"{}",
        )
        .await;
        // The route exists: anything but "no such route" / 405.
        let is_route_404 = r.status == 404 && r.json()["error"]["message"] == "no such route";
        assert!(!is_route_404 && r.status != 405, "{m} {p} → {}", r.status);
        // Every status the server answered is documented for the operation.
        let op = &paths[p.as_str()][m.to_lowercase().as_str()];
        assert!(
            op["responses"].get(r.status.to_string()).is_some(),
            "{m} {p} answered {} which openapi.json does not document",
            r.status
        );
        for other in ["GET", "POST", "PUT", "DELETE"] {
            if other != m && !documented.contains(&(other.to_owned(), p.clone())) {
                let r = request(gw.addr, other, &path, &[("Authorization", &auth)], b"").await;
                assert_eq!(r.status, 405, "{other} {p}");
            }
        }
    }
}

/// Number of jobs `GET path` lists (first page).
async fn count_listed(gw: &Gateway, path: &str) -> usize {
    gw.get(path, Some(TOKEN)).await.json()["jobs"]
        .as_array()
        .expect("a jobs array")
        .len()
}

/// `n` concurrent `POST /webhook` requests (goal "job number <i>"), the
/// i-th started after `i × stagger`; `Err` for a request that got no answer.
fn webhook_burst(
    addr: std::net::SocketAddr,
    n: u32,
    stagger: Duration,
) -> Vec<tokio::task::JoinHandle<Result<Resp, String>>> {
    let auth = bearer(TOKEN);
    (0..n)
        .map(|i| {
            let auth = auth.clone();
            tokio::spawn(async move {
                tokio::time::sleep(stagger * i).await;
                let body = format!(r#"{{"goal":"job number {i}"}}"#);
                try_request(
                    addr,
                    "POST",
                    "/webhook",
                    &[
                        ("Authorization", &auth),
                        ("Content-Type", "application/json"),
                    ],
                    body.as_bytes(),
                )
                .await
            })
        })
        .collect()
}

/// SIGKILL in the middle of a burst: every request answered 202 has its
/// complete job file on disk (a 202 is only sent once the job is durable,
/// batched or not), nothing unreadable is visible as a job, and a restarted
/// gateway serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_accepted_job() {
    let mut gw = Gateway::start(
        &[
            ("WEBHOOK_RATE_LIMIT_MAX_REQUESTS", "100000"),
            ("GATEWAY_MAX_CONNECTIONS_PER_CLIENT", "2000"),
        ],
        &[],
    );
    let addr = gw.addr;
    // Spread over 150 ms so the kill lands in the middle of the burst.
    let handles = webhook_burst(addr, 600, Duration::from_micros(250));
    // Kill once some requests are answered (not at a fixed time: a loaded
    // machine may not have answered anything yet).
    let t0 = std::time::Instant::now();
    while handles.iter().filter(|h| h.is_finished()).count() < 20 {
        assert!(t0.elapsed() < Duration::from_secs(20), "no answers");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    gw.child.kill().expect("SIGKILL");
    let _ = gw.child.wait();
    let mut accepted = Vec::new();
    for h in handles {
        // A request cut off by the kill has no answer.
        if let Ok(r) = h.await.unwrap()
            && r.status == 202
        {
            accepted.push(r.json()["job_id"].as_str().unwrap().to_owned());
        }
    }
    eprintln!("{} of 600 accepted before the kill", accepted.len());
    assert!(!accepted.is_empty(), "the kill came before any answer");
    let q = gw.queue();
    for id in &accepted {
        let loc = q
            .find(id)
            .unwrap()
            .unwrap_or_else(|| panic!("accepted job {id} is not on disk"));
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&loc.path).unwrap()).unwrap();
        assert_eq!(doc["job_id"], id.as_str());
    }
    // Whatever else reached pending/ is complete too.
    for loc in q.list(fsqueue::State::Pending).unwrap() {
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&loc.path).unwrap()).unwrap();
        assert_eq!(doc["job_id"], loc.entry.job_id.as_str());
    }
    // A restart on the same data serves again.
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    drop(gw);
    let gw = Gateway::start_in(dir, &[], &[]);
    let r = gw
        .post_json("/webhook", r#"{"goal":"after the restart"}"#)
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
}

/// `GET /schedules` reads the schedules directory with the scheduler's own
/// checks: next fire times for good files, every problem for a bad one,
/// and a project-limited token sees only its projects' schedules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_listed_read_only_per_project() {
    let dir = tempfile::tempdir().unwrap();
    let sdir = dir.path().join("schedules");
    std::fs::create_dir_all(&sdir).unwrap();
    std::fs::write(
        sdir.join("a.json"),
        r#"{"id": "a", "schedule": "0 3 * * *", "timezone": "Asia/Kolkata", "payload": {"goal": "g", "project_id": "alpha"}}"#,
    )
    .unwrap();
    std::fs::write(
        sdir.join("g.json"),
        r#"{"id": "g", "schedule": "@hourly", "payload": {"goal": "g", "project_id": "gamma"}}"#,
    )
    .unwrap();
    std::fs::write(
        sdir.join("z.json"),
        b"{\"id\": \"z\", \"schedule\": \"* * *\"}",
    )
    .unwrap();
    let gw = Gateway::start_in(
        dir,
        &[
            ("WEBHOOK_TOKENS", "alpha-reader=alpha:read"),
            ("PROJECT_ALIASES", "alpha=/srv/alpha,gamma=/srv/gamma"),
        ],
        &[],
    );
    assert_eq!(gw.get("/schedules", None).await.status, 401);
    let r = gw.get("/schedules", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let doc = r.json();
    let list = doc["schedules"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "g", "z"]);
    let next = list[0]["next"].as_array().unwrap();
    assert_eq!(next.len(), 3);
    assert!(
        next[0].as_str().unwrap().ends_with("T03:00:00+05:30"),
        "{next:?}"
    );
    let problems: Vec<&str> = list[2]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(problems, ["/schedule", "/payload"]);
    let r = gw.get("/schedules", Some("alpha-reader")).await;
    assert_eq!(r.status, 200);
    let ids: Vec<String> = r.json()["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_report_the_budget_ledger_not_just_the_limits() {
    use artifacts::budget::{BudgetConfig, Charge, Decision, Ledger};
    // 2030-06-15T12:00:00Z, injected so the ledger's day is known.
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("now");
    std::fs::write(&clock, "1907755200").unwrap();
    let clock = clock.to_str().unwrap().to_owned();
    let gw = Gateway::start_in(
        dir,
        &[
            ("MAX_DAILY_API_CALLS", "2"),
            ("MAX_DAILY_COST_USD", "5"),
            ("ORCH_TEST_CLOCK_FILE", &clock),
        ],
        &[],
    );
    // Before any real attempt: no ledger, nothing used, and reading does
    // not create one.
    let v = gw.get("/health", None).await.json();
    assert_eq!(v["budget"]["calls"], 0, "{v:#}");
    assert_eq!(v["budget"]["ledger_present"], false);
    assert!(!gw.path("var/state.db").exists());

    // Two calls (one settled at $0.0421), then a refusal, as runners would.
    let db = gw.path("var/state.db");
    let mut cfg = BudgetConfig::resolve(&contracts::env::EnvSource::from_pairs([(
        "MAX_DAILY_API_CALLS",
        "2",
    )]))
    .unwrap();
    cfg.db_path = db.clone();
    let ledger = Ledger::open(&db).unwrap();
    let charge = Charge {
        agent: "claude",
        project: None,
        job_id: "job-00000001",
        step_id: "01_plan",
        attempt: 1,
        runner_id: "r1",
        now: 1_907_755_200,
    };
    let Decision::Granted(r) = ledger.reserve(&cfg, &charge).unwrap() else {
        panic!("refused")
    };
    ledger.settle(&r, Some(42_100)).unwrap();
    assert!(matches!(
        ledger.reserve(&cfg, &charge).unwrap(),
        Decision::Granted(_)
    ));
    assert!(matches!(
        ledger.reserve(&cfg, &charge).unwrap(),
        Decision::Refused { .. }
    ));

    let ok = eventually(Duration::from_secs(10), async || {
        gw.get("/health", None).await.json()["budget"]["calls"] == 2
    })
    .await;
    assert!(ok, "health never showed the ledger");
    let b = gw.get("/health", None).await.json()["budget"].clone();
    assert_eq!(b["day"], "2030-06-15");
    assert_eq!(b["max_calls"], 2);
    assert_eq!(b["max_cost_usd"], 5.0);
    assert_eq!(b["refused"], 1);
    assert_eq!(b["exceeded"], true);
    assert_eq!(b["ledger_present"], true);
    assert!(
        (b["cost_usd"].as_f64().unwrap() - 0.0421).abs() < 1e-9,
        "{b:#}"
    );
    // The second call is still running: its default estimate is reserved.
    assert!(
        (b["reserved_usd"].as_f64().unwrap() - 0.10).abs() < 1e-9,
        "{b:#}"
    );

    let text = String::from_utf8(gw.get("/metrics", None).await.body).unwrap();
    for needle in [
        "orch_budget_calls_total{agent=\"claude\"} 2",
        "orch_budget_spend_usd_total{agent=\"claude\"} 0.0421",
        "orch_budget_refused_total{agent=\"claude\"} 1",
        "orch_budget_day_calls 2",
        "orch_budget_limit_calls 2",
        "orch_budget_limit_usd 5",
        "orch_budget_exceeded 1",
        "orch_budget_ledger_up 1",
        "# TYPE orch_budget_calls_total counter",
        "# TYPE orch_budget_day_calls gauge",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}
