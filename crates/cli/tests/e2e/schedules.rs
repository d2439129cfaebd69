//! `orch schedules` and `orch schedules validate` over a real schedules
//! directory, with the real `orch-scheduler` firing a slot (on a fast test
//! clock) and the real `orch-runner` finishing its job, so the last result
//! shown is the job's real status.

use crate::support::*;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;

fn write(o: &Orch, name: &str, body: &[u8]) {
    let dir = o.root().join("schedules");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), body).unwrap();
}

#[test]
fn orch_schedules_shows_next_times_the_last_job_and_broken_files() {
    let o = Orch::new().env("SCHEDULES_DIR", "schedules");
    write(
        &o,
        "tick.json",
        br#"{"id": "tick", "schedule": "* * * * *", "timezone": "Europe/Berlin",
             "payload": {"goal": "tick"}}"#,
    );
    write(
        &o,
        "broken.json",
        br#"{"id": "broken", "schedule": "0 25 * * *", "catchup": "maybe", "payload": {"goal": "x"}}"#,
    );

    // Nothing fired yet: next times, no last job, the broken file's problems.
    let out = o.orch(&["schedules", "--json"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = doc["schedules"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let (broken, tick) = (&list[0], &list[1]);
    assert_eq!(tick["id"], "tick");
    assert_eq!(tick["timezone"], "Europe/Berlin");
    assert_eq!(tick["next"].as_array().unwrap().len(), 3);
    assert!(tick["last"].is_null());
    assert_eq!(broken["file"], "broken.json");
    assert_eq!(broken["id"], "broken");
    let errs: Vec<&str> = broken["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(errs, ["/schedule", "/catchup"]);

    // `validate` agrees: exit 2 listing both problems, 0 for the good one.
    let bad = o.orch(&["schedules", "validate", "schedules/broken.json"], None);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("2 problems"), "{err}");
    assert!(
        err.contains("/schedule: hour field") && err.contains("/catchup"),
        "{err}"
    );
    let good = o.orch(&["schedules", "validate", "schedules/tick.json"], None);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let missing = o.orch(&["schedules", "validate", "schedules/nope.json"], None);
    assert_eq!(missing.status.code(), Some(2));

    // A scheduler on a fast clock fires a slot; a runner finishes it.
    let clock = format!("2030-01-01T00:00:55Z,{},10", jiff::Timestamp::now());
    let mut sched = o
        .cmd("orch-scheduler")
        .env("SCHEDULER_TEST_CLOCK", &clock)
        .env("RUNNER_LEASE_SEC", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("a scheduled job", Duration::from_secs(60), || {
        !o.names("pending").is_empty()
    });
    sigterm(&sched);
    assert!(sched.wait().unwrap().success());
    let id = "cron-tick-20300101T000100Z";
    assert!(
        o.names("pending")[0].contains(id),
        "{:?}",
        o.names("pending")
    );
    o.drain("r1");
    let out = o.orch(&["schedules", "--json"], None);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = &doc["schedules"][1]["last"];
    assert_eq!(last["job_id"], id);
    assert_eq!(last["slot"], "2030-01-01T00:01:00Z");
    assert_eq!(last["outcome"], "enqueued");
    assert_eq!(last["state"], "done");
    assert_eq!(last["status"], "success");

    // The table says the same, and lists the broken file's problems.
    let out = o.orch(&["schedules"], None);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table.lines().find(|l| l.starts_with("tick ")).unwrap();
    assert!(
        row.contains("yes") && row.contains("* * * * *") && row.contains("Europe/Berlin"),
        "{table}"
    );
    assert!(row.contains(id) && row.contains("done/success"), "{table}");
    assert!(table.contains("broken.json: /catchup:"), "{table}");
}
