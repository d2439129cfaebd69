//! I/O faults through the real binaries: a failing barrier (EIO), a failing
//! rename (ENOSPC), too many open files (EMFILE). Nothing is reported
//! durable that was not made durable — also when the renames already
//! happened and only the name barrier failed — the gateway answers 5xx for
//! a job it could not persist and takes a retry, and the runner fails the
//! attempt cleanly (or gives the job back) and keeps running. U1–U6 after
//! each.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use crate::crash::{Gateway, restart};
use crate::invariants;
use crate::support::*;

const EIO: &str = "5";
const ENOSPC: &str = "28";

/// (a) + (d): `orch submit` whose Nth barrier fails (EIO) or whose Nth
/// rename fails (ENOSPC) exits non-zero and prints no id; one of the failing
/// barriers comes after the job file was renamed into place (the name
/// barrier), and that job is not reported either.
#[test]
fn a_submit_whose_barrier_or_rename_fails_reports_nothing() {
    let mut after_rename = 0;
    let mut failed = 0;
    for (var, errno) in [
        ("ORCH_FAULT_FSYNC_FAIL", EIO),
        ("ORCH_FAULT_RENAME_FAIL", ENOSPC),
    ] {
        for n in 1..=4 {
            let o = Orch::new();
            let mut acked = BTreeSet::new();
            acked.insert(o.submit(r#"{"goal":"installed"}"#));
            let f = o.env(var, &format!("{n}:{errno}"));
            let out = f.orch(&["submit", "-"], Some(br#"{"goal":"faulty disk"}"#));
            let what = format!("submit with {var}={n}:{errno}");
            let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() {
                // The fault hit nothing of the enqueue (n beyond its ops).
                acked.insert(stdout);
            } else {
                failed += 1;
                assert!(stdout.is_empty(), "{what}: failed but printed {stdout:?}");
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    err.contains("Input/output error")
                        || err.contains("No space left")
                        || err.contains("os error"),
                    "{what}: the error is not named: {err}"
                );
                if f.names("pending").len() == 2 {
                    // The name barrier failed after the rename: the file
                    // may survive, but nobody was told it did.
                    after_rename += 1;
                }
            }
            let o = f.env(var, "");
            restart(&o, &what);
            // A retry on a healthy disk is accepted.
            acked.insert(o.submit(r#"{"goal":"retried"}"#));
            o.drain("final");
            invariants::check_finished(&o, &acked, &what);
        }
    }
    assert!(failed >= 2, "no submit failed ({failed})");
    assert!(
        after_rename >= 1,
        "no failing barrier came after the rename (case d not reached)"
    );
}

/// (b): the gateway's Nth barrier fails: a POST answers 5xx (never 2xx for
/// a job that is not durable), and the same delivery retried is accepted.
#[test]
fn a_gateway_that_cannot_persist_a_job_answers_5xx_and_takes_the_retry() {
    let mut saw_5xx = 0;
    // Start-up makes barriers of its own: the first N that lets the
    // gateway start puts the failure in the first request, and a few more
    // cover its later barriers.
    for n in 1..=40 {
        if saw_5xx >= 3 {
            break;
        }
        let o = Orch::new().env("ORCH_FAULT_FSYNC_FAIL", &format!("{n}:{EIO}"));
        let what = format!("gateway with ORCH_FAULT_FSYNC_FAIL={n}:{EIO}");
        let gw = match Gateway::try_start(o) {
            Ok(gw) => gw,
            // The fault hit start-up: the gateway refused to start.
            Err(_) => continue,
        };
        let mut acked = BTreeSet::new();
        let key = format!("delivery-{n}");
        let first = gw.post(r#"{"goal":"via a bad disk"}"#, Some(&key));
        let (code, body) = first.unwrap_or_else(|| panic!("{what}: no answer"));
        if (500..600).contains(&code) {
            saw_5xx += 1;
        } else {
            assert!((200..300).contains(&code), "{what}: HTTP {code}: {body}");
            acked.insert(job_id(&body));
        }
        let (code, body) = gw
            .post(r#"{"goal":"via a bad disk"}"#, Some(&key))
            .unwrap_or_else(|| panic!("{what}: no answer to the retry"));
        assert!(
            (200..300).contains(&code),
            "{what}: retry HTTP {code}: {body}"
        );
        acked.insert(job_id(&body));
        assert_eq!(acked.len(), 1, "{what}: one delivery, one job");
        let o = gw.stop().env("ORCH_FAULT_FSYNC_FAIL", "");
        restart(&o, &what);
        invariants::check_finished(&o, &acked, &what);
    }
    assert!(saw_5xx >= 1, "no POST met the failing barrier");
}

fn job_id(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["job_id"].as_str().unwrap().to_owned()
}

/// (c): a runner whose Nth barrier (EIO) or rename (ENOSPC) fails mid-job
/// fails that attempt cleanly or gives the job back, keeps running, and
/// runs the next jobs to success.
#[test]
fn a_runner_survives_a_failing_barrier_and_runs_the_next_jobs() {
    runner_fault_cases(&[
        ("ORCH_FAULT_FSYNC_FAIL", format!("12:{EIO}")),
        ("ORCH_FAULT_FSYNC_FAIL", format!("40:{EIO}")),
        ("ORCH_FAULT_RENAME_FAIL", format!("10:{ENOSPC}")),
    ]);
}

/// The 30th rename of this run is the unlink of a stale `raw_stderr.txt`
/// just before a step's publish. The publish fails (ENOSPC) and the runner
/// gives the job back; the state it saves on the way out must not say the
/// step finished (it did, in memory, before the publish: the resumed run
/// then skipped the step, and the job ended `success` with that step's
/// `result.json` still `running`).
#[test]
fn a_failed_step_publish_is_not_saved_as_a_succeeded_step() {
    runner_fault_cases(&[("ORCH_FAULT_RENAME_FAIL", format!("30:{ENOSPC}"))]);
}

fn runner_fault_cases(cases: &[(&str, String)]) {
    for (var, spec) in cases {
        let what = format!("runner with {var}={spec}");
        let o = Orch::new();
        let mut acked = BTreeSet::new();
        for i in 0..3 {
            acked.insert(o.submit(&format!(r#"{{"goal":"job {i}"}}"#)));
        }
        let mut r = o
            .runner(&["--id", "steady", "--concurrency", "1"])
            .env(var, spec)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let terminal = |o: &Orch, ids: &BTreeSet<String>| {
            let r = invariants::check(
                &o.queue(),
                &o.artifacts(),
                &invariants::Expect {
                    enqueued: ids,
                    acknowledged: ids,
                    all_terminal: false,
                },
            );
            ids.iter().all(|id| r.terminal().contains(id))
        };
        wait_for(
            &format!("{what}: the first jobs to end"),
            Duration::from_secs(120),
            || terminal(&o, &acked),
        );
        assert!(r.try_wait().unwrap().is_none(), "{what}: the runner died");
        // Later jobs succeed on the same runner.
        let later = o.submit(r#"{"goal":"after the fault"}"#);
        acked.insert(later.clone());
        let one: BTreeSet<String> = [later.clone()].into();
        wait_for(
            &format!("{what}: the later job"),
            Duration::from_secs(120),
            || terminal(&o, &one),
        );
        assert_eq!(o.status_json(&later)["status"], "success", "{what}");
        assert!(r.try_wait().unwrap().is_none(), "{what}: the runner died");
        sigterm(&r);
        assert!(r.wait().unwrap().success(), "{what}: runner exit");
        restart(&o, &what);
        invariants::check_finished(&o, &acked, &what);
        // A job the fault hit ended failed with a reason, or succeeded on
        // a later attempt; none is left without a result.
        for id in &acked {
            let st = o.status_json(id);
            let s = st["status"].as_str().unwrap_or("?");
            assert!(s == "success" || s == "failed", "{what}: {id}: {st:#}");
        }
    }
}

/// EMFILE: a runner with too few file descriptors either refuses to start
/// with a clear error or runs; whatever it did, a normal restart finishes
/// every acknowledged job and U1–U6 hold.
#[test]
fn a_runner_out_of_file_descriptors_fails_cleanly() {
    let prlimit = std::path::Path::new("/usr/bin/prlimit");
    if !runnable(prlimit.exists(), "prlimit (util-linux) is not installed") {
        return;
    }
    let mut refused = 0;
    for nofile in [12, 24, 40] {
        let what = format!("runner with RLIMIT_NOFILE={nofile}");
        let o = Orch::new();
        let mut acked = BTreeSet::new();
        for i in 0..3 {
            acked.insert(o.submit(&format!(r#"{{"goal":"job {i}"}}"#)));
        }
        let c = o.cmd("orch-runner");
        let runner = bin("orch-runner");
        let mut c2 = std::process::Command::new(prlimit);
        c2.arg(format!("--nofile={nofile}")).arg(&runner).args([
            "--drain",
            "--id",
            "starved",
            "--concurrency",
            "2",
        ]);
        c2.current_dir(o.root()).env_clear();
        for (k, v) in c.get_envs() {
            if let Some(v) = v {
                c2.env(k, v);
            }
        }
        let out = c2.output().unwrap();
        if !out.status.success() {
            refused += 1;
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("Too many open files") || err.contains("os error 24"),
                "{what}: failed without naming the cause: {err}"
            );
        }
        restart(&o, &what);
        invariants::check_finished(&o, &acked, &what);
    }
    assert!(refused >= 1, "no descriptor limit was low enough to matter");
}
