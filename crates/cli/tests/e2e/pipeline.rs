//! Pipeline control end to end (issue 4): retries, timeouts and the idle
//! watchdog, huge output, `on_failure` (continue, goto, ask_human), cancel,
//! graceful shutdown with jobs in flight, callbacks, context strategies,
//! input-artifact markers and artifact hand-off. Everything runs through
//! the real `orch` and `orch-runner` binaries; real-agent cases use the fake
//! CLIs of `examples/agents` with `ENABLE_REAL_CLI=1` and `SANDBOX=0`.

use crate::support::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) fn submit(o: &Orch, doc: Value) -> String {
    o.submit(&doc.to_string())
}

pub(crate) fn step(id: &str, agent: &str, role: &str, prompt: &str) -> Value {
    json!({"step_id": id, "agent": agent, "role": role, "prompt": prompt,
           "max_retries": 0, "retry_backoff_sec": 0})
}

fn state(o: &Orch, id: &str) -> Value {
    o.read_json(&format!("{id}/state.json"))
}

fn bytes(o: &Orch, id: &str, rel: &str) -> Vec<u8> {
    let p = o.artifacts().join(id).join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn text(o: &Orch, id: &str, rel: &str) -> String {
    String::from_utf8_lossy(&bytes(o, id, rel)).into_owned()
}

/// An installation whose agents are the fake CLIs, run for real.
pub(crate) fn real_orch() -> Orch {
    let mut o = Orch::new();
    let bin = o.root().join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let agents = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/agents");
    let agents = agents.canonicalize().unwrap();
    for name in ["claude", "codex", "opencode"] {
        std::os::unix::fs::symlink(agents.join(format!("fake-{name}")), bin.join(name)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    o.extra_env.push(("PATH".into(), path));
    o.env("ENABLE_REAL_CLI", "1")
        .env("SANDBOX", "0")
        .env("ALLOWED_BINARIES", "claude,codex,opencode")
}

/// Real-agent jobs here run unsandboxed (the sandbox is tested elsewhere),
/// which takes both `SANDBOX=0` and the job's own `policy.sandbox: false`.
pub(crate) fn no_sandbox() -> Value {
    json!({"sandbox": false})
}

/// Processes whose working directory is `dir` (an agent of that job).
pub(crate) fn procs_in(dir: &Path) -> Vec<u32> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir)
                // Zombies have no cwd worth counting; a reaped group has none.
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
        })
        .collect()
}

fn work_dir(o: &Orch, id: &str) -> PathBuf {
    o.root().join("workspaces").join(id).join("work")
}

#[test]
fn hanging_agents_time_out_idle_ones_are_stopped_and_a_10mb_line_succeeds() {
    let o = real_orch()
        .env("RUNNER_MAX_IDLE_SEC", "2")
        .env("MAX_SUBPROCESS_OUTPUT_CHARS", "30000000");
    let mut hang = step("hang", "claude", "reviewer", "wait [fake:sleep]");
    hang["timeout_sec"] = json!(1);
    let hang = submit(
        &o,
        json!({"goal": "hang", "policy": no_sandbox(), "steps": [hang]}),
    );
    let mut idle = step("idle", "claude", "reviewer", "wait [fake:sleep]");
    idle["timeout_sec"] = json!(60);
    let idle = submit(
        &o,
        json!({"goal": "idle", "policy": no_sandbox(), "steps": [idle]}),
    );
    let huge = submit(
        &o,
        json!({"goal": "huge", "policy": no_sandbox(), "steps": [step("huge", "claude", "reviewer", "say a lot [fake:huge]")]}),
    );
    // The outcomes below prove the watchdogs fired (the idle step's own
    // timeout is 60 s and its error code says which limit stopped it); no
    // wall-clock bound, which a loaded machine would break.
    o.drain("r-timeouts");
    let r = o.read_json(&format!("{hang}/steps/hang/result.json"));
    assert_eq!(r["status"], "timeout", "{r:#}");
    assert_eq!(r["error"]["code"], "timeout", "{r:#}");
    let r = o.read_json(&format!("{idle}/steps/idle/result.json"));
    assert_eq!(r["status"], "timeout", "{r:#}");
    assert_eq!(r["error"]["code"], "idle_timeout", "{r:#}");
    for id in [&hang, &idle] {
        assert_eq!(o.status_json(id)["state"], "failed");
        assert!(
            procs_in(&work_dir(&o, id)).is_empty(),
            "agent processes left for {id}"
        );
    }
    let st = o.status_json(&huge);
    assert_eq!(st["status"], "success", "{st:#}");
    let report = bytes(&o, &huge, "steps/huge/report.md");
    assert!(report.len() > 10_000_000, "{}", report.len());
}

