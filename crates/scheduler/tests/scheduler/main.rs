//! `orch-scheduler` as a process: flags, configuration errors, and a clean
//! SIGTERM shutdown.

mod cron;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

fn scheduler(dir: &std::path::Path) -> Command {
    #[allow(clippy::disallowed_methods)] // the binary under test
    let mut c = Command::new(env!("CARGO_BIN_EXE_orch-scheduler"));
    c.current_dir(dir)
        .env_clear()
        .env("QUEUE_ROOT", dir.join("q"))
        .env("ARTIFACTS_ROOT", dir.join("a"));
    c
}

/// Polls `cond` every 50 ms until it holds; fails after `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERMs the scheduler and checks it exits 0.
fn stop(mut child: std::process::Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(child.wait().unwrap().success());
}

#[test]
fn help_version_and_bad_config() {
    let d = tempfile::tempdir().unwrap();
    assert!(
        scheduler(d.path())
            .arg("--help")
            .output()
            .unwrap()
            .status
            .success()
    );
    let out = scheduler(d.path()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("orch-scheduler "));
    let out = scheduler(d.path())
        .env("RUNNER_LEASE_SEC", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RUNNER_LEASE_SEC"));
}

#[test]
fn sigterm_stops_it_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let child = scheduler(d.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the queue directory", Duration::from_secs(20), || {
        d.path().join("q/pending").is_dir()
    });
    stop(child);
}

#[test]
fn retention_settings_are_checked() {
    let d = tempfile::tempdir().unwrap();
    for (var, val) in [
        ("RETENTION_INTERVAL_SEC", "-1"),
        ("RETENTION_INTERVAL_SEC", "99999999999999999999"),
        ("ARTIFACTS_TTL_SEC", "0"),
        ("WORKSPACES_TTL_SEC", "soon"),
        ("DEDUP_WINDOW_SEC", "60"),
    ] {
        let out = scheduler(d.path()).env(var, val).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={val}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(var),
            "{var}={val}"
        );
    }
}

