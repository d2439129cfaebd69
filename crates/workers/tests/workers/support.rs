//! Shared helpers: step requests, small tree builders, and `git` for the
//! tests that need it (skipped, with a note, when git is not installed).

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

pub fn has_git() -> bool {
    let ok = workers::exec::run_git(&[OsStr::new("--version")], None).is_ok();
    if !ok {
        eprintln!("git not installed: skipping the git part of this test");
    }
    ok
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
