//! `orch-scheduler` as a process: flags, configuration errors, and a clean
//! SIGTERM shutdown.

use std::process::Command;

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
