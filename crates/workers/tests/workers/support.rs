//! Shared helpers: step requests, small tree builders, `git` for the tests
//! that need it, and [`runnable`], which decides whether a test whose
//! prerequisite (git, bubblewrap) is missing skips with a note or fails
//! (`ORCH_TEST_STRICT=1`, as on CI).

use contracts::{JobId, Step};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use workers::StepRequest;

pub fn step(id: &str, agent: &str, role: &str, prompt: &str) -> Step {
    serde_json::from_value(serde_json::json!({
        "step_id": id, "agent": agent, "role": role, "prompt": prompt
    }))
    .expect("step fixture")
}

pub fn request(step: Step, goal: &str, workdir: &Path) -> StepRequest {
    StepRequest {
        job_id: JobId::parse("job-00000001").expect("job id"),
        prompt: format!("SYSTEM\n\n{}", step.prompt),
        step,
        attempt: 1,
        workdir: workdir.to_path_buf(),
        state_dir: workdir.join("../state"),
        goal: goal.to_owned(),
        policy: contracts::Policy::default(),
    }
}

/// Writes `content` at `root/rel`, creating parents.
pub fn put(root: &Path, rel: &str, content: &str) -> PathBuf {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, content).expect("write");
    p
}

/// The variable that turns every skip into a failure (`.ci/run` sets it:
/// on CI, a test that cannot run is a broken CI machine, not a pass).
pub const STRICT_VAR: &str = "ORCH_TEST_STRICT";

/// Whether the test may run: `true` when `available`; otherwise it reports
/// the skip — a failure when `ORCH_TEST_STRICT=1` (CI), else a `SKIPPED`
/// line on stderr — and returns `false`, so the test returns at once:
///
/// ```ignore
/// if !runnable(has_git(), "git is not installed") { return; }
/// ```
///
/// (libtest cannot mark a running test as ignored; tests that can never
/// run in some configuration are `#[ignore = "reason"]` instead.)
pub fn runnable(available: bool, missing: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var(STRICT_VAR).is_ok_and(|v| v == "1") {
        panic!("this test cannot run: {missing} (and {STRICT_VAR}=1 makes every skip a failure)");
    }
    eprintln!("SKIPPED: {missing} (set {STRICT_VAR}=1 to make this a failure)");
    false
}

/// True when `git` can be run.
pub fn has_git() -> bool {
    workers::exec::run_git(&[OsStr::new("--version")], None).is_ok()
}

/// Runs git in `dir` with a fixed identity; panics on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    // Through the executor, like every process orch starts (the fixed
    // identity keeps commits reproducible).
    let mut all: Vec<&OsStr> = [
        "-c",
        "user.name=orch",
        "-c",
        "user.email=orch@test.invalid",
        "-c",
        "init.defaultBranch=main",
    ]
    .iter()
    .map(OsStr::new)
    .collect();
    all.extend(args.iter().map(OsStr::new));
    match workers::exec::run_git(&all, Some(dir)) {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => panic!("git {args:?} in {}: {e}", dir.display()),
    }
}
