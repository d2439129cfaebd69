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
            ("SANDBOX_CGROUP", "sometimes"),
            ("SANDBOX_CGROUP_ROOT", "orch"),
            ("SANDBOX_CPU_PERCENT", "-1"),
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
        // Required cgroups that cannot be created stop real mode at start.
        let out = runner(d.path())
            .env("ENABLE_REAL_CLI", "1")
            .env("SANDBOX_CGROUP", "require")
            .env("SANDBOX_CGROUP_ROOT", "/no/such/orch/cgroup")
            .arg("--drain")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "SANDBOX_CGROUP=require was met: {err}"
        );
        assert!(err.contains("SANDBOX_CGROUP=require"), "{err}");
    } else {
        assert!(
            !std::env::var("ORCH_TEST_STRICT").is_ok_and(|v| v == "1"),
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

/// The agent wrapper joins the step's cgroup (whose CPU quota is set)
/// before it execs: the program
/// it runs is inside from its first instruction (so is everything the
/// program starts). Needs a runner that can create cgroups (root on cgroup
/// v1, or a delegated v2 subtree); a failure under `ORCH_TEST_STRICT=1`.
#[test]
fn the_agent_wrapper_joins_the_step_cgroup_before_it_execs() {
    let cgroups = match workers::cgroup::Cgroups::detect(None) {
        Ok(c) => c,
        Err(e) => {
            assert!(
                !std::env::var("ORCH_TEST_STRICT").is_ok_and(|v| v == "1"),
                "no step cgroups here (ORCH_TEST_STRICT=1): {e}"
            );
            eprintln!("SKIPPED: no step cgroups: {e}");
            return;
        }
    };
    let cg = cgroups
        .create(workers::cgroup::CgroupLimits {
            memory_bytes: 256 << 20,
            processes: 16,
            cpu_percent: 50,
        })
        .expect("create a step cgroup");
    // Half a core: a 50 ms quota per 100 ms period, in whichever hierarchy.
    let quota: Vec<String> = cg
        .procs_files()
        .iter()
        .filter_map(|f| {
            let d = f.parent()?;
            std::fs::read_to_string(d.join("cpu.max"))
                .or_else(|_| std::fs::read_to_string(d.join("cpu.cfs_quota_us")))
                .ok()
        })
        .map(|q| q.trim().to_owned())
        .collect();
    assert!(
        quota.iter().any(|q| q == "50000" || q == "50000 100000"),
        "{quota:?}"
    );
    let name = cg
        .path()
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let d = tempfile::tempdir().unwrap();
    let mut c = runner(d.path());
    c.arg("__orch-agent-exec");
    for f in cg.procs_files() {
        c.arg(format!("--cgroup-procs={}", f.display()));
    }
    let out = c
        .arg(std::process::id().to_string())
        .args(["/bin/cat", "/proc/self/cgroup"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inside: Vec<&str> = text.lines().filter(|l| l.ends_with(&name)).collect();
    assert_eq!(inside.len(), cg.procs_files().len(), "{text}");
    assert_eq!(cg.kill_and_remove().expect("removed"), 0);
}