/// A job as retention finds it: its queue file in `state` aged `age`, an
/// id reservation, an artifacts dir and a workspace.
fn plant(root: &std::path::Path, id: &str, state: &str, age: Duration) -> std::path::PathBuf {
    let q = fsqueue::Queue::open(root.join("q")).unwrap();
    let e = fsqueue::Entry::new(5, fsqueue::name::next_seq(), id);
    let path = q.root().join(state).join(e.file_name());
    std::fs::write(&path, format!(r#"{{"job_id":"{id}"}}"#)).unwrap();
    std::fs::write(q.root().join("ids").join(id), b"").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
    std::fs::create_dir_all(root.join("a").join(id).join("steps")).unwrap();
    std::fs::write(root.join("a").join(id).join("job.json"), b"{}").unwrap();
    std::fs::create_dir_all(root.join("w").join(id).join("work/src")).unwrap();
    std::fs::write(
        root.join("w").join(id).join("work/src/main.rs"),
        b"fn main() {}",
    )
    .unwrap();
    path
}

#[test]
fn retention_deletes_what_terminal_jobs_leave_once_old_enough_and_nothing_else() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let day = Duration::from_secs(86_400);
    let old = plant(root, "old-done-0001", "done", 9 * day);
    let mid = plant(root, "mid-failed-0002", "failed", 3 * day);
    let fresh = plant(root, "fresh-done-0003", "done", Duration::ZERO);
    let waiting = plant(root, "old-waiting-0004", "awaiting_approval", 30 * day);
    let queued = plant(root, "old-pending-0005", "pending", 30 * day);
    // A symlink out of an old workspace: its target must survive.
    let outside = root.join("outside.txt");
    std::fs::write(&outside, b"keep me").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("w/old-done-0001/work/link")).unwrap();
    // A read-only directory inside it (as Go's module cache leaves them;
    // run as root, this only shows the fallback does no harm).
    let ro = root.join("w/old-done-0001/work/src");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let child = scheduler(root)
        .env("WORKSPACES_ROOT", root.join("w"))
        .env("RETENTION_INTERVAL_SEC", "1")
        .env("ARTIFACTS_TTL_SEC", (4 * 86_400).to_string())
        .env("WORKSPACES_TTL_SEC", (2 * 86_400).to_string())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("a sweep", Duration::from_secs(20), || {
        !old.exists() && !root.join("w/mid-failed-0002").exists()
    });
    stop(child);
    let gone = |p: &str| !root.join(p).exists();
    // Older than everything: all of it, and the id is free again.
    assert!(gone("w/old-done-0001") && gone("a/old-done-0001") && gone("q/ids/old-done-0001"));
    assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");
    // Older than the workspace TTL only.
    assert!(gone("w/mid-failed-0002"));
    assert!(!gone("a/mid-failed-0002/job.json") && mid.exists());
    // Fresh, or not terminal: untouched however old.
    for (id, file) in [
        ("fresh-done-0003", &fresh),
        ("old-waiting-0004", &waiting),
        ("old-pending-0005", &queued),
    ] {
        assert!(file.exists(), "{id}");
        assert!(!gone(&format!("a/{id}/job.json")), "{id}");
        assert!(!gone(&format!("w/{id}/work/src/main.rs")), "{id}");
        assert!(!gone(&format!("q/ids/{id}")), "{id}");
    }
    // No tombstones left behind.
    let left: Vec<_> = std::fs::read_dir(root.join("w"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(left.iter().all(|n| !n.starts_with('.')), "{left:?}");
}

/// Runs the scheduler with retention every second until `done` holds.
fn sweep_until(root: &std::path::Path, what: &str, done: impl Fn() -> bool) {
    let child = scheduler(root)
        .env("WORKSPACES_ROOT", root.join("w"))
        .env("METRICS_DIR", root.join("m"))
        .env("RUNNER_LEASE_SEC", "1")
        .env("RETENTION_INTERVAL_SEC", "1")
        .env("ARTIFACTS_TTL_SEC", (4 * 86_400).to_string())
        .env("WORKSPACES_TTL_SEC", (2 * 86_400).to_string())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(what, Duration::from_secs(30), done);
    stop(child);
}

#[test]
fn a_job_rejected_after_a_long_wait_is_kept_for_the_whole_ttl() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let day = Duration::from_secs(86_400);
    // Waited 30 days for approval, then rejected (and cancelled) just now.
    plant(root, "waited-rejected-01", "awaiting_approval", 30 * day);
    plant(root, "waited-cancelled-02", "pending", 30 * day);
    // A marker that shows a sweep happened.
    let marker = plant(root, "old-done-marker-03", "done", 9 * day);
    let q = fsqueue::Queue::open(root.join("q")).unwrap();
    let store = artifacts::ArtifactStore::new(root.join("a"));
    for (id, action) in [
        ("waited-rejected-01", artifacts::control::Action::Reject),
        ("waited-cancelled-02", artifacts::control::Action::Cancel),
    ] {
        let id = contracts::JobId::parse(id).unwrap();
        artifacts::control::apply(&q, &store, &id, action).unwrap();
    }
    sweep_until(root, "a sweep", || !marker.exists());
    for id in ["waited-rejected-01", "waited-cancelled-02"] {
        let loc = q.find(id).unwrap().expect("the job is still there");
        assert_eq!(loc.state, fsqueue::State::Failed);
        assert!(root.join("a").join(id).join("job.json").is_file(), "{id}");
        assert!(root.join("w").join(id).is_dir(), "{id}");
        assert!(root.join("q/ids").join(id).exists(), "{id}");
    }
}

fn set_age(path: &std::path::Path, age: Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

#[test]
fn housekeeping_removes_dead_runners_stale_requests_and_orphan_temps() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let q = fsqueue::Queue::open(root.join("q")).unwrap();
    let runners = root.join("q/runners");
    let metrics = root.join("m");
    std::fs::create_dir_all(&metrics).unwrap();
    let hour = Duration::from_secs(3600);
    // A dead runner: free lock, old heartbeat, metrics file.
    for id in ["dead-1", "live-1", "owner-1"] {
        std::fs::write(runners.join(format!("{id}.lock")), b"").unwrap();
        std::fs::write(runners.join(format!("{id}.json")), b"{}").unwrap();
        set_age(&runners.join(format!("{id}.json")), hour);
        std::fs::write(metrics.join(format!("runner-{id}.prom")), b"x 1\n").unwrap();
    }
    // A live one holds its lock.
    let _live = fsqueue::RunnerLock::acquire(&q, "live-1").unwrap();
    // A dead one that still owns a claim keeps its lock (the reaper's fast
    // path needs it); the scheduler's reaper requeues the claim, and then
    // its files go too.
    let e = fsqueue::Entry::new(5, fsqueue::name::next_seq(), "owned-job-01").claimed_by("owner-1");
    std::fs::write(
        root.join("q/running").join(e.file_name()),
        br#"{"job_id":"owned-job-01"}"#,
    )
    .unwrap();
    // A request for a claim that ended (the job is done), one of the old
    // form, and orphan temp files here and there; a fresh temp file stays.
    let done = fsqueue::Entry::new(5, fsqueue::name::next_seq(), "done-job-0001");
    std::fs::write(root.join("q/done").join(done.file_name()), b"{}").unwrap();
    std::fs::write(root.join("q/control/done-job-0001~1.cancel"), b"").unwrap();
    std::fs::write(root.join("q/control/done-job-0001.cancel"), b"").unwrap();
    let old_temps = [
        root.join("q/pending/.orch-tmp-1-2-x"),
        root.join("q/control/.orch-tmp-1-3-y"),
        root.join("q/.orch-tmp-1-4-z"),
        root.join("a/done-job-0001/.orch-tmp-1-5-state.json"),
        root.join("a/done-job-0001/steps/s1/.orch-tmp-1-6-result.json"),
        metrics.join(".orch-tmp-1-7-runner"),
    ];
    for t in &old_temps {
        std::fs::create_dir_all(t.parent().unwrap()).unwrap();
        std::fs::write(t, b"partial").unwrap();
        set_age(t, hour);
    }
    let fresh = root.join("q/done/.orch-tmp-1-8-fresh");
    std::fs::write(&fresh, b"in progress").unwrap();
    // Quarantine reasons: one whose file never arrived (old: goes), one
    // beside its file (stays), one just written (a quarantine in progress:
    // stays).
    let corrupt = root.join("q/corrupt");
    let orphan_reason = corrupt.join("11-x.json.reason");
    let kept_reason = corrupt.join("12-y.json.reason");
    let young_reason = corrupt.join("13-z.json.reason");
    for r in [&orphan_reason, &kept_reason, &young_reason] {
        std::fs::write(r, b"bad\n").unwrap();
    }
    std::fs::write(corrupt.join("12-y.json"), b"{").unwrap();
    set_age(&orphan_reason, hour);
    set_age(&kept_reason, hour);
    let gone = |p: &std::path::Path| !p.exists();
    sweep_until(root, "dead runners' files and old temps to go", || {
        gone(&runners.join("dead-1.lock"))
            && gone(&runners.join("owner-1.lock"))
            && old_temps.iter().all(|t| gone(t))
            && gone(&orphan_reason)
            && std::fs::read_dir(root.join("q/control")).unwrap().count() == 0
    });
    for f in ["dead-1.json", "owner-1.json"] {
        assert!(gone(&runners.join(f)), "{f}");
    }
    for f in ["runner-dead-1.prom", "runner-owner-1.prom"] {
        assert!(gone(&metrics.join(f)), "{f}");
    }
    // The claim went back to pending before its owner's files went.
    assert_eq!(
        std::fs::read_dir(root.join("q/pending")).unwrap().count(),
        1
    );
    // The live runner keeps everything; the fresh temp file stays.
    assert!(runners.join("live-1.lock").exists());
    assert!(runners.join("live-1.json").exists());
    assert!(metrics.join("runner-live-1.prom").exists());
    assert!(fresh.exists());
    assert!(kept_reason.exists() && young_reason.exists());
}
