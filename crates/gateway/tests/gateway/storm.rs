//! A SIGKILL storm with keyed retries: clients post deliveries with an
//! `Idempotency-Key` and retry each one until it is acknowledged, while the
//! gateway is SIGKILLed and restarted on the same data, again and again.
//! Each gateway is killed ~300 ms after it acknowledged its first delivery
//! (or once it acknowledged a tenth of them, so a fast machine sees as many
//! kills as a slow one): every kill lands in the middle of traffic, and a
//! gateway that cannot answer at all is never killed (the clients' retry
//! bound catches it).
//! Afterwards every acknowledged job id is a job file in a queue state,
//! every key made exactly one job, and every key was acknowledged within
//! the clients' retry bound (liveness: a restarted gateway answers however
//! many delivery records earlier gateways left).
//!
//! The bounded form runs in CI; `ORCH_STORM_DELIVERIES=10000` (or more)
//! runs the long form.

use crate::support::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 8;
const KILL_EVERY: Duration = Duration::from_millis(300);
/// How long a client keeps retrying one delivery.
const RETRY_BOUND: Duration = Duration::from_secs(120);

/// The gateway the clients talk to: its address and generation (one per
/// start), and the newest generation that acknowledged a delivery.
struct Target {
    at: Mutex<(SocketAddr, u64)>,
    acked_gen: AtomicU64,
    /// Acknowledgements so far, of all generations.
    acks: AtomicU64,
}