#[test]
fn retries_are_exact_and_only_retryable_outcomes_are_retried() {
    let o = Orch::new();
    let mut flaky = step("flaky", "codex", "implementer", "[sim:fail_attempts=1]");
    flaky["max_retries"] = json!(3);
    let flaky = submit(&o, json!({"goal": "flaky", "steps": [flaky]}));
    let mut human = step("ask", "opencode", "planner", "[sim:needs_human]");
    human["max_retries"] = json!(3);
    let human = submit(&o, json!({"goal": "human", "steps": [human]}));
    let mut fatal = step("boom", "opencode", "planner", "[sim:fatal]");
    fatal["max_retries"] = json!(3);
    let fatal = submit(&o, json!({"goal": "fatal", "steps": [fatal]}));
    o.drain("r-retries");

    let st = o.status_json(&flaky);
    assert_eq!(st["status"], "success", "{st:#}");
    assert_eq!(st["steps"][0]["attempts"], 2);
    assert_eq!(state(&o, &flaky)["steps"]["flaky"]["attempt"], 2);
    let r = o.read_json(&format!("{flaky}/result.json"));
    assert_eq!(r["steps"][0]["attempts"], 2);
    assert_eq!(r["attempts"], 2);

    let st = o.status_json(&human);
    assert_eq!(st["state"], "awaiting_approval", "{st:#}");
    assert_eq!(st["status"], "needs_human");
    assert_eq!(st["steps"][0]["attempts"], 1, "needs_human is not retried");

    let st = o.status_json(&fatal);
    assert_eq!(st["state"], "failed");
    assert_eq!(st["steps"][0]["attempts"], 1, "fatal is not retried");
    assert_eq!(st["error"]["code"], "sim_fatal", "{st:#}");
}

