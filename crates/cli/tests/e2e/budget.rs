//! The budget gate end to end (issue 11): real runner processes, real fake
//! agent CLIs, one real SQLite ledger. Calls are counted by the fakes
//! themselves (`FAKE_CALL_LOG`), not by orch.

use crate::pipeline::{no_sandbox, real_orch, step, submit};
use crate::support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// 2030-06-15T12:00:00Z: the injected "today".
const DAY1_NOON: u64 = 1_907_755_200;

fn calls(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// A real-agent installation whose fakes log every call.
fn budget_orch(extra: &[(&str, &str)]) -> (Orch, PathBuf) {
    let mut o = real_orch();
    let log = o.root().join("calls.log");
    o = o
        .env("ENV_ALLOWLIST", "FAKE_CALL_LOG")
        .env("FAKE_CALL_LOG", log.to_str().unwrap());
    for (k, v) in extra {
        o = o.env(k, v);
    }
    (o, log)
}

/// A one-step claude job that would be retried twice if it were retryable.
fn job(n: usize) -> Value {
    let mut s = step("01_review", "claude", "reviewer", &format!("review {n}"));
    s["max_retries"] = json!(2);
    json!({"goal": format!("budget {n}"), "policy": no_sandbox(), "steps": [s]})
}

fn budget_json(o: &Orch) -> Value {
    let out = o.orch(&["budget", "--json"], None);
    assert!(
        out.status.success(),
        "orch budget: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn run_drainers(o: &Orch, n: usize) {
    let runners: Vec<_> = (0..n)
        .map(|i| {
            o.runner(&["--drain", "--id", &format!("r{i}"), "--concurrency", "2"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for r in runners {
        let out = r.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "runner failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn four_runners_against_three_calls_make_exactly_three_agent_calls() {
    let (o, log) = budget_orch(&[("MAX_DAILY_API_CALLS", "3")]);
    let ids: Vec<String> = (0..8).map(|n| submit(&o, job(n))).collect();
    run_drainers(&o, 4);
    assert_eq!(calls(&log), 3, "the fakes saw {} calls", calls(&log));
    assert_eq!(o.names("done").len(), 3);
    assert_eq!(o.names("failed").len(), 5);
    let mut refused = 0;
    for id in &ids {
        let r = o.read_json(&format!("{id}/result.json"));
        let s = o.read_json(&format!("{id}/steps/01_review/result.json"));
        match r["status"].as_str().unwrap() {
            "success" => assert_eq!(s["attempts"], 1),
            "failed" => {
                refused += 1;
                assert_eq!(r["error"]["code"], "budget_exceeded", "{r:#}");
                assert_eq!(s["error"]["code"], "budget_exceeded", "{s:#}");
                // Refused once, never retried (max_retries was 2), and the
                // agent never started.
                assert_eq!(s["attempts"], 1, "{s:#}");
                assert!(
                    s["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("MAX_DAILY_API_CALLS"),
                    "{s:#}"
                );
                assert!(
                    !o.artifacts()
                        .join(id)
                        .join("steps/01_review/raw_stdout.txt")
                        .exists()
                );
            }
            other => panic!("{id}: {other}"),
        }
    }
    assert_eq!(refused, 5);
    for name in o.names("failed") {
        assert!(name.contains("~1."), "claimed more than once: {name}");
    }
    let b = budget_json(&o);
    assert_eq!(b["calls"], 3, "{b:#}");
    assert_eq!(b["max_calls"], 3);
    assert_eq!(b["refused"], 5);
    assert_eq!(b["exceeded"], true);
    assert_eq!(b["agents"][0]["agent"], "claude");
    assert_eq!(b["ledger_present"], true);
    // Every call was settled with the cost the fake printed ($0.0421).
    assert!(
        (b["cost_usd"].as_f64().unwrap() - 3.0 * 0.0421).abs() < 1e-9,
        "{b:#}"
    );
    assert_eq!(b["reserved_usd"], 0.0);
    // The table says the same.
    let out = o.orch(&["budget"], None);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("3 of 3") && text.contains("EXCEEDED"),
        "{text}"
    );
}

#[test]
fn with_defer_over_budget_jobs_wait_in_pending_and_run_after_the_utc_day_rolls() {
    let d = tempfile::tempdir().unwrap();
    let clock = d.path().join("now");
    std::fs::write(&clock, DAY1_NOON.to_string()).unwrap();
    let (o, log) = budget_orch(&[
        ("MAX_DAILY_API_CALLS", "3"),
        ("BUDGET_EXCEEDED_ACTION", "defer"),
        ("ORCH_TEST_CLOCK_FILE", clock.to_str().unwrap()),
    ]);
    let ids: Vec<String> = (0..5).map(|n| submit(&o, job(n))).collect();
    let runners: Vec<_> = (0..2)
        .map(|i| o.spawn_runner(&["--drain", "--id", &format!("r{i}"), "--concurrency", "2"]))
        .collect();
    let midnight = (DAY1_NOON / 86_400 + 1) * 86_400;
    wait_for("3 done and 2 deferred", Duration::from_secs(120), || {
        o.names("done").len() == 3 && o.names("running").is_empty() && o.names("pending").len() == 2
    });
    assert_eq!(calls(&log), 3);
    for name in o.names("pending") {
        assert!(
            name.ends_with(&format!("+{midnight}.json")),
            "not deferred to midnight: {name}"
        );
    }
    let b = budget_json(&o);
    assert_eq!(
        (b["day"].as_str(), &b["calls"], &b["refused"]),
        (Some("2030-06-15"), &json!(3), &json!(2)),
        "{b:#}"
    );
    // Deferred jobs are not failed and their refused attempt does not count.
    let deferred: Vec<&String> = ids
        .iter()
        .filter(|id| o.names("pending").iter().any(|n| n.contains(id.as_str())))
        .collect();
    assert_eq!(deferred.len(), 2);
    for id in &deferred {
        let st = o.read_json(&format!("{id}/state.json"));
        let s = &st["steps"]["01_review"];
        assert_eq!(s["status"], "retryable", "{st:#}");
        assert_eq!(s["attempt"], 0, "{st:#}");
        assert!(
            s["summary"].as_str().unwrap().starts_with("deferred"),
            "{st:#}"
        );
    }
    // The day rolls over.
    std::fs::write(&clock, (midnight + 1).to_string()).unwrap();
    for r in runners {
        let out = r.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "runner: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(calls(&log), 5);
    assert_eq!(o.names("done").len(), 5);
    for id in &deferred {
        let r = o.read_json(&format!("{id}/result.json"));
        assert_eq!(r["status"], "success", "{r:#}");
        let s = o.read_json(&format!("{id}/steps/01_review/result.json"));
        assert_eq!(s["attempts"], 1, "the refused attempt never ran: {s:#}");
    }
    let b = budget_json(&o);
    assert_eq!(
        (b["day"].as_str(), &b["calls"]),
        (Some("2030-06-16"), &json!(2)),
        "{b:#}"
    );
}

#[test]
fn the_cost_limit_refuses_once_the_estimate_would_exceed_it() {
    // $0.10 a day, $0.03 reserved per claude attempt, $0.0421 per call:
    // 0 + 0.03 fits, 0.0421 + 0.03 fits, 0.0842 + 0.03 does not.
    let (o, log) = budget_orch(&[
        ("MAX_DAILY_COST_USD", "0.10"),
        ("BUDGET_AGENT_ESTIMATES", "claude=0.03"),
    ]);
    let ids: Vec<String> = (0..4).map(|n| submit(&o, job(n))).collect();
    // One job at a time, so the order is the submission order.
    let out = o
        .runner(&["--drain", "--id", "solo", "--concurrency", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(calls(&log), 2);
    let statuses: Vec<String> = ids
        .iter()
        .map(|id| {
            o.read_json(&format!("{id}/result.json"))["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(statuses, ["success", "success", "failed", "failed"]);
    let r = o.read_json(&format!("{}/result.json", ids[2]));
    assert_eq!(r["error"]["code"], "budget_exceeded");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MAX_DAILY_COST_USD"),
        "{r:#}"
    );
    let b = budget_json(&o);
    assert!(
        (b["cost_usd"].as_f64().unwrap() - 0.0842).abs() < 1e-9,
        "{b:#}"
    );
    assert_eq!(b["max_cost_usd"], 0.1);
    assert_eq!(b["refused"], 2);
}

#[test]
fn simulated_steps_are_never_charged_and_create_no_ledger() {
    let o = Orch::new().env("MAX_DAILY_API_CALLS", "1");
    for n in 0..3 {
        o.submit(&json!({"goal": format!("sim {n}")}).to_string());
    }
    o.drain("sim");
    assert_eq!(o.names("done").len(), 3);
    assert!(!o.root().join("var/state.db").exists());
    let b = budget_json(&o);
    assert_eq!(
        (&b["calls"], &b["ledger_present"]),
        (&json!(0), &json!(false))
    );
}

#[test]
fn bad_budget_settings_stop_the_runner_and_orch_budget_naming_the_variable() {
    for (var, value) in [
        ("MAX_DAILY_API_CALLS", "lots"),
        ("MAX_DAILY_API_CALLS", "-3"),
        ("MAX_DAILY_API_CALLS", "99999999999999999999999"),
        ("MAX_DAILY_COST_USD", "NaN"),
        ("MAX_DAILY_COST_USD", "-1"),
        ("MAX_DAILY_COST_USD", "1e400"),
        ("BUDGET_ESTIMATE_USD", "inf"),
        ("BUDGET_AGENT_ESTIMATES", "claude"),
        ("BUDGET_PROJECT_LIMITS", "web=1"),
        ("BUDGET_EXCEEDED_ACTION", "retry"),
        ("ORCH_TEST_CLOCK_FILE", "/nonexistent/clock"),
    ] {
        let o = Orch::new().env(var, value);
        let out = o.runner(&["--drain", "--id", "bad"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {err}");
        assert!(err.contains(var), "{var}={value}: {err}");
        let out = o.orch(&["budget"], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "orch budget {var}={value}: {err}"
        );
        assert!(err.contains(var), "{var}={value}: {err}");
    }
}
