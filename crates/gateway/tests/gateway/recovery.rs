//! Delivery records left by a gateway that died mid-delivery: a retry (or
//! the next gateway's start-up) finishes the dead writer's work from the
//! record, even when the crash left the job id reserved without a job file,
//! and removes the dead writer's temporary files; a record whose writer is
//! alive is never finished by someone else, however old it is.

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
    let rec = Record {
        job_id: JOB_ID.into(),
        state: "pending".into(),
        body_sha256: hex(&sha256(BODY)),
        committed: false,
        created_at: "2026-01-01T00:00:00Z".into(),
        job: Some(json!({ "job_id": JOB_ID, "goal": "interrupted delivery" })),
        owner: deliveries.owner().to_owned(),
    };
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
