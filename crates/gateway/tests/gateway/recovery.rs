//! Delivery records left by a gateway that died mid-delivery: a retry (or
//! the next gateway's start-up) finishes the dead writer's work from the
//! record, even when the crash left the job id reserved without a job file,
//! and removes the dead writer's temporary files; a record whose writer is
//! alive is never finished by someone else, however old it is. Start-up
//! finds a dead writer's records from its index, whatever the history.

use crate::support::*;
use gateway::crypto::{hex, sha256};
use gateway::dedup::{Deliveries, Record};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, SystemTime};

const JOB_ID: &str = "0123456789abcdef0123456789abcdef";
const BODY: &[u8] = br#"{"goal":"interrupted delivery"}"#;

/// The record key of `POST /webhook` with `Idempotency-Key: key` under
/// the test token.
fn record_key(key: &str) -> String {
    let principal = format!("tok-{}", &hex(&sha256(TOKEN.as_bytes()))[..8]);
    gateway::dedup::key("webhook", &[principal.as_bytes(), key.as_bytes()])
}

/// Writes an uncommitted record of `deliveries` (its owner is the test
/// process while `deliveries` lives).
fn write_record(deliveries: &Deliveries, key: &str) {
    write_record_for(deliveries, key, JOB_ID);
}

fn uncommitted(job_id: &str, owner: &str) -> Record {
    Record {
        job_id: job_id.into(),
        state: "pending".into(),
        body_sha256: hex(&sha256(BODY)),
        committed: false,
        created_at: "2026-01-01T00:00:00Z".into(),
        job: Some(json!({ "job_id": job_id, "goal": "interrupted delivery" })),
        owner: owner.to_owned(),
    }
}

fn write_record_for(deliveries: &Deliveries, key: &str, job_id: &str) {
    let rec = uncommitted(job_id, deliveries.owner());
    assert!(deliveries.create(&record_key(key), &rec).unwrap());
}

fn age(path: &Path, by: Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - by)
        .unwrap();
}

async fn post_keyed(gw: &Gateway, key: &str) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    request(
        gw.addr,
        "POST",
        "/webhook",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", key),
        ],
        BODY,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writers_delivery_is_finished_and_its_temp_files_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("var/queue");
    let q = fsqueue::Queue::open(&root).unwrap();
    {
        let d = Deliveries::open(&root).unwrap();
        write_record(&d, "crash-1");
    } // The writer dies: its owner lock is released.
    // The crash came after the id reservation and before the job file's
    // rename: the reservation is there, the job file only as a temp file.
    std::fs::write(root.join("ids").join(JOB_ID), b"").unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let tmp = root
        .join("pending")
        .join(format!(".orch-tmp-{dead_pid}-7-5-0000-{JOB_ID}~0.0.json"));
    std::fs::write(&tmp, b"{\"torn").unwrap();
    age(&tmp, Duration::from_secs(60));
    assert!(q.find(JOB_ID).unwrap().is_none());

    let gw = Gateway::start_in(dir, &[], &[]);
    let r = post_keyed(&gw, "crash-1").await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["job_id"], JOB_ID);
    assert_eq!(r.json()["duplicate"], true);
    // 202 means the job file is in a queue state.
    let loc = gw
        .queue()
        .find(JOB_ID)
        .unwrap()
        .expect("the acknowledged job");
    assert_eq!(loc.state, fsqueue::State::Pending);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&loc.path).unwrap()).unwrap();
    assert_eq!(doc["job_id"], JOB_ID);
    assert_eq!(
        gw.get(&format!("/jobs/{JOB_ID}"), Some(TOKEN)).await.status,
        200
    );
    // The dead writer's temp file is gone (start-up sweep), and a second
    // retry changes nothing.
    let gone = eventually(Duration::from_secs(20), async || !tmp.exists()).await;
    assert!(gone, "the dead writer's temp file is still in pending/");
    assert_eq!(post_keyed(&gw, "crash-1").await.json()["job_id"], JOB_ID);
    assert_eq!(gw.count("pending"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_live_writers_old_record_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("var/queue");
    fsqueue::Queue::open(&root).unwrap();
    // A live writer (this process) that has been at it for a minute.
    let writer = Deliveries::open(&root).unwrap();
    write_record(&writer, "slow-1");
    age(
        &root
            .join("deliveries")
            .join(format!("{}.json", record_key("slow-1"))),
        Duration::from_secs(60),
    );
    let gw = Gateway::start_in(dir, &[], &[]);
    // The copy waits for the writer, then asks the sender to come back;
    // it creates nothing.
    let r = post_keyed(&gw, "slow-1").await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(gw.queue().find(JOB_ID).unwrap().is_none());
    assert_eq!(gw.count("pending"), 0);
    // The writer dies: the next copy finishes its work.
    drop(writer);
    let r = post_keyed(&gw, "slow-1").await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["job_id"], JOB_ID);
    assert!(gw.queue().find(JOB_ID).unwrap().is_some());
    assert_eq!(gw.count("pending"), 1);
}

