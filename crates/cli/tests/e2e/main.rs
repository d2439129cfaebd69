//! End-to-end tests: the real `orch`, `orch-runner` binaries over a real
//! queue directory, with real child processes killed by real signals.
// Tests start the real orch binaries (and test peers) as processes;
// the executor ban is for production code.
#![allow(clippy::disallowed_methods)]

mod budget;
mod edges;
mod faults;
mod fence;
mod health;
mod notify;
mod pipeline;
mod real;
mod recipe;
mod schedules;
mod support;
mod tidy;

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;
use support::*;

const JOB_FILES: [&str; 7] = [
    "job.json",
    "state.json",
    "context.json",
    "result.json",
    "report.md",
    "patch.diff",
    "logs.txt",
];
const STEP_FILES: [&str; 4] = ["result.json", "report.md", "patch.diff", "logs.txt"];

fn check_job_tree(o: &Orch, id: &str) {
    let job_schema = schema(contracts::schema::JOB_SCHEMA);
    let result_schema = schema(contracts::schema::RESULT_SCHEMA);
    for f in JOB_FILES {
        assert!(o.artifacts().join(id).join(f).is_file(), "{id}/{f} missing");
    }
    let job = o.read_json(&format!("{id}/job.json"));
    assert_valid(&job_schema, &job, "job.json");
    let result = o.read_json(&format!("{id}/result.json"));
    assert_valid(&result_schema, &result, "job result.json");
    for step in job["steps"].as_array().unwrap() {
        let sid = step["step_id"].as_str().unwrap();
        for f in STEP_FILES {
            assert!(
                o.artifacts()
                    .join(id)
                    .join("steps")
                    .join(sid)
                    .join(f)
                    .is_file(),
                "{id}/steps/{sid}/{f} missing"
            );
        }
        let r = o.read_json(&format!("{id}/steps/{sid}/result.json"));
        assert_valid(&result_schema, &r, "step result.json");
    }
}

