//! `orch-runner` as a process: flags, configuration errors, and start-up
//! refusals. (Job execution end to end is tested with the CLI, in
//! crates/cli/tests/e2e, which also needs this binary built.)

use std::process::Command;

fn runner(dir: &std::path::Path) -> Command {
    #[allow(clippy::disallowed_methods)] // the binary under test
    let mut c = Command::new(env!("CARGO_BIN_EXE_orch-runner"));
    c.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("QUEUE_ROOT", dir.join("q"))
        .env("ARTIFACTS_ROOT", dir.join("a"))
        .env("WORKSPACES_ROOT", dir.join("w"));
    c
}

#[test]
fn help_and_version() {
    let d = tempfile::tempdir().unwrap();
    let out = runner(d.path()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--drain", "--concurrency", "--id"] {
        assert!(help.contains(flag), "{flag} missing from --help: {help}");
    }
    let out = runner(d.path()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("orch-runner "));
}

#[test]
fn invalid_configuration_is_exit_2_naming_the_variable() {
    let d = tempfile::tempdir().unwrap();
    for (var, val) in [
        ("RUNNER_LEASE_SEC", "0"),
        ("RUNNER_LEASE_SEC", "99999999999999999999999"),
        ("RUNNER_CONCURRENCY", "-1"),
        ("SIMULATION_STEP_MS", "fast"),
        ("SECRETS_POLICY", "ignore"),
        ("LOG_JSON", "maybe"),
        ("FSYNC_MODE", "never"),
        ("PROJECT_ALIASES", "web=relative/path"),
        ("WORKSPACE_MAX_BYTES", "0"),
        ("WORKSPACE_MAX_FILES", "many"),
    ] {
        let out = runner(d.path())
            .env(var, val)
            .arg("--drain")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={val}: {err}");
        assert!(
            err.contains(var),
            "{var}={val}: message does not name it: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // The sandbox settings are read when real mode starts its sandbox
    // (refused at start-up, naming the variable; that error comes from the
    // agent registry, which exits 1, not 2).
    if bwrap_usable() {
        for (var, val) in [
            ("SANDBOX_UID", "0"),
            ("SANDBOX_UID", "4294967296"),
            ("SANDBOX_MEMORY_MB", "lots"),
            ("SANDBOX_MAX_PROCESSES", "-5"),
            ("SANDBOX_CPU_SEC", "1e9"),
            ("SANDBOX_TMP_MB", "99999999999999999999"),
            ("SANDBOX_WORKSPACE_MB", "0"),
        ] {
            let out = runner(d.path())
                .env("ENABLE_REAL_CLI", "1")
                .env(var, val)
                .arg("--drain")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{var}={val} was accepted: {err}");
            assert!(err.contains(var), "{var}={val}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    } else {
        assert!(
            std::env::var("ORCH_TEST_STRICT").is_err(),
            "bubblewrap is needed for the SANDBOX_* checks (ORCH_TEST_STRICT=1)"
        );
        eprintln!("SKIPPED: SANDBOX_* checks need a usable bubblewrap");
    }
    for args in [
        &["--id", "../evil"][..],
        &["--id", "a b"],
        &["--concurrency", "0"],
    ] {
        let out = runner(d.path()).args(args).arg("--drain").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn a_second_runner_with_the_same_id_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut first = runner(d.path())
        .args(["--id", "same"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = d.path().join("q/runners/same.json");
    let t0 = std::time::Instant::now();
    while !lock.exists() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "first runner did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = runner(d.path())
        .args(["--id", "same", "--drain"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another live runner"));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(first.wait().unwrap().success());
}

/// Whether bubblewrap can create a sandbox here.
#[allow(clippy::disallowed_methods)] // a probe of the test machine
fn bwrap_usable() -> bool {
    std::process::Command::new("bwrap")
        .args(["--ro-bind", "/", "/", "--unshare-all", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