/// The log line of a start-up recovery, once it appears.
async fn recovery_line(gw: &Gateway) -> String {
    let mut line = None;
    eventually(Duration::from_secs(30), async || {
        line = gw
            .log_text()
            .lines()
            .find(|l| l.contains("recovered the deliveries of dead gateways"))
            .map(str::to_owned);
        line.is_some()
    })
    .await;
    line.unwrap_or_else(|| panic!("no recovery logged; log:\n{}", gw.log_text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_reads_a_dead_writers_records_from_its_index_not_the_history() {
    const HISTORY: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("var/queue");
    fsqueue::Queue::open(&root).unwrap();
    // A long history: committed records of gateways long gone.
    let deliveries = root.join("deliveries");
    std::fs::create_dir_all(&deliveries).unwrap();
    for i in 0..HISTORY {
        let rec = Record {
            committed: true,
            job: None,
            ..uncommitted(&format!("{:032x}", 1_000_000 + i), "old-gateway-1-1")
        };
        let key = gateway::dedup::key("history", &[i.to_string().as_bytes()]);
        std::fs::write(
            deliveries.join(format!("{key}.json")),
            serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
    }
    // A gateway dies with three deliveries in flight.
    let ids: Vec<String> = (1..=3).map(|i| format!("{i:032x}")).collect();
    {
        let d = Deliveries::open(&root).unwrap();
        for (i, id) in ids.iter().enumerate() {
            write_record_for(&d, &format!("in-flight-{i}"), id);
        }
    }

    let gw = Gateway::start_in(dir, &[], &[]);
    // Start-up recovery reads the dead gateway's three records, not the
    // history, and finishes them with no retry asking.
    let line = recovery_line(&gw).await;
    for want in ["owners=1", "records=3", "finished=3", "left=0"] {
        assert!(line.contains(want), "{want} not in {line:?}");
    }
    let q = gw.queue();
    for id in &ids {
        let loc = q.find(id).unwrap().expect("the dead writer's job");
        assert_eq!(loc.state, fsqueue::State::Pending);
    }
    // The dead gateway is forgotten (lock file and index), the history is
    // untouched, and deliveries are answered.
    let owners: Vec<_> = std::fs::read_dir(gw.path("var/queue/deliveries/owners"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(
        owners.len(),
        2,
        "only the live gateway's lock and index: {owners:?}"
    );
    assert_eq!(count_files(&gw.path("var/queue/deliveries")), HISTORY + 3);
    let r = post_keyed(&gw, "after-start").await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    for (i, id) in ids.iter().enumerate() {
        let r = post_keyed(&gw, &format!("in-flight-{i}")).await;
        assert_eq!(r.status, 202);
        assert_eq!(r.json()["job_id"], id.as_str());
    }
    assert_eq!(gw.count("pending"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writer_of_an_older_version_without_an_index_is_found_by_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("var/queue");
    fsqueue::Queue::open(&root).unwrap();
    // What an older gateway leaves: its (free) lock file, no index, and an
    // uncommitted record naming it.
    let owners = root.join("deliveries/owners");
    std::fs::create_dir_all(&owners).unwrap();
    std::fs::write(owners.join("older-gateway-7-7.lock"), b"").unwrap();
    let rec = uncommitted(JOB_ID, "older-gateway-7-7");
    std::fs::write(
        root.join(format!("deliveries/{}.json", record_key("older-1"))),
        serde_json::to_vec(&rec).unwrap(),
    )
    .unwrap();

    let gw = Gateway::start_in(dir, &[], &[]);
    let q = gw.queue();
    let finished = eventually(Duration::from_secs(30), async || {
        q.find(JOB_ID).unwrap().is_some() && !owners.join("older-gateway-7-7.lock").exists()
    })
    .await;
    assert!(
        finished,
        "the older gateway's delivery was not finished; log:\n{}",
        gw.log_text()
    );
    let line = recovery_line(&gw).await;
    assert!(
        line.contains("owners=1") && line.contains("records=0"),
        "{line}"
    );
    let r = post_keyed(&gw, "older-1").await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["job_id"], JOB_ID);
    assert_eq!(gw.count("pending"), 1);
}
