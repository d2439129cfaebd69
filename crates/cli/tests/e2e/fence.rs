//! Ownership under faults (issue 9): a paused owner never writes after the
//! job is finished by another runner; a lease survives durable barriers
//! slower than the lease; an agent dies with its SIGKILLed runner.
//!
//! Faults are injected through the durable layer's test seam
//! (`ORCH_FAULT_*`, honoured by debug builds only).

use crate::pipeline::{no_sandbox, procs_in, real_orch, step, submit};
use crate::support::*;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;

fn settled(o: &Orch) -> bool {
    o.names("running").is_empty() && o.names("pending").is_empty()
}

/// A small deterministic generator (xorshift64*), seeded per run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One trial: runner `paused` (slow barriers, so a pause often lands
/// between the renames of one publish) is SIGSTOPped at `pause_ms` after
/// its claim, for longer than its lease; `rescuer` reaps and finishes the
/// job; then `paused` resumes and exits. Nothing of the finished job may
/// change afterwards: artifacts, workspace, queue.
fn paused_owner_trial(pause_ms: u64) {
    let o = Orch::new()
        .env("RUNNER_LEASE_SEC", "2")
        .env("SIMULATION_STEP_MS", "150")
        .env("RUNNER_SHUTDOWN_GRACE_SEC", "5");
    let id = submit(
        &o,
        json!({"goal": "pause me", "steps": [
            step("plan", "opencode", "planner", "plan it"),
            step("impl", "codex", "implementer", "write it"),
            step("review", "claude", "reviewer", "check it"),
        ]}),
    );
    let mut paused = o
        .runner(&["--id", "paused"])
        .env("ORCH_FAULT_BARRIER_DELAY_MS", "120")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the claim by `paused`", Duration::from_secs(30), || {
        o.names("running")
            .iter()
            .any(|n| n.ends_with("@paused.json"))
    });
    std::thread::sleep(Duration::from_millis(pause_ms));
    signal(&paused, nix::sys::signal::Signal::SIGSTOP);
    let mut rescuer = o
        .runner(&["--id", "rescuer"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The rescuer finishes the job. If the pause caught `paused` inside
    // one rename's fence hold, the rescuer waits for that rename: resume
    // the paused runner only then (it must not write anything after).
    let finished = || o.names("done").len() + o.names("failed").len() == 1 && settled(&o);
    let mut resumed = false;
    let t0 = std::time::Instant::now();
    while !finished() {
        if !resumed && t0.elapsed() > Duration::from_secs(30) {
            signal(&paused, nix::sys::signal::Signal::SIGCONT);
            resumed = true;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the job did not finish (pause at {pause_ms} ms)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let arts = o.artifacts().join(&id);
    let work = o.root().join("workspaces").join(&id).join("work");
    let before = (
        file_tree(&arts),
        file_tree(&work),
        o.names("done"),
        o.names("failed"),
    );
    // Resume the stale owner and let it run out: SIGTERM makes it finish
    // (or abandon) whatever it held before it exits.
    if !resumed {
        signal(&paused, nix::sys::signal::Signal::SIGCONT);
    }
    sigterm(&paused);
    let st = paused.wait().unwrap();
    assert!(st.success(), "paused runner exit: {st:?}");
    let after = (
        file_tree(&arts),
        file_tree(&work),
        o.names("done"),
        o.names("failed"),
    );
    let changed: Vec<&String> = after
        .0
        .iter()
        .filter(|(k, v)| before.0.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .chain(
            after
                .1
                .iter()
                .filter(|(k, v)| before.1.get(*k) != Some(*v))
                .map(|(k, _)| k),
        )
        .collect();
    assert!(
        changed.is_empty(),
        "pause at {pause_ms} ms: the stale owner changed {changed:?} after the job was finished"
    );
    let gone: Vec<&String> = before
        .0
        .keys()
        .chain(before.1.keys())
        .filter(|k| !after.0.contains_key(*k) && !after.1.contains_key(*k))
        .collect();
    assert!(
        gone.is_empty(),
        "pause at {pause_ms} ms: the stale owner removed {gone:?}"
    );
    assert_eq!(
        (&before.2, &before.3),
        (&after.2, &after.3),
        "pause at {pause_ms} ms: the queue changed"
    );
    assert!(
        before == after,
        "pause at {pause_ms} ms: the finished job changed"
    );
    // And what the newer attempt left is one consistent, finished job.
    let status = o.status_json(&id);
    assert_eq!(
        status["status"], "success",
        "pause at {pause_ms} ms: {status}"
    );
    let state: Value = o.read_json(&format!("{id}/state.json"));
    assert_eq!(state["status"], "success", "{state}");
    for s in ["plan", "impl", "review"] {
        let r: Value = o.read_json(&format!("{id}/steps/{s}/result.json"));
        assert_eq!(r["status"], "success", "step {s}: {r}");
    }
    sigterm(&rescuer);
    assert!(rescuer.wait().unwrap().success());
}

#[test]
fn a_paused_owner_never_writes_after_another_runner_finished_its_job() {
    // Long form: ORCH_FENCE_TRIALS=50 (or more); ORCH_FENCE_SEED replays.
    let trials: u64 = std::env::var("ORCH_FENCE_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let seed = seed_from_env("ORCH_FENCE_SEED") | 1;
    eprintln!("paused-owner trials: {trials}, ORCH_FENCE_SEED={seed}");
    let mut rng = Rng(seed);
    for t in 0..trials {
        // Anywhere from the claim to well into the job's last step.
        let pause_ms = rng.next() % 6000;
        eprintln!("trial {t}: pause at {pause_ms} ms");
        paused_owner_trial(pause_ms);
    }
}

#[test]
fn a_lease_survives_barriers_slower_than_the_lease_and_the_job_runs_once() {
    let o = Orch::new()
        .env("RUNNER_LEASE_SEC", "2")
        .env("SIMULATION_STEP_MS", "50");
    let id = submit(
        &o,
        json!({"goal": "slow disk", "steps": [step("only", "opencode", "planner", "plan it")]}),
    );
    // Every barrier of `slow` takes longer than the whole lease.
    let mut slow = o
        .runner(&["--id", "slow"])
        .env("ORCH_FAULT_BARRIER_DELAY_MS", "2100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the claim by `slow`", Duration::from_secs(60), || {
        o.names("running").iter().any(|n| n.ends_with("@slow.json"))
    });
    // A healthy runner that would reap a starved lease.
    let mut fast = o.spawn_runner(&["--id", "fast"]);
    wait_for("the job to end", Duration::from_secs(300), || {
        o.names("done").len() + o.names("failed").len() == 1 && settled(&o)
    });
    let done = o.names("done");
    assert_eq!(done.len(), 1, "failed: {:?}", o.names("failed"));
    let e = fsqueue::Entry::parse(&done[0]).unwrap();
    assert_eq!(
        (e.attempt, e.reaps),
        (1, 0),
        "claimed once and never reaped: {}",
        done[0]
    );
    let r = o.status_json(&id);
    assert_eq!(r["status"], "success", "{r}");
    let result: Value = o.read_json(&format!("{id}/result.json"));
    assert_eq!(result["metrics"]["queue_attempt"], 1, "{result}");
    for c in [&slow, &fast] {
        sigterm(c);
    }
    assert!(slow.wait().unwrap().success());
    assert!(fast.wait().unwrap().success());
}

#[test]
fn an_agent_dies_with_its_sigkilled_runner() {
    let o = real_orch();
    let mut hang = step("hang", "claude", "reviewer", "wait [fake:sleep]");
    hang["timeout_sec"] = json!(600);
    let id = submit(
        &o,
        json!({"goal": "orphan", "policy": no_sandbox(), "steps": [hang]}),
    );
    let work = o.root().join("workspaces").join(&id).join("work");
    let mut r = o.spawn_runner(&["--id", "doomed"]);
    wait_for("the agent to start", Duration::from_secs(60), || {
        !procs_in(&work).is_empty()
    });
    sigkill(&mut r);
    // Bounded wait; the assertion is on the outcome, not the time.
    let t0 = std::time::Instant::now();
    while !procs_in(&work).is_empty() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = procs_in(&work);
    // Do not leave a sleeping agent behind whatever the outcome.
    for p in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        left.is_empty(),
        "agents {left:?} outlived their SIGKILLed runner"
    );
}
