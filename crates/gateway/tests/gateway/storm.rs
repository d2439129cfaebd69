//! A SIGKILL storm with keyed retries: clients post deliveries with an
//! `Idempotency-Key` and retry each one until it is acknowledged, while the
//! gateway is SIGKILLed every ~300 ms and restarted on the same data.
//! Afterwards every acknowledged job id is a job file in a queue state, and
//! every key made exactly one job.
//!
//! The bounded form runs in CI; `ORCH_STORM_DELIVERIES=2000` (or more) runs
//! the long form.

use crate::support::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 8;
const KILL_EVERY: Duration = Duration::from_millis(300);

/// Posts one keyed delivery until it is acknowledged; returns the job id.
async fn deliver(addr: &Arc<Mutex<SocketAddr>>, key: &str, body: &str) -> String {
    let auth = format!("Bearer {TOKEN}");
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "delivery {key} not acknowledged within 120 s"
        );
        let at = *addr.lock().unwrap();
        let r = try_request(
            at,
            "POST",
            "/webhook",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
                ("Idempotency-Key", key),
            ],
            body.as_bytes(),
        )
        .await;
        match r {
            Ok(r) if r.status == 202 => {
                return r.json()["job_id"].as_str().unwrap().to_owned();
            }
            // Stored not yet, or cut off by the kill: the sender retries.
            Ok(r) if r.status == 503 => {}
            Ok(r) => panic!(
                "delivery {key}: unexpected {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_storm_with_keyed_retries_loses_no_acknowledged_job() {
    let total: usize = std::env::var("ORCH_STORM_DELIVERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(480)
        .max(CLIENTS);
    let env = [("WEBHOOK_RATE_LIMIT_MAX_REQUESTS", "1000000")];
    let mut gw = Gateway::start(&env, &[]);
    let addr = Arc::new(Mutex::new(gw.addr));
    let per_client = total.div_ceil(CLIENTS);
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (addr, acked) = (addr.clone(), acked.clone());
            tokio::spawn(async move {
                for i in 0..per_client {
                    let key = format!("storm-{c}-{i}");
                    let body = format!(r#"{{"goal":"storm delivery {c}/{i}"}}"#);
                    // Every answer for a key is recorded: each must name a
                    // job that exists, and all the same one.
                    let id = deliver(&addr, &key, &body).await;
                    acked.lock().unwrap().push((key.clone(), id));
                    if i % 7 == 0 {
                        let again = deliver(&addr, &key, &body).await;
                        acked.lock().unwrap().push((key, again));
                    }
                }
            })
        })
        .collect();

    // The storm: kill, restart on the same data, until every client is done.
    let mut kills = 0;
    let mut next_kill = Instant::now() + KILL_EVERY;
    while !clients.iter().all(|h| h.is_finished()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if Instant::now() < next_kill {
            continue;
        }
        gw.child.kill().expect("SIGKILL");
        let _ = gw.child.wait();
        kills += 1;
        let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
        drop(gw);
        gw = Gateway::start_in(dir, &env, &[]);
        *addr.lock().unwrap() = gw.addr;
        next_kill = Instant::now() + KILL_EVERY;
    }
    for c in clients {
        c.await.expect("client");
    }
    gw.child.kill().expect("SIGKILL");
    let _ = gw.child.wait();

    let acked = acked.lock().unwrap().clone();
    let mut by_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (k, id) in &acked {
        by_key.entry(k.clone()).or_default().insert(id.clone());
    }
    eprintln!(
        "{} acknowledgements of {} keys across {kills} SIGKILLs",
        acked.len(),
        by_key.len()
    );
    assert_eq!(by_key.len(), per_client * CLIENTS);
    let q = gw.queue();
    let mut lost = Vec::new();
    for (key, ids) in &by_key {
        assert_eq!(
            ids.len(),
            1,
            "key {key} was answered with several jobs: {ids:?}"
        );
        for id in ids {
            match q.find(id).unwrap() {
                Some(loc) => {
                    let doc: serde_json::Value =
                        serde_json::from_slice(&std::fs::read(&loc.path).unwrap()).unwrap();
                    assert_eq!(doc["job_id"], id.as_str());
                }
                None => lost.push((key.clone(), id.clone())),
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged job(s) exist in no queue state: {lost:?}",
        lost.len()
    );
    // Exactly once: one job file per key, nothing else.
    let files = q.list(fsqueue::State::Pending).unwrap();
    assert_eq!(
        files.len(),
        by_key.len(),
        "job files in pending/ against keys"
    );
    assert!(kills >= 3, "only {kills} kills: the storm did not happen");
}