#[test]
fn goto_on_an_always_failing_step_is_bounded_and_other_jobs_keep_running() {
    let o = Orch::new().env("RUNNER_MAX_GOTO", "3");
    let mut bad = step("s2", "opencode", "planner", "[sim:fatal] [sim:sleep=100]");
    bad["on_failure"] = json!("goto:s1");
    let looping = submit(
        &o,
        json!({"goal": "loop", "steps": [step("s1", "opencode", "planner", "[sim:sleep=100]"), bad]}),
    );
    let other = submit(&o, json!({"goal": "meanwhile"}));
    let out = o
        .runner(&["--drain", "--id", "r-goto", "--concurrency", "2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let st = o.status_json(&looping);
    assert_eq!(st["state"], "failed");
    assert_eq!(st["error"]["code"], "goto_limit", "{st:#}");
    assert!(
        st["error"]["message"]
            .as_str()
            .unwrap()
            .contains("RUNNER_MAX_GOTO=3")
    );
    // s2 ran once, then once more per jump: 1 + 3.
    assert_eq!(state(&o, &looping)["steps"]["s2"]["attempt"], 4);
    let st = o.status_json(&other);
    assert_eq!(st["status"], "success");
    // The other job finished while the loop was still going.
    let a = o.read_json(&format!("{other}/result.json"))["finished_at"].clone();
    let b = o.read_json(&format!("{looping}/result.json"))["finished_at"].clone();
    assert!(a.as_str().unwrap() < b.as_str().unwrap(), "{a} vs {b}");
}

#[test]
fn continue_past_a_failure_names_the_failed_step() {
    let o = Orch::new();
    let mut a = step("a", "opencode", "planner", "[sim:fatal]");
    a["on_failure"] = json!("continue");
    let id = submit(
        &o,
        json!({"goal": "carry on", "steps": [a, step("b", "codex", "implementer", "go")]}),
    );
    o.drain("r-continue");
    let st = o.status_json(&id);
    assert_eq!(st["state"], "failed", "{st:#}");
    assert_ne!(st["status"], "success");
    assert_eq!(st["steps"][1]["status"], "success", "b ran");
    let r = o.read_json(&format!("{id}/result.json"));
    assert_eq!(r["error"]["code"], "steps_failed_continued");
    assert!(r["summary"].as_str().unwrap().contains("continued past: a"));
    let ra = o.read_json(&format!("{id}/steps/a/result.json"));
    assert_eq!(ra["status"], "failed");
    assert!(
        ra["summary"].as_str().unwrap().contains("continued"),
        "{ra:#}"
    );
}

#[test]
fn ask_human_then_approve_resumes_at_the_paused_step() {
    let o = Orch::new();
    let src = o.root().join("source");
    std::fs::create_dir_all(src.join("lib")).unwrap();
    std::fs::write(src.join("lib/keep.txt"), "from the source\n").unwrap();
    let mut jobs = Vec::new();
    for workdir in [None, Some(src.display().to_string())] {
        let mut ask = step("s2", "codex", "implementer", "[sim:fail_attempts=1]");
        ask["on_failure"] = json!("ask_human");
        let mut doc = json!({"goal": "pause", "steps": [
            step("s1", "opencode", "planner", "plan"),
            ask,
            step("s3", "claude", "reviewer", "review"),
        ]});
        if let Some(w) = workdir {
            doc["workdir"] = json!(w);
        }
        jobs.push(submit(&o, doc));
    }
    o.drain("r-ask");
    let mut before = Vec::new();
    for id in &jobs {
        let st = o.status_json(id);
        assert_eq!(st["state"], "awaiting_approval", "{st:#}");
        assert_eq!(st["status"], "needs_human");
        assert_eq!(st["current_step"], "s2");
        before.push((
            bytes(&o, id, "steps/s1/result.json"),
            bytes(&o, id, "steps/s1/report.md"),
        ));
        assert!(o.orch(&["approve", id], None).status.success());
    }
    o.drain("r-ask2");
    for (id, (res, rep)) in jobs.iter().zip(before) {
        let st = o.status_json(id);
        assert_eq!(st["status"], "success", "{st:#}");
        assert_eq!(bytes(&o, id, "steps/s1/result.json"), res, "s1 untouched");
        assert_eq!(bytes(&o, id, "steps/s1/report.md"), rep);
        assert_eq!(st["steps"][1]["attempts"], 2, "{st:#}");
        assert_eq!(st["steps"][0]["attempts"], 1);
    }
    // The sourced workspace was reused, not prepared again from scratch.
    let ws = work_dir(&o, &jobs[1]);
    assert_eq!(
        std::fs::read_to_string(ws.join("lib/keep.txt")).unwrap(),
        "from the source\n"
    );
    assert!(ws.join("orch-sim/s2.md").is_file());
}

#[test]
fn cancel_of_a_running_real_agent_takes_under_two_seconds() {
    let o = real_orch();
    let id = submit(
        &o,
        json!({"goal": "cancel me", "policy": no_sandbox(), "steps": [step("wait", "claude", "reviewer", "[fake:sleep]")]}),
    );
    let mut r = o.spawn_runner(&["--id", "r-cancel"]);
    let work = work_dir(&o, &id);
    wait_for("the agent to start", Duration::from_secs(30), || {
        !procs_in(&work).is_empty()
    });
    let out = o.orch(&["cancel", &id], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The agent sleeps for an hour: leaving running/ at all proves the
    // cancel stopped it (typically well under 2 s; no wall-clock bound
    // here, which a loaded machine would break).
    wait_for("the job to leave running/", Duration::from_secs(60), || {
        o.names("failed").len() == 1
    });
    let st = o.status_json(&id);
    assert_eq!(st["status"], "cancelled", "{st:#}");
    assert_eq!(st["steps"][0]["status"], "cancelled");
    assert!(procs_in(&work).is_empty(), "agent left behind");
    sigterm(&r);
    assert!(r.wait().unwrap().success());
    let _ = &mut r;
}

#[test]
fn sigterm_with_two_jobs_in_flight_loses_nothing() {
    let o = Orch::new().env("RUNNER_SHUTDOWN_GRACE_SEC", "0");
    let ids: Vec<String> = (0..2)
        .map(|i| {
            submit(
                &o,
                json!({"goal": format!("job {i}"), "steps": [
                    step("s1", "opencode", "planner", "quick"),
                    step("s2", "codex", "implementer", "[sim:sleep=1500]"),
                ]}),
            )
        })
        .collect();
    let mut r = o.spawn_runner(&["--id", "r-term", "--concurrency", "2"]);
    wait_for("both jobs in s2", Duration::from_secs(20), || {
        ids.iter().all(|id| {
            std::fs::read(o.artifacts().join(id).join("state.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|s| s["steps"]["s2"]["status"] == "running")
        })
    });
    let s1: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| bytes(&o, id, "steps/s1/result.json"))
        .collect();
    sigterm(&r);
    assert!(r.wait().unwrap().success(), "exit 0");
    assert!(o.names("running").is_empty());
    assert_eq!(o.names("pending").len(), 2, "both released");
    o.drain("r-rescue");
    for (id, s1) in ids.iter().zip(s1) {
        let st = o.status_json(id);
        assert_eq!(st["status"], "success", "{st:#}");
        assert_eq!(bytes(&o, id, "steps/s1/result.json"), s1, "s1 kept");
        let r = o.read_json(&format!("{id}/result.json"));
        assert_eq!(r["steps"].as_array().unwrap().len(), 2);
    }
    let _ = &mut r;
}

/// One request a receiver saw: headers (names lower-cased) and body.
pub(crate) type Request = (Vec<(String, String)>, Vec<u8>);

/// A loopback HTTP receiver: answers 500 to its first `fail_first` requests,
/// then 204; records every request (headers lower-cased, body).
struct Receiver {
    addr: String,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start(fail_first: usize) -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<Vec<_>>> = Arc::default();
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for (n, conn) in l.incoming().enumerate() {
                let Ok(mut c) = conn else { continue };
                let Some((headers, body)) = read_request(&mut c) else {
                    continue;
                };
                seen2.lock().unwrap().push((headers, body));
                let status = if n < fail_first {
                    "500 Internal Server Error"
                } else {
                    "204 No Content"
                };
                let _ = write!(
                    c,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Self { addr, seen }
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

pub(crate) fn read_request(c: &mut std::net::TcpStream) -> Option<Request> {
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = c.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())?;
    while buf.len() < head_end + len {
        let n = c.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((headers, buf[head_end..head_end + len].to_vec()))
}

pub(crate) fn header<'a>(h: &'a [(String, String)], name: &str) -> &'a str {
    h.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// The `X-Orch-Signature-256` value a callback of `body` must carry when
/// signed with `key`.
pub(crate) fn callback_signature(key: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[test]
fn callbacks_are_signed_retried_and_delivered_once_per_terminal_job() {
    let rx = Receiver::start(2);
    let url = format!("http://{}/hook?token=abc", rx.addr);
    let o = Orch::new()
        .env("CALLBACK_ALLOW_PRIVATE", "1")
        .env("CALLBACK_SECRET", "s3cret-key");
    let ok = submit(&o, json!({"goal": "ok", "callback_url": url}));
    let bad = submit(
        &o,
        json!({"goal": "bad", "callback_url": url,
               "steps": [step("x", "opencode", "planner", "[sim:fatal]")]}),
    );
    // --drain returns after the deliveries finished (or gave up).
    o.drain("r-callback");
    let reqs = rx.requests();
    for (id, status) in [(&ok, "success"), (&bad, "failed")] {
        let mine: Vec<_> = reqs
            .iter()
            .filter(|(h, _)| header(h, "x-orch-job-id") == id.as_str())
            .collect();
        assert!(!mine.is_empty(), "no callback for {id}");
        // One delivery: every attempt carries the same delivery id.
        let deliveries: std::collections::BTreeSet<&str> = mine
            .iter()
            .map(|(h, _)| header(h, "x-orch-delivery"))
            .collect();
        assert_eq!(deliveries.len(), 1, "{deliveries:?}");
        for (h, body) in &mine {
            assert_eq!(
                header(h, "x-orch-signature-256"),
                callback_signature(b"s3cret-key", body)
            );
            let doc: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(doc["job_id"], id.as_str());
            assert_eq!(doc["status"], status);
            assert_eq!(doc["kind"], "job");
        }
        let rec = o.read_json(&format!("{id}/callback.json"));
        assert_eq!(rec["delivered"], true, "{rec:#}");
        assert_eq!(rec["url"], format!("http://{}/hook", rx.addr), "no query");
    }
    // The first two POSTs got 500 and were retried; exactly one was
    // acknowledged per job.
    assert_eq!(reqs.len(), 4, "2 refused + 1 per job");
    // Without CALLBACK_ALLOW_PRIVATE, loopback is refused and nothing is sent.
    let strict = Orch::new();
    let id = submit(&strict, json!({"goal": "strict", "callback_url": url}));
    strict.drain("r-strict");
    let rec = strict.read_json(&format!("{id}/callback.json"));
    assert_eq!(rec["delivered"], false);
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("CALLBACK_ALLOW_PRIVATE"),
        "{rec:#}"
    );
    assert_eq!(rx.requests().len(), 4);
}

#[test]
fn context_strategies_shape_the_context() {
    let o = Orch::new();
    let window: Vec<Value> = (0..20)
        .map(|i| json!({"role": "user", "content": format!("message {i} {}", "x".repeat(400))}))
        .collect();
    let sliding = submit(
        &o,
        json!({"goal": "slide", "context_strategy": "sliding", "context_window": window,
               "steps": [step("a", "opencode", "planner", "one")]}),
    );
    let summarize = submit(
        &o,
        json!({"goal": "fold", "context_strategy": "summarize", "context_window": window,
               "steps": [step("a", "opencode", "planner", "one"),
                         step("b", "opencode", "planner", "two [sim:echo_prompt]")]}),
    );
    o.drain("r-context");
    let c = o.read_json(&format!("{sliding}/context.json"));
    let msgs = c["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 12);
    assert!(msgs[11]["content"].as_str().unwrap().contains("[a "));
    let c = o.read_json(&format!("{summarize}/context.json"));
    let msgs = c["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 12, "{c:#}");
    assert_eq!(msgs[0]["role"], "system");
    let summary = msgs[0]["content"].as_str().unwrap();
    assert!(summary.chars().count() <= 4000, "{}", summary.len());
    assert!(summary.starts_with("Summary of earlier context"));
    // The next step was given the folded context.
    let logs = text(&o, &summarize, "steps/b/logs.txt");
    assert!(
        logs.contains("[system] Summary of earlier context"),
        "{logs}"
    );
}

#[test]
fn input_artifact_markers_reach_the_prompt() {
    let o = Orch::new().env("MAX_INPUT_ARTIFACT_CHARS", "50");
    let mut b = step("b", "opencode", "planner", "read [sim:echo_prompt]");
    b["input_artifacts"] = json!(["steps/a/report.md", "steps/nope/report.md", "steps/a"]);
    let id = submit(
        &o,
        json!({"goal": "inputs", "steps": [step("a", "opencode", "planner", "plan"), b]}),
    );
    o.drain("r-inputs");
    let logs = text(&o, &id, "steps/b/logs.txt");
    for mark in [
        "--- steps/a/report.md ---",
        "[truncated:file_limit]",
        "[missing]",
        "[invalid_path]",
        "[artifacts_truncated_or_limited]",
    ] {
        assert!(logs.contains(mark), "{mark} not in:\n{logs}");
    }
}

#[test]
fn artifact_handoff_and_apply_patches_from() {
    let o = Orch::new();
    // patch_first: the reviewer reads the implementer's patch.
    let pf = submit(
        &o,
        json!({"goal": "handoff", "artifact_handoff": "patch_first", "steps": [
            step("impl", "codex", "implementer", "change"),
            step("rev", "claude", "reviewer", "look [sim:echo_prompt]"),
        ]}),
    );
    // manual: a planted patch is applied before s2, which then pauses so
    // the test can plant it; a missing and an unsafe patch fail clearly.
    let mut gate = step("gate", "opencode", "planner", "[sim:fail_attempts=1]");
    gate["on_failure"] = json!("ask_human");
    let mut apply = step("apply", "opencode", "planner", "go");
    apply["apply_patches_from"] = json!(["extra/fix.diff"]);
    apply["on_failure"] = json!("continue");
    let mut missing = step("missing", "opencode", "planner", "go");
    missing["apply_patches_from"] = json!(["extra/none.diff"]);
    missing["on_failure"] = json!("continue");
    let mut evil = step("evil", "opencode", "planner", "go");
    evil["apply_patches_from"] = json!(["extra/evil.diff"]);
    evil["on_failure"] = json!("continue");
    let manual = submit(
        &o,
        json!({"goal": "apply", "steps": [gate, apply, missing, evil]}),
    );
    o.drain("r-handoff");
    let logs = text(&o, &pf, "steps/rev/logs.txt");
    assert!(logs.contains("--- steps/impl/patch.diff ---"), "{logs}");
    assert!(logs.contains("+++ b/orch-sim/impl.md"), "{logs}");

    assert_eq!(o.status_json(&manual)["state"], "awaiting_approval");
    let extra = o.artifacts().join(&manual).join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(
        extra.join("fix.diff"),
        "diff --git a/fixed.txt b/fixed.txt\nnew file mode 100644\n--- /dev/null\n+++ b/fixed.txt\n@@ -0,0 +1 @@\n+fixed\n",
    )
    .unwrap();
    std::fs::write(
        extra.join("evil.diff"),
        "--- a/../../escape.txt\n+++ b/../../escape.txt\n@@ -0,0 +1 @@\n+x\n",
    )
    .unwrap();
    assert!(o.orch(&["approve", &manual], None).status.success());
    o.drain("r-handoff2");
    let ws = work_dir(&o, &manual);
    assert_eq!(
        std::fs::read_to_string(ws.join("fixed.txt")).unwrap(),
        "fixed\n"
    );
    let r = o.read_json(&format!("{manual}/steps/apply/result.json"));
    assert_eq!(r["status"], "success", "{r:#}");
    // The applied patch is an input, not the step's own change.
    assert!(!text(&o, &manual, "steps/apply/patch.diff").contains("fixed.txt"));
    assert!(text(&o, &manual, "steps/apply/logs.txt").contains("extra/fix.diff: applied"));
    let r = o.read_json(&format!("{manual}/steps/missing/result.json"));
    assert_eq!(r["error"]["code"], "missing_patch", "{r:#}");
    let r = o.read_json(&format!("{manual}/steps/evil/result.json"));
    assert_eq!(r["error"]["code"], "invalid_patch_path", "{r:#}");
    assert!(!o.root().join("escape.txt").exists());
}

#[test]
fn logs_follow_reports_steps_until_the_job_ends() {
    let o = Orch::new();
    let id = submit(
        &o,
        json!({"goal": "follow", "steps": [
            step("s1", "opencode", "planner", "[sim:sleep=300]"),
            step("s2", "codex", "implementer", "[sim:sleep=300]"),
        ]}),
    );
    let mut follow = o.cmd("orch");
    follow
        .args(["logs", &id, "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = follow.spawn().unwrap();
    o.drain("r-follow");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("==> steps/s1/logs.txt <=="), "{stdout}");
    assert!(stdout.contains("==> steps/s2/logs.txt <=="), "{stdout}");
    assert!(stderr.contains("step s2: success"), "{stderr}");
    assert!(stderr.contains("ended: status success"), "{stderr}");
}
