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
    let mut child = scheduler(d.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !d.path().join("q/pending").is_dir() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(20));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(child.wait().unwrap().success());
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
    let mut child = scheduler(root)
        .env("WORKSPACES_ROOT", root.join("w"))
        .env("RETENTION_INTERVAL_SEC", "1")
        .env("ARTIFACTS_TTL_SEC", (4 * 86_400).to_string())
        .env("WORKSPACES_TTL_SEC", (2 * 86_400).to_string())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while old.exists() || root.join("w/mid-failed-0002").exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no sweep happened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(child.wait().unwrap().success());
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