#[test]
fn goal_only_and_custom_jobs_run_to_success() {
    let o = Orch::new();
    let simple = o.submit(r#"{"goal": "add a health endpoint"}"#);
    let custom = o.submit(
        &json!({
            "goal": "custom two-step pipeline",
            "tags": ["e2e"],
            "steps": [
                {"step_id": "a_plan", "agent": "opencode", "role": "planner", "prompt": "plan it"},
                {"step_id": "b_build", "agent": "codex", "role": "implementer", "prompt": "build it",
                 "input_artifacts": ["steps/a_plan/report.md"]}
            ]
        })
        .to_string(),
    );
    assert_eq!(o.names("pending").len(), 2);
    o.drain("r1");
    for id in [&simple, &custom] {
        let st = o.status_json(id);
        assert_eq!(st["state"], "done", "{st:#}");
        assert_eq!(st["status"], "success", "{st:#}");
        check_job_tree(&o, id);
    }
    // The default pipeline ran all three steps, in order.
    let st = o.status_json(&simple);
    let ids: Vec<&str> = st["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["01_plan", "02_implement", "03_review"]);
    for s in st["steps"].as_array().unwrap() {
        assert_eq!(s["status"], "success");
        assert_eq!(s["attempts"], 1);
    }
    // The implementer changed the workspace: its patch is non-empty and the
    // reviewer (which changes nothing) has an empty one.
    let patch = std::fs::read_to_string(
        o.artifacts()
            .join(&simple)
            .join("steps/02_implement/patch.diff"),
    )
    .unwrap();
    assert!(patch.contains("+++ b/"), "{patch}");
    let review_patch = std::fs::read_to_string(
        o.artifacts()
            .join(&simple)
            .join("steps/03_review/patch.diff"),
    )
    .unwrap();
    assert!(review_patch.is_empty(), "{review_patch}");
    let report = std::fs::read_to_string(o.artifacts().join(&simple).join("report.md")).unwrap();
    assert!(
        report.contains("## Step 02_implement (codex:implementer)"),
        "{report}"
    );
    // The plan was handed to the implementer as an input artifact.
    let job = o.read_json(&format!("{custom}/job.json"));
    assert!(
        job["workdir"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{custom}/work"))
    );
}

#[test]
fn racing_runners_finish_every_job_exactly_once() {
    let o = Orch::new();
    let n = 240;
    let mut ids = HashSet::new();
    for i in 0..n {
        let id = format!("race-{i:05}");
        ids.insert(id.clone());
        let out = o.orch(
            &["submit", "-"],
            Some(
                json!({"job_id": id, "goal": format!("job {i}")})
                    .to_string()
                    .as_bytes(),
            ),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Half the runners use each durability mode (group-committed syncfs,
    // per-file fsync): the protocol must not depend on it.
    let mut runners: Vec<_> = (0..4)
        .map(|r| {
            o.runner(&["--drain", "--id", &format!("race{r}"), "--concurrency", "3"])
                .env("FSYNC_MODE", if r % 2 == 0 { "syncfs" } else { "file" })
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for r in runners.iter_mut() {
        let st = r.wait().unwrap();
        assert!(st.success());
    }
    let done = o.names("done");
    assert_eq!(done.len(), n, "every job done");
    for st in ["pending", "running", "failed", "awaiting_approval"] {
        assert!(o.names(st).is_empty(), "{st} not empty: {:?}", o.names(st));
    }
    let mut seen = HashMap::new();
    for name in &done {
        let e = fsqueue::Entry::parse(name).unwrap();
        *seen.entry(e.job_id).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), n);
    assert!(seen.values().all(|c| *c == 1));
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), ids);
    // Each job ran each step exactly once (no double execution).
    for id in &ids {
        let r = o.read_json(&format!("{id}/result.json"));
        assert_eq!(r["status"], "success");
        for s in r["steps"].as_array().unwrap() {
            assert_eq!(s["attempts"], 1, "{id}: {s:#}");
        }
    }
}

#[test]
fn sigkilled_runner_job_is_reaped_and_resumed_at_the_unfinished_step() {
    let o = Orch::new().env("RUNNER_LEASE_SEC", "2");
    let id = o.submit(
        &json!({
            "goal": "survive a crash",
            "steps": [
                {"step_id": "s1", "agent": "opencode", "role": "planner", "prompt": "quick"},
                {"step_id": "s2", "agent": "codex", "role": "implementer", "prompt": "slow [sim:sleep=600000]"},
                {"step_id": "s3", "agent": "claude", "role": "reviewer", "prompt": "quick"}
            ]
        })
        .to_string(),
    );
    let mut a = o.spawn_runner(&["--id", "victim"]);
    let state_path = o.artifacts().join(&id).join("state.json");
    wait_for("s2 to start", Duration::from_secs(30), || {
        std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|s| s["steps"]["s2"]["status"] == "running")
    });
    let s1_result = std::fs::read(o.artifacts().join(&id).join("steps/s1/result.json")).unwrap();
    sigkill(&mut a);
    assert_eq!(o.names("running").len(), 1);
    // A second runner detects the dead owner through its free lock (no
    // need to wait for the lease) and resumes the job at s2.
    let mut b = o.spawn_runner(&["--id", "rescuer"]);
    wait_for(
        "the job to be reclaimed by the rescuer",
        Duration::from_secs(30),
        || {
            o.names("running")
                .iter()
                .any(|n| n.ends_with("@rescuer.json"))
        },
    );
    let running = o.names("running");
    let e = fsqueue::Entry::parse(&running[0]).unwrap();
    assert_eq!(e.attempt, 2, "second claim");
    assert_eq!(e.reaps, 1);
    wait_for("s2 to run again", Duration::from_secs(30), || {
        std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|s| s["attempt"] == 2 && s["steps"]["s2"]["status"] == "running")
    });
    // s1 was not re-run: its result is byte-for-byte the same.
    let s1_after = std::fs::read(o.artifacts().join(&id).join("steps/s1/result.json")).unwrap();
    assert_eq!(s1_result, s1_after);
    let st: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    assert_eq!(st["steps"]["s1"]["status"], "success");
    // Cancel to finish quickly; the rescuer ends it as cancelled.
    let out = o.orch(&["cancel", &id], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "cancelled job to reach failed/",
        Duration::from_secs(10),
        || o.names("failed").len() == 1,
    );
    let st = o.status_json(&id);
    assert_eq!(st["status"], "cancelled");
    sigterm(&b);
    assert!(b.wait().unwrap().success());
}

#[test]
fn a_job_that_waited_longer_than_the_lease_runs_once() {
    let o = Orch::new()
        .env("RUNNER_LEASE_SEC", "1")
        .env("SIMULATION_STEP_MS", "300");
    let id = o.submit(r#"{"goal": "patience"}"#);
    // Age the pending file far beyond the lease.
    let p = o.state_dir("pending").join(&o.names("pending")[0]);
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    drop(f);
    o.drain("patient");
    let done = o.names("done");
    assert_eq!(done.len(), 1);
    let e = fsqueue::Entry::parse(&done[0]).unwrap();
    assert_eq!((e.attempt, e.reaps), (1, 0), "claimed once, never reaped");
    assert_eq!(o.status_json(&id)["status"], "success");
}

#[test]
fn poison_job_fails_after_max_reclaims() {
    let o = Orch::new()
        .env("RUNNER_MAX_RECLAIMS", "2")
        .env("RUNNER_LEASE_SEC", "30");
    let id = o.submit(r#"{"goal": "I kill runners [sim:sleep=600000]"}"#);
    for round in 0..3 {
        let mut r = o.spawn_runner(&["--id", &format!("doomed{round}")]);
        wait_for(
            "the poison job to be claimed",
            Duration::from_secs(30),
            || {
                o.names("running")
                    .iter()
                    .any(|n| n.ends_with(&format!("@doomed{round}.json")))
            },
        );
        sigkill(&mut r);
    }
    // The next runner reaps it (the dead owner's lock is free) and, as it
    // was reclaimed twice already, fails it instead of running it again.
    o.drain("survivor");
    assert_eq!(
        o.names("failed").len(),
        1,
        "failed: {:?}",
        o.names("failed")
    );
    let st = o.status_json(&id);
    assert_eq!(st["state"], "failed");
    assert_eq!(st["status"], "failed");
    assert_eq!(st["error"]["code"], "poison_job", "{st:#}");
    assert!(
        st["error"]["message"]
            .as_str()
            .unwrap()
            .contains("RUNNER_MAX_RECLAIMS")
    );
}

#[test]
fn torn_file_in_pending_is_quarantined_and_the_runner_goes_on() {
    let o = Orch::new();
    let good = o.submit(r#"{"goal": "still works"}"#);
    let torn = o
        .state_dir("pending")
        .join("5-0000000000000000001-torn-job-1~0.0.json");
    std::fs::write(
        &torn,
        br#"{"schema_version":"1.0","job_id":"torn-job-1","go"#,
    )
    .unwrap();
    let invalid = o
        .state_dir("pending")
        .join("5-0000000000000000002-invalid-job-1~0.0.json");
    std::fs::write(
        &invalid,
        br#"{"schema_version":"1.0","job_id":"invalid-job-1"}"#,
    )
    .unwrap();
    o.drain("r1");
    assert_eq!(o.status_json(&good)["status"], "success");
    let corrupt: Vec<String> = std::fs::read_dir(o.queue().join("corrupt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        corrupt.iter().filter(|n| n.ends_with(".reason")).count(),
        2,
        "{corrupt:?}"
    );
    assert!(o.names("pending").is_empty());
    // A torn file dropped while a runner is already up is caught at claim.
    let mut r = o.spawn_runner(&["--id", "live"]);
    wait_for("runner heartbeat", Duration::from_secs(10), || {
        o.queue().join("runners/live.json").exists()
    });
    std::fs::write(
        o.state_dir("pending")
            .join("5-0000000000000000003-torn-job-2~0.0.json"),
        b"{\"job_id",
    )
    .unwrap();
    let after = o.submit(r#"{"goal": "after the torn file"}"#);
    wait_for(
        "the job after the torn file",
        Duration::from_secs(20),
        || o.status_json(&after)["state"] == "done",
    );
    sigterm(&r);
    assert!(r.wait().unwrap().success());
    let reasons = std::fs::read_dir(o.queue().join("corrupt"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".reason")
        })
        .count();
    assert_eq!(reasons, 3);
}

#[test]
fn hostile_submissions_are_refused_and_write_nothing() {
    let o = Orch::new();
    let long = "x".repeat(5001);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed", b"{\"goal\": ".to_vec()),
        ("truncated", br#"{"goal": "a", "steps": [{"step_id": "a""#.to_vec()),
        ("invalid utf-8", b"{\"goal\": \"\xff\xfe\"}".to_vec()),
        ("empty", b"".to_vec()),
        ("non-object", b"[1,2,3]".to_vec()),
        ("string", b"\"just a string\"".to_vec()),
        ("unknown key", br#"{"goal": "g", "evil": 1}"#.to_vec()),
        ("unknown step key", br#"{"goal": "g", "steps": [{"step_id": "a", "agent": "codex", "role": "r", "prompt": "p", "shell": "rm -rf /"}]}"#.to_vec()),
        ("traversal job id", br#"{"goal": "g", "job_id": "../../etc/passwd"}"#.to_vec()),
        ("dot job id", br#"{"goal": "g", "job_id": ".."}"#.to_vec()),
        ("traversal step id", br#"{"goal": "g", "steps": [{"step_id": "../../evil", "agent": "codex", "role": "r", "prompt": "p"}]}"#.to_vec()),
        ("over-long goal", format!(r#"{{"goal": "{long}"}}"#).into_bytes()),
        ("huge timeout", br#"{"goal": "g", "steps": [{"step_id": "a", "agent": "codex", "role": "r", "prompt": "p", "timeout_sec": 99999999999999999999999}]}"#.to_vec()),
        ("negative retries", br#"{"goal": "g", "steps": [{"step_id": "a", "agent": "codex", "role": "r", "prompt": "p", "max_retries": -1}]}"#.to_vec()),
        ("float timeout", br#"{"goal": "g", "steps": [{"step_id": "a", "agent": "codex", "role": "r", "prompt": "p", "timeout_sec": 1.5}]}"#.to_vec()),
        ("string tags", br#"{"goal": "g", "tags": "a,b"}"#.to_vec()),
        ("string metadata", br#"{"goal": "g", "metadata": "m"}"#.to_vec()),
        ("duplicate step ids", br#"{"goal": "g", "steps": [{"step_id": "a", "agent": "codex", "role": "r", "prompt": "p"}, {"step_id": "a", "agent": "codex", "role": "r", "prompt": "p"}]}"#.to_vec()),
        ("goto missing", br#"{"goal": "g", "steps": [{"step_id": "a", "agent": "codex", "role": "r", "prompt": "p", "on_failure": "goto:nowhere"}]}"#.to_vec()),
        ("unknown agent", br#"{"goal": "g", "steps": [{"step_id": "a", "agent": "rm", "role": "r", "prompt": "p"}]}"#.to_vec()),
        ("blank goal", br#"{"goal": "   \n\t "}"#.to_vec()),
        ("missing goal", br#"{"tags": []}"#.to_vec()),
        ("deep nesting", format!("{{\"goal\": \"g\", \"metadata\": {}{}}}", "{\"a\":".repeat(200), "}".repeat(200)).into_bytes()),
    ];
    for (what, input) in cases {
        let out = o.orch(&["submit", "-"], Some(&input));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: expected exit 2, got {:?}; stderr: {stderr}",
            out.status
        );
        assert!(stderr.contains("error"), "{what}: no message: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: panic: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{what}: printed data: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // A job with several problems lists each with its pointer.
    let out = o.orch(
        &["submit", "-"],
        Some(br#"{"goal": "", "tags": "x", "evil": true}"#),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for p in ["/goal", "/tags", "/evil"] {
        assert!(stderr.contains(p), "missing {p} in: {stderr}");
    }
    // Nothing was written anywhere.
    for st in ["pending", "awaiting_approval", "running", "done", "failed"] {
        assert!(o.names(st).is_empty(), "{st}: {:?}", o.names(st));
    }
    assert!(!o.artifacts().exists() || std::fs::read_dir(o.artifacts()).unwrap().next().is_none());
    // A file path that does not exist, a directory, and `validate`.
    assert_eq!(
        o.orch(&["submit", "/nonexistent/job.json"], None)
            .status
            .code(),
        Some(2)
    );
    assert_eq!(o.orch(&["submit", "/"], None).status.code(), Some(2));
    assert_eq!(o.orch(&["validate", "-"], None).status.code(), Some(2));
}

#[test]
fn cli_exit_codes_and_json() {
    let o = Orch::new();
    // Unknown and malformed ids.
    assert_eq!(
        o.orch(&["status", "0123456789abcdef0123456789abcdef"], None)
            .status
            .code(),
        Some(3)
    );
    assert_eq!(
        o.orch(&["status", "../../etc"], None).status.code(),
        Some(2)
    );
    assert_eq!(
        o.orch(
            &["approve", "--job", "0123456789abcdef0123456789abcdef"],
            None
        )
        .status
        .code(),
        Some(3)
    );
    assert_eq!(o.orch(&["frobnicate"], None).status.code(), Some(2));
    // submit --json, then status of a queued job has a null status.
    let out = o.orch(&["submit", "--json", "-"], Some(br#"{"goal": "json"}"#));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "pending");
    let id = v["job_id"].as_str().unwrap().to_owned();
    let st = o.status_json(&id);
    assert_eq!(st["state"], "pending");
    assert_eq!(st["status"], Value::Null);
    // Approving a job that is not waiting is a wrong-state error.
    assert_eq!(o.orch(&["approve", &id], None).status.code(), Some(3));
    // Approval flow: parked at submit, approved, then run.
    let out = o.orch(
        &["submit", "--json", "-"],
        Some(br#"{"goal": "gated", "policy": {"requires_approval": true}}"#),
    );
    let gated = serde_json::from_slice::<Value>(&out.stdout).unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(o.status_json(&gated)["state"], "awaiting_approval");
    o.drain("r1");
    assert_eq!(o.status_json(&gated)["state"], "awaiting_approval");
    assert!(o.orch(&["approve", "--job", &gated], None).status.success());
    o.drain("r1");
    assert_eq!(o.status_json(&gated)["status"], "success");
    // list --json sees both.
    let out = o.orch(&["list", "--json"], None);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    // doctor passes on a healthy installation.
    let out = o.orch(&["doctor", "--json"], None);
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["ok"], true, "{d:#}");
    assert_eq!(out.status.code(), Some(0));
    // An invalid environment value is an error naming the variable.
    let bad = Orch::new().env("RUNNER_LEASE_SEC", "soon");
    let out = bad.runner(&["--drain"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RUNNER_LEASE_SEC"));
}

#[test]
fn runner_sigterm_exits_zero_and_releases_its_job() {
    let o = Orch::new().env("RUNNER_SHUTDOWN_GRACE_SEC", "1");
    let id = o.submit(r#"{"goal": "long [sim:sleep=600000]"}"#);
    let mut r = o.spawn_runner(&["--id", "polite"]);
    wait_for("claim", Duration::from_secs(20), || {
        o.names("running").len() == 1
    });
    sigterm(&r);
    let st = r.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(o.names("running").is_empty());
    assert_eq!(o.names("pending").len(), 1, "released back to pending");
    let s = o.status_json(&id);
    assert_eq!(s["state"], "pending");
    let _ = &mut r;
}

/// `--drain` ends when no *due* job is left: a job deferred to a later
/// time (a budget's `defer`) stays in pending and does not keep the runner
/// waiting until then.
#[test]
fn drain_exits_with_a_deferred_job_left_in_pending() {
    let o = Orch::new();
    let later = o.submit(r#"{"goal": "tomorrow"}"#);
    let now = o.submit(r#"{"goal": "today"}"#);
    // Defer the first job by a day, as the budget gate does.
    let name = o
        .names("pending")
        .into_iter()
        .find(|n| n.contains(&later))
        .unwrap();
    let entry = fsqueue::Entry::parse(&name).unwrap();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let deferred = entry.deferred_until(unix + 86_400);
    std::fs::rename(
        o.state_dir("pending").join(&name),
        o.state_dir("pending").join(deferred.file_name()),
    )
    .unwrap();
    let mut r = o
        .runner(&["--drain", "--id", "d1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut exited = None;
    wait_for(
        "the draining runner to exit",
        Duration::from_secs(120),
        || {
            exited = r.try_wait().unwrap();
            exited.is_some()
        },
    );
    assert!(exited.unwrap().success());
    assert_eq!(o.status_json(&now)["state"], "done");
    assert_eq!(o.status_json(&later)["state"], "pending");
    assert_eq!(o.names("pending"), [deferred.file_name()]);
}

#[test]
fn completions_and_man_page_come_from_the_clap_definitions() {
    let o = Orch::new();
    let out = o.orch(&["completions", "bash"], None);
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    for sub in ["submit", "status", "approve", "doctor"] {
        assert!(
            script.contains(sub),
            "{sub} missing from the bash completions"
        );
    }
    let out = o.orch(&["man"], None);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH orch"));
    assert_eq!(
        o.orch(&["completions", "cmd.exe"], None).status.code(),
        Some(2)
    );
}
