//! Clock skew (issue 13, item 5): runners whose wall clocks are two minutes
//! ahead and two minutes behind (libfaketime) share a queue with a normal
//! one. Leases are judged by the filesystem's clock against mtimes the
//! kernel sets, never by a process's wall clock, so no healthy lease is
//! reaped early: every job runs on its first claim and finishes once.
//!
//! What this does not cover: libfaketime by default also rewrites a
//! `utimensat(UTIME_NOW)` into an explicit time from the process's fake
//! clock. Run that way (without `FAKE_UTIME=1`), each runner stamps its
//! leases with its own skewed clock, and a reaper two minutes ahead sees
//! a healthy lease as 120–240 s old and reaps it (seen: every job poisoned
//! after `RUNNER_MAX_RECLAIMS`). That models a filesystem whose clients
//! set mtimes from their own clocks; the lease design assumes the
//! filesystem's clock stamps `UTIME_NOW` (`fsqueue::lease`), as local
//! filesystems and NFS do.

use crate::invariants;
use crate::support::*;
use fsqueue::name::Entry;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A runner under libfaketime with `offset` (e.g. `+2m`), or the real
/// clock when `None`.
fn runner(o: &Orch, id: &str, offset: Option<&str>) -> Child {
    let log = std::fs::File::create(o.root().join(format!("{id}.log"))).unwrap();
    let mut c = o.runner(&["--id", id, "--concurrency", "1"]);
    if let Some(off) = offset {
        c.env("LD_PRELOAD", FAKETIME_LIB)
            .env("FAKETIME", off)
            // Leave UTIME_NOW to the kernel: by default libfaketime
            // replaces it with the process's fake clock, a filesystem
            // that stamps the client's time; local filesystems and NFS
            // (SET_TO_SERVER_TIME) stamp the server's. See the module doc.
            .env("FAKE_UTIME", "1");
    }
    c.stdout(Stdio::null()).stderr(log).spawn().unwrap()
}

fn claimed_by(o: &Orch, runner: &str) -> Option<String> {
    o.names("running")
        .iter()
        .filter_map(|n| Entry::parse(n))
        .find(|e| e.runner.as_deref() == Some(runner))
        .map(|e| e.job_id)
}

/// How far ahead of the real clock a job's recorded start is, in seconds.
fn start_offset_secs(o: &Orch, id: &str, real: jiff::Timestamp) -> i64 {
    let r = o.read_json(&format!("{id}/result.json"));
    let t: jiff::Timestamp = r["started_at"]
        .as_str()
        .unwrap_or_else(|| panic!("{id}: no started_at in {r}"))
        .parse()
        .unwrap();
    t.as_second() - real.as_second()
}

#[test]
fn runners_two_minutes_apart_never_reap_a_healthy_lease() {
    if !runnable(
        Path::new(FAKETIME_LIB).exists(),
        "libfaketime (apt-get install faketime)",
    ) {
        return;
    }
    // Three steps of 1.5 s: each job holds its lease for several lease
    // lengths, so a reaper that judged leases by its own clock (two
    // minutes off) would take it away.
    let o = Orch::new()
        .env("RUNNER_LEASE_SEC", "2")
        .env("SIMULATION_STEP_MS", "1500");
    let long = r#"{"goal":"a healthy long job"}"#;
    let mut ids = BTreeSet::new();
    let mut runners = Vec::new();
    let mut owners = Vec::new();
    // Each runner takes one job of its own first: the skewed ones own
    // leases the others judge, and the normal one owns a lease the skewed
    // ones judge.
    for (rid, off) in [
        ("ahead", Some("+2m")),
        ("behind", Some("-2m")),
        ("real", None),
    ] {
        let real_start = jiff::Timestamp::now();
        let id = o.submit(long);
        ids.insert(id.clone());
        runners.push(runner(&o, rid, off));
        wait_for(
            &format!("runner {rid} to claim"),
            Duration::from_secs(60),
            || claimed_by(&o, rid).is_some(),
        );
        assert_eq!(claimed_by(&o, rid).as_deref(), Some(id.as_str()));
        owners.push((rid, off, id, real_start, jiff::Timestamp::now()));
    }
    for i in 0..3 {
        ids.insert(o.submit(&format!(r#"{{"goal":"another long job {i}"}}"#)));
    }
    wait_for("every job to finish", Duration::from_secs(300), || {
        o.names("done").len() + o.names("failed").len() == ids.len()
            && o.names("running").is_empty()
    });
    for c in &runners {
        sigterm(c);
    }
    for mut c in runners {
        assert!(c.wait().unwrap().success());
    }
    for n in o.names("failed") {
        let e = Entry::parse(&n).unwrap();
        let r = o.read_json(&format!("{}/result.json", e.job_id));
        eprintln!("failed {n}: {}", r["error"]);
    }
    let expect = invariants::Expect {
        enqueued: &ids,
        acknowledged: &ids,
        all_terminal: true,
    };
    invariants::check(&o.queue(), &o.artifacts(), &expect).assert_ok("clock skew");
    for n in o.names("done") {
        let e = Entry::parse(&n).unwrap();
        assert_eq!(
            (e.attempt, e.reaps),
            (1, 0),
            "{n}: a healthy lease was reaped or claimed again (runner logs in the test dir)"
        );
    }
    assert!(o.names("failed").is_empty(), "{:?}", o.names("failed"));
    // The skew was real: each skewed runner recorded its job's start on its
    // own clock.
    // The real start lies between `before` and `after`, so the recorded
    // one lies in that window moved by the runner's offset.
    for (rid, off, id, before, after) in owners {
        let d = start_offset_secs(&o, &id, before);
        let window = after.as_second() - before.as_second();
        let shift = match off {
            Some("+2m") => 120,
            Some("-2m") => -120,
            _ => 0,
        };
        assert!(
            (shift - 1..=shift + window + 1).contains(&d),
            "{rid}: started_at is {d} s after the submit, expected {shift} s to {} s",
            shift + window
        );
    }
}
