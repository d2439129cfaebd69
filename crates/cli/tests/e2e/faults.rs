//! Trust under faults (issue 9), end to end with the real binaries:
//! operator requests that belong to one claim, recovery that leaves live
//! work alone, `goto` counts that survive a reclaim.

use crate::pipeline::{step, submit};
use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

/// Claims every pending job as a runner that then vanishes (no lock file,
/// no heartbeat): the claims stay in running/ with nobody to consume a
/// request.
fn claim_all_as_ghost(o: &Orch) -> Vec<fsqueue::Claim> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let q = fsqueue::Queue::open(o.queue()).unwrap();
    rt.block_on(async {
        let c = fsqueue::Claimer::new(q, "ghost").unwrap();
        let mut out = Vec::new();
        while let Some(claim) = c.try_claim().unwrap() {
            out.push(claim);
        }
        out
    })
}

fn orch_ok(o: &Orch, args: &[&str]) {
    let out = o.orch(args, None);
    assert!(
        out.status.success(),
        "orch {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The step runs long enough for the runner's heartbeat to look at control
/// requests several times.
fn slowish(goal: &str) -> Value {
    json!({"goal": goal, "steps": [step("s1", "opencode", "planner", "[sim:sleep=1200]")]})
}

#[test]
fn unlock_then_retry_runs_to_success() {
    let o = Orch::new();
    let id = submit(&o, slowish("unlock me"));
    let claims = claim_all_as_ghost(&o);
    assert_eq!(claims.len(), 1);
    // Nobody consumes the cancel request the unlock leaves for its claim.
    orch_ok(&o, &["unlock", &id]);
    orch_ok(&o, &["retry", &id]);
    o.drain("r-after-unlock");
    let st = o.status_json(&id);
    assert_eq!(st["state"], "done", "{st:#}");
    assert_eq!(st["status"], "success", "{st:#}");
    let left: Vec<_> = std::fs::read_dir(o.queue().join("control"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "stale requests left: {left:?}");
}

#[test]
fn concurrent_operator_actions_leave_no_request_that_cancels_a_retried_job() {
    let o = Orch::new();
    let ids: Vec<String> = (0..10)
        .map(|i| submit(&o, slowish(&format!("race {i}"))))
        .collect();
    assert_eq!(claim_all_as_ghost(&o).len(), ids.len());
    // Per job, a cancel, an unlock and a second cancel at once: whichever
    // order they land in, cancels of a running claim write requests.
    let mut children = Vec::new();
    for id in &ids {
        for action in ["cancel", "unlock", "cancel"] {
            let mut c = o.cmd("orch");
            c.args([action, id.as_str()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            children.push(c.spawn().unwrap());
        }
    }
    for mut c in children {
        // Exit codes vary with the order (a cancel after the unlock finds
        // the job failed): only the end state matters.
        c.wait().unwrap();
    }
    for id in &ids {
        let st = o.status_json(id);
        assert_eq!(st["state"], "failed", "{st:#}");
        orch_ok(&o, &["retry", id]);
    }
    o.drain("r-after-race");
    for id in &ids {
        let st = o.status_json(id);
        assert_eq!(
            (st["state"].as_str(), st["status"].as_str()),
            (Some("done"), Some("success")),
            "a retried job was stopped by a stale request: {st:#}"
        );
    }
}

fn agents_config(o: &Orch) -> String {
    let p = o.root().join("agents.json");
    std::fs::write(
        &p,
        json!({"agents": [{"name": "mybot", "argv": ["cat"], "output_format": "text",
                           "binaries": ["cat"]}]})
        .to_string(),
    )
    .unwrap();
    p.display().to_string()
}

fn corrupt_files(o: &Orch) -> Vec<String> {
    std::fs::read_dir(o.queue().join("corrupt"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_runner_with_a_smaller_agent_registry_quarantines_nothing_live() {
    // One installation; only some of its processes know the custom agent.
    let plain = Orch::new();
    let cfg = agents_config(&plain);
    let with_agent = |args: &[&str], input: Option<&[u8]>| {
        let mut c = plain.cmd("orch");
        c.env("AGENTS_CONFIG", &cfg).args(args);
        run_with_input(c, input)
    };
    let job = |goal: &str, prompt: &str| {
        json!({"goal": goal, "steps": [step("s1", "mybot", "planner", prompt)]}).to_string()
    };
    let submit_with_agent = |doc: String| {
        let out = with_agent(&["submit", "-"], Some(doc.as_bytes()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let busy = submit_with_agent(job("busy", "[sim:sleep=3000]"));
    let mut big = plain
        .runner(&["--id", "big", "--concurrency", "1"])
        .env("AGENTS_CONFIG", &cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the big runner to claim", Duration::from_secs(30), || {
        plain
            .names("running")
            .iter()
            .any(|n| n.contains(&busy) && n.ends_with("@big.json"))
    });
    // Waits in pending while `big` is busy.
    let queued = submit_with_agent(job("queued", "quick"));
    // `orch recover` and a runner without the custom agent: neither takes
    // the live claim nor the pending job.
    let out = plain.orch(&["recover", "--json"], None);
    assert!(out.status.success());
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["quarantined"], json!([]), "{rep:#}");
    let mut small = plain.spawn_runner(&["--id", "small"]);
    // `small` claims the queued job once, sees it cannot run it and puts
    // it back (attempt 1 in pending/), then passes over it.
    wait_for(
        "the small runner to give the job back",
        Duration::from_secs(30),
        || {
            plain.names("pending").iter().any(|n| {
                fsqueue::Entry::parse(n).is_some_and(|e| e.job_id == queued && e.attempt >= 1)
            }) || plain.names("done").iter().any(|n| n.contains(&queued))
        },
    );
    assert_eq!(corrupt_files(&plain), Vec::<String>::new());
    wait_for("both jobs to finish", Duration::from_secs(60), || {
        plain.names("done").len() == 2
    });
    for id in [&busy, &queued] {
        let out = with_agent(&["status", id, "--json"], None);
        let st: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(st["status"], "success", "{st:#}");
    }
    // Given back, not looped: a handful of claims, not thousands.
    let done = plain.names("done");
    let e = done
        .iter()
        .filter_map(|n| fsqueue::Entry::parse(n))
        .find(|e| e.job_id == queued)
        .unwrap();
    assert!(e.attempt <= 3, "claimed {} times", e.attempt);
    assert_eq!(corrupt_files(&plain), Vec::<String>::new());
    sigterm(&small);
    sigterm(&big);
    assert!(small.wait().unwrap().success());
    assert!(big.wait().unwrap().success());
}

#[test]
fn the_goto_count_survives_a_reclaim() {
    let o = Orch::new()
        .env("RUNNER_MAX_GOTO", "3")
        .env("RUNNER_LEASE_SEC", "2");
    let mut bad = step("s2", "opencode", "planner", "[sim:fatal] [sim:sleep=2000]");
    bad["on_failure"] = json!("goto:s1");
    let id = submit(
        &o,
        json!({"goal": "loop", "steps": [step("s1", "opencode", "planner", "quick"), bad]}),
    );
    let state = o.artifacts().join(&id).join("state.json");
    let read = || -> Value {
        std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    };
    let mut a = o.spawn_runner(&["--id", "first"]);
    // Two jumps taken; s2's third run is under way.
    wait_for("s2's third attempt", Duration::from_secs(60), || {
        let s = read();
        s["steps"]["s2"]["attempt"] == 3 && s["steps"]["s2"]["status"] == "running"
    });
    sigkill(&mut a);
    o.drain("second");
    let st = o.status_json(&id);
    assert_eq!(st["error"]["code"], "goto_limit", "{st:#}");
    let s = read();
    // Three jumps in all: s2 ran 1 + 3 times, plus the run the kill cut off.
    assert_eq!(s["gotos"], 3, "{s:#}");
    assert_eq!(s["steps"]["s2"]["attempt"], 5, "{s:#}");
}

/// A mount made by a test, lazily unmounted when dropped.
struct Mount(std::path::PathBuf);

impl Mount {
    fn run(args: &[&str]) {
        let out = std::process::Command::new("mount")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A tmpfs of `size` over `dir`.
    fn tmpfs(dir: &std::path::Path, size: &str) -> Self {
        let d = dir.to_str().unwrap();
        Self::run(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", d]);
        Self(dir.to_path_buf())
    }

    /// `dir` itself, read-only.
    fn read_only(dir: &std::path::Path) -> Self {
        let d = dir.to_str().unwrap();
        Self::run(&["--bind", d, d]);
        let m = Self(dir.to_path_buf());
        Self::run(&["-o", "remount,ro,bind", d]);
        m
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts filesystems and needs root (.ci/run runs it as root)"
    );
}

/// Fills the filesystem holding `path` until it refuses another byte.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [1 << 20, 4096, 1] {
        let buf = vec![7u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
}

fn heartbeat(o: &Orch, id: &str) -> Value {
    std::fs::read(o.queue().join("runners").join(format!("{id}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// Every job ends `success` once the fault is gone, none ever in failed/.
fn assert_all_succeed(o: &Orch, ids: &[String]) {
    wait_for("every job to finish", Duration::from_secs(120), || {
        o.names("done").len() + o.names("failed").len() == ids.len()
    });
    assert_eq!(o.names("failed"), Vec::<String>::new());
    for id in ids {
        let st = o.status_json(id);
        assert_eq!(st["status"], "success", "{st:#}");
    }
}

#[test]
#[ignore = "mounts a tmpfs: needs root; .ci/run runs it as root"]
fn a_full_disk_fails_no_pending_job() {
    require_root();
    let o = Orch::new().env("RUNNER_LEASE_SEC", "3");
    let _m = Mount::tmpfs(o.root(), "24m");
    let mut runner = o.spawn_runner(&["--id", "full", "--concurrency", "2"]);
    wait_for("the runner's heartbeat", Duration::from_secs(30), || {
        heartbeat(&o, "full").is_object()
    });
    // Paused while the backlog arrives and the disk fills up.
    signal(&runner, nix::sys::signal::Signal::SIGSTOP);
    let ids: Vec<String> = (0..20)
        .map(|i| submit(&o, json!({"goal": format!("backlog {i}")})))
        .collect();
    let filler = o.root().join("filler");
    fill(&filler);
    signal(&runner, nix::sys::signal::Signal::SIGCONT);
    wait_for(
        "the runner to hold back (or to fail a job)",
        Duration::from_secs(60),
        || {
            let hb = heartbeat(&o, "full");
            !o.names("failed").is_empty()
                || (hb["storage_fault"]["kind"] == "ENOSPC"
                    && hb["storage_fault"]["probes"].as_u64() >= Some(2))
        },
    );
    assert_eq!(o.names("failed"), Vec::<String>::new(), "jobs failed");
    let hb = heartbeat(&o, "full");
    assert_eq!(hb["claiming"], false, "{hb:#}");
    // Every job is still waiting (one may be between claim and give-back).
    let waiting = o.names("pending").len() + o.names("running").len();
    assert_eq!(waiting, ids.len());
    std::fs::remove_file(&filler).unwrap();
    assert_all_succeed(&o, &ids);
    // The heartbeat is rewritten periodically: it says so at its next beat.
    wait_for(
        "the heartbeat to clear the fault",
        Duration::from_secs(30),
        || heartbeat(&o, "full")["storage_fault"].is_null(),
    );
    let metrics = std::fs::read_to_string(o.root().join("var/metrics/runner-full.prom")).unwrap();
    assert!(
        metrics.contains("orch_storage_faults_total{kind=\"ENOSPC\"}"),
        "{metrics}"
    );
    sigterm(&runner);
    assert!(runner.wait().unwrap().success());
}

#[test]
#[ignore = "bind-mounts the artifacts read-only: needs root; .ci/run runs it as root"]
fn read_only_artifacts_fail_no_job() {
    require_root();
    let o = Orch::new().env("RUNNER_LEASE_SEC", "3");
    let ids: Vec<String> = (0..5)
        .map(|i| submit(&o, json!({"goal": format!("read-only {i}")})))
        .collect();
    std::fs::create_dir_all(o.artifacts()).unwrap();
    let ro = Mount::read_only(&o.artifacts());
    let mut runner = o.spawn_runner(&["--id", "ro", "--concurrency", "2"]);
    wait_for(
        "the runner to hold back (or to fail a job)",
        Duration::from_secs(60),
        || {
            let hb = heartbeat(&o, "ro");
            !o.names("failed").is_empty()
                || (hb["storage_fault"]["kind"] == "EROFS"
                    && hb["storage_fault"]["probes"].as_u64() >= Some(1))
        },
    );
    assert_eq!(o.names("failed"), Vec::<String>::new(), "jobs failed");
    assert_eq!(o.names("pending").len() + o.names("running").len(), 5);
    drop(ro);
    assert_all_succeed(&o, &ids);
    sigterm(&runner);
    assert!(runner.wait().unwrap().success());
}

/// A receiver that answers 503 until told to accept, then 204; records
/// every request.
struct Gate {
    addr: String,
    accept: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(crate::pipeline::Request, bool)>>>,
}

impl Gate {
    fn start() -> Self {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let gate = Self {
            addr,
            accept: Default::default(),
            seen: Default::default(),
        };
        let (accept, seen) = (gate.accept.clone(), gate.seen.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let Some(req) = crate::pipeline::read_request(&mut c) else {
                    continue;
                };
                let ok = accept.load(Ordering::SeqCst);
                seen.lock().unwrap().push((req, ok));
                let status = if ok {
                    "204 No Content"
                } else {
                    "503 Service Unavailable"
                };
                let _ = write!(
                    c,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        gate
    }

    fn seen(&self) -> Vec<(crate::pipeline::Request, bool)> {
        self.seen.lock().unwrap().clone()
    }
}

#[test]
fn a_callback_survives_a_sigkilled_runner() {
    use crate::pipeline::{callback_signature, header};
    let rx = Gate::start();
    let o = Orch::new()
        .env("CALLBACK_ALLOW_PRIVATE", "1")
        .env("CALLBACK_SECRET", "outbox-key");
    let id = submit(
        &o,
        json!({"goal": "tell me", "callback_url": format!("http://{}/hook", rx.addr)}),
    );
    let mut first = o.spawn_runner(&["--id", "teller"]);
    let entry = o.queue().join("outbox").join(format!("{id}~1.json"));
    wait_for(
        "a refused attempt recorded in the outbox",
        Duration::from_secs(60),
        || {
            std::fs::read(&entry)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|e| e["attempts"].as_array().is_some_and(|a| !a.is_empty()))
        },
    );
    sigkill(&mut first);
    assert_eq!(o.names("done").len(), 1, "the job itself is done");
    rx.accept.store(true, std::sync::atomic::Ordering::SeqCst);
    // Another runner (a restart under a new id) finds the delivery.
    let mut second = o.spawn_runner(&["--id", "restarted"]);
    wait_for("the callback to arrive", Duration::from_secs(60), || {
        rx.seen().iter().any(|(_, ok)| *ok)
    });
    wait_for("callback.json", Duration::from_secs(30), || {
        o.artifacts().join(&id).join("callback.json").is_file()
    });
    sigterm(&second);
    assert!(second.wait().unwrap().success());
    let seen = rx.seen();
    let ids: std::collections::BTreeSet<&str> = seen
        .iter()
        .map(|((h, _), _)| header(h, "x-orch-delivery"))
        .collect();
    assert_eq!(ids.len(), 1, "one delivery id across the restart: {ids:?}");
    let first_body = &seen[0].0.1;
    for ((h, body), _) in &seen {
        assert_eq!(body, first_body, "the same body every time");
        assert_eq!(
            header(h, "x-orch-signature-256"),
            callback_signature(b"outbox-key", body)
        );
        assert_eq!(header(h, "x-orch-job-id"), id);
    }
    let doc: Value = serde_json::from_slice(first_body).unwrap();
    assert_eq!(doc["status"], "success");
    let rec = o.read_json(&format!("{id}/callback.json"));
    assert_eq!(rec["delivered"], true, "{rec:#}");
    let attempts = rec["attempts"].as_array().unwrap();
    // The refused attempt(s) before the kill are kept (one more may have
    // been cut off by the kill before it was recorded).
    assert!(
        attempts.len() >= 2 && attempts.len() <= seen.len(),
        "attempts kept across the restart: {rec:#}"
    );
    assert_eq!(attempts.last().unwrap()["http_status"], 204);
    let left: Vec<_> = std::fs::read_dir(o.queue().join("outbox"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "outbox not emptied: {left:?}");
}

#[test]
fn an_outbox_entry_whose_outcome_did_not_stick_is_dropped_unsent() {
    use crate::pipeline::header;
    let rx = Gate::start();
    rx.accept.store(true, std::sync::atomic::Ordering::SeqCst);
    let o = Orch::new().env("CALLBACK_ALLOW_PRIVATE", "1");
    let url = format!("http://{}/hook", rx.addr);
    let id = submit(&o, json!({"goal": "crashed mid-move", "callback_url": url}));
    // What a runner killed between writing the delivery and moving the job
    // leaves: an entry for claim 1 whose job never reached done/ (it was
    // reaped back to pending/, as here).
    let pending = o.names("pending");
    let e = fsqueue::Entry::parse(&pending[0]).unwrap();
    let claim = e.claimed_by("crashed");
    let mut reaped = claim.unowned();
    reaped.reaps = 1;
    std::fs::rename(
        o.state_dir("pending").join(&pending[0]),
        o.state_dir("pending").join(reaped.file_name()),
    )
    .unwrap();
    let out = o.queue().join("outbox");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join(format!("{id}~1.json")),
        json!({
            "job_id": id, "attempt": 1, "state": "done",
            "running": format!("running/{}", claim.file_name()),
            "committed": format!("done/{}", claim.unowned().file_name()),
            "url": url, "job_status": "success", "delivery_id": "planted",
            "body": "{\"status\":\"success\",\"planted\":true}", "attempts": [],
            "created_at": "2026-01-01T00:00:00Z", "next_at_ms": 0
        })
        .to_string(),
    )
    .unwrap();
    // The job runs again (claim 2) and only its own outcome is sent.
    o.drain("after-crash");
    let st = o.status_json(&id);
    assert_eq!(st["status"], "success", "{st:#}");
    let seen = rx.seen();
    assert_eq!(seen.len(), 1, "one delivery, the real one");
    let ((h, body), _) = &seen[0];
    assert_ne!(header(h, "x-orch-delivery"), "planted");
    let doc: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(doc["job_id"], id.as_str());
    assert!(doc.get("planted").is_none());
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}
