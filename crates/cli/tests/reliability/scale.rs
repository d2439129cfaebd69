//! Scale (issue 13, item 6): a runner starting over a deep `pending/`
//! (start-up recovery + index build, then its first claim), and an inotify
//! queue overflow (more notifications than the kernel keeps) after which
//! every job is still claimed, found by the rescan.
//!
//! CI form: 20,000 pending jobs; long form `ORCH_SCALE_JOBS=100000`. The
//! start-up time is printed as a benchmark figure (docs/BENCHMARKS.md),
//! never asserted.

use crate::invariants;
use crate::storm::{enqueue_noop_jobs, env_num};
use crate::support::*;
use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn a_runner_starts_over_a_deep_pending_queue_and_claims() {
    let n = env_num("ORCH_SCALE_JOBS", 20_000) as usize;
    let o = Orch::new();
    let t = Instant::now();
    let ids = enqueue_noop_jobs(&o, n);
    eprintln!(
        "scale: {n} jobs enqueued in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let mut r = o
        .runner(&["--id", "deep", "--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the first claim", Duration::from_secs(600), || {
        !o.names("running").is_empty() || !o.names("done").is_empty()
    });
    let first_claim = t0.elapsed();
    wait_for("the first job to finish", Duration::from_secs(600), || {
        !o.names("done").is_empty()
    });
    sigterm(&r);
    assert!(r.wait().unwrap().success());
    eprintln!(
        "scale: {n} pending jobs: runner start (recovery + index) to first claim {:.2} s",
        first_claim.as_secs_f64()
    );
    // Nothing lost or duplicated; the rest is still pending.
    let expect = invariants::Expect {
        enqueued: &ids,
        acknowledged: &ids,
        all_terminal: false,
    };
    let rep = invariants::check(&o.queue(), &o.artifacts(), &expect);
    rep.assert_ok("deep queue");
    let pending = rep.by_state.get("pending").map_or(0, |s| s.len());
    let done = rep.by_state.get("done").map_or(0, |s| s.len());
    assert_eq!(pending + done, n, "{rep:?}");
    assert!(o.names("running").is_empty(), "{:?}", o.names("running"));
    assert!(o.names("failed").is_empty(), "{:?}", o.names("failed"));
}

const MAX_QUEUED: &str = "/proc/sys/fs/inotify/max_queued_events";

/// Lowers `fs.inotify.max_queued_events` until dropped (it is read when
/// an inotify instance is created, so only instances made meanwhile get
/// the small queue).
struct QueueLimit(Option<String>);

impl QueueLimit {
    fn lower(to: u32) -> Self {
        let old = std::fs::read_to_string(MAX_QUEUED).ok();
        match std::fs::write(MAX_QUEUED, to.to_string()) {
            Ok(()) => Self(old),
            Err(_) => Self(None),
        }
    }

    fn restore(&mut self) {
        if let Some(v) = self.0.take() {
            std::fs::write(MAX_QUEUED, v.trim()).expect("restore max_queued_events");
        }
    }
}

impl Drop for QueueLimit {
    fn drop(&mut self) {
        self.restore();
    }
}

fn current_limit() -> u64 {
    std::fs::read_to_string(MAX_QUEUED)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16384)
}

#[test]
fn an_inotify_overflow_still_gets_every_job_claimed_by_the_rescan() {
    let o = Orch::new();
    std::fs::create_dir_all(o.queue()).unwrap();
    // As root, a runner made with a 64-event queue; otherwise a burst
    // larger than the system's queue (slower, same promise).
    let mut limit = QueueLimit::lower(64);
    let lowered = limit.0.is_some();
    let queued = if lowered { 64 } else { current_limit() };
    let mut r = o
        .runner(&["--id", "flood", "--concurrency", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the runner's heartbeat", Duration::from_secs(60), || {
        o.queue().join("runners/flood.json").exists()
    });
    limit.restore();
    // Each enqueue makes at least two events in pending/ (the temp file's
    // creation and its rename into place); the runner sleeps through the
    // whole burst, so the kernel drops what its queue cannot hold.
    let n = (queued as usize / 2 + 200).max(300);
    eprintln!("inotify overflow: queue {queued} events (lowered: {lowered}), burst of {n} jobs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(r.id() as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let ids: BTreeSet<String> = enqueue_noop_jobs(&o, n);
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(r.id() as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    wait_for("every job to finish", Duration::from_secs(900), || {
        o.names("done").len() + o.names("failed").len() == n && o.names("running").is_empty()
    });
    eprintln!(
        "inotify overflow: {n} jobs done {:.1} s after the runner resumed",
        t0.elapsed().as_secs_f64()
    );
    sigterm(&r);
    assert!(r.wait().unwrap().success());
    let expect = invariants::Expect {
        enqueued: &ids,
        acknowledged: &ids,
        all_terminal: true,
    };
    invariants::check(&o.queue(), &o.artifacts(), &expect).assert_ok("inotify overflow");
    assert!(o.names("failed").is_empty(), "{:?}", o.names("failed"));
}