/// Posts one keyed delivery until it is acknowledged (or the retry bound
/// passes); returns the job id and how long it took.
async fn deliver(t: &Target, key: &str, body: &str) -> Result<(String, Duration), String> {
    let auth = format!("Bearer {TOKEN}");
    let started = Instant::now();
    loop {
        if started.elapsed() >= RETRY_BOUND {
            return Err(format!(
                "delivery {key} not acknowledged within {RETRY_BOUND:?}"
            ));
        }
        let (at, generation) = *t.at.lock().unwrap();
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
                t.acked_gen.fetch_max(generation, Ordering::SeqCst);
                t.acks.fetch_add(1, Ordering::SeqCst);
                let id = r.json()["job_id"].as_str().unwrap().to_owned();
                return Ok((id, started.elapsed()));
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
    let began = Instant::now();
    let mut gw = Gateway::start(&env, &[]);
    let target = Arc::new(Target {
        at: Mutex::new((gw.addr, 1)),
        acked_gen: AtomicU64::new(0),
        acks: AtomicU64::new(0),
    });
    let kill_after_acks = (total / 10).max(1) as u64;
    let per_client = total.div_ceil(CLIENTS);
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let slowest: Arc<Mutex<Duration>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (target, acked, slowest) = (target.clone(), acked.clone(), slowest.clone());
            tokio::spawn(async move {
                for i in 0..per_client {
                    let key = format!("storm-{c}-{i}");
                    let body = format!(r#"{{"goal":"storm delivery {c}/{i}"}}"#);
                    // Every answer for a key is recorded: each must name a
                    // job that exists, and all the same one.
                    let copies = if i % 7 == 0 { 2 } else { 1 };
                    for _ in 0..copies {
                        let (id, took) = deliver(&target, &key, &body).await?;
                        acked.lock().unwrap().push((key.clone(), id));
                        let mut s = slowest.lock().unwrap();
                        *s = (*s).max(took);
                    }
                }
                Ok::<(), String>(())
            })
        })
        .collect();

    // The storm: once the gateway has acknowledged a delivery, kill it a
    // moment later and restart it on the same data, until every client is
    // done.
    let mut kills = 0;
    let mut generation = 1;
    let mut next_kill: Option<Instant> = None;
    let mut acks_at_start = 0;
    // Per gateway: from its start to its first acknowledgement.
    let mut started_at = Instant::now();
    let mut first_ack: Vec<Duration> = Vec::new();
    while !clients.iter().all(|h| h.is_finished()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if next_kill.is_none() && target.acked_gen.load(Ordering::SeqCst) >= generation {
            first_ack.push(started_at.elapsed());
            next_kill = Some(Instant::now() + KILL_EVERY);
        }
        let acks = target.acks.load(Ordering::SeqCst) - acks_at_start;
        let due = next_kill.is_some_and(|t| Instant::now() >= t || acks >= kill_after_acks);
        if !due {
            continue;
        }
        gw.child.kill().expect("SIGKILL");
        let _ = gw.child.wait();
        kills += 1;
        let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
        drop(gw);
        started_at = Instant::now();
        gw = Gateway::start_in(dir, &env, &[]);
        generation += 1;
        *target.at.lock().unwrap() = (gw.addr, generation);
        acks_at_start = target.acks.load(Ordering::SeqCst);
        next_kill = None;
    }
    let mut unacknowledged = Vec::new();
    for c in clients {
        if let Err(e) = c.await.expect("client") {
            unacknowledged.push(e);
        }
    }
    gw.child.kill().expect("SIGKILL");
    let _ = gw.child.wait();
    let records = count_files(&gw.path("var/queue/deliveries"));
    // Start to first acknowledgement, in the first and the last quarter of
    // the storm: the later gateways start on far more records.
    let quarter = (first_ack.len() / 4).max(1);
    let median = |d: &[Duration]| {
        let mut d = d.to_vec();
        d.sort();
        d.get(d.len() / 2).copied().unwrap_or_default()
    };
    eprintln!(
        "storm: start to first acknowledgement, median of the first {quarter} gateways {:?}, of the last {quarter} {:?}",
        median(&first_ack[..quarter.min(first_ack.len())]),
        median(&first_ack[first_ack.len().saturating_sub(quarter)..])
    );

    let acked = acked.lock().unwrap().clone();
    let mut by_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (k, id) in &acked {
        by_key.entry(k.clone()).or_default().insert(id.clone());
    }
    eprintln!(
        "storm: {} deliveries, {} acknowledgements of {} keys, {kills} SIGKILLs, \
         {records} delivery records, slowest acknowledgement {:?}, {:?} in all",
        per_client * CLIENTS,
        acked.len(),
        by_key.len(),
        *slowest.lock().unwrap(),
        began.elapsed()
    );
    let q = gw.queue();
    // Every job file in a queue state, by id (one listing, not one lookup
    // per key).
    let mut files: BTreeMap<String, std::path::PathBuf> = BTreeMap::new();
    for st in fsqueue::State::ALL {
        for loc in q.list(st).unwrap() {
            files.insert(loc.entry.job_id.clone(), loc.path);
        }
    }
    let mut lost = Vec::new();
    for (key, ids) in &by_key {
        assert_eq!(
            ids.len(),
            1,
            "key {key} was answered with several jobs: {ids:?}"
        );
        for id in ids {
            match files.get(id) {
                Some(path) => {
                    let doc: serde_json::Value =
                        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
                    assert_eq!(doc["job_id"], id.as_str());
                }
                None => lost.push((key.clone(), id.clone())),
            }
        }
    }
    eprintln!("storm: {} acknowledged job(s) lost", lost.len());
    assert!(
        lost.is_empty(),
        "{} acknowledged job(s) exist in no queue state: {lost:?}",
        lost.len()
    );
    // Liveness: every key acknowledged within the clients' retry bound.
    assert!(
        unacknowledged.is_empty(),
        "liveness: {} client(s) gave up: {unacknowledged:?}",
        unacknowledged.len()
    );
    assert_eq!(by_key.len(), per_client * CLIENTS);
    // Exactly once: one job file per key, nothing else.
    let files = q.list(fsqueue::State::Pending).unwrap();
    assert_eq!(
        files.len(),
        by_key.len(),
        "job files in pending/ against keys"
    );
    assert!(kills >= 3, "only {kills} kills: the storm did not happen");
}
