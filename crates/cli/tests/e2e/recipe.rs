//! The "testing without API keys" recipe of docs/REAL_CLI_INTEGRATION.md,
//! run exactly as written: the shell block is taken from the document and
//! handed to bash, from the repository root, with the orch binaries on
//! PATH. If the recipe and the code drift apart, this fails.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The first ```sh block after the "Testing without API keys" heading.
fn recipe() -> String {
    let doc = std::fs::read_to_string(repo_root().join("docs/REAL_CLI_INTEGRATION.md")).unwrap();
    let section = doc
        .split("## Testing without API keys")
        .nth(1)
        .expect("the section exists");
    let block = section.split("```sh\n").nth(1).expect("a sh block");
    block.split("\n```").next().unwrap().to_owned()
}

#[test]
fn the_documented_real_mode_recipe_runs_verbatim() {
    let ok = bwrap_works();
    if !runnable(
        ok,
        "bubblewrap is not installed or cannot create namespaces",
    ) {
        return;
    }
    let script = recipe();
    assert!(script.contains("orch-runner --drain"), "{script}");
    let tmp = tempfile::tempdir().unwrap();
    // TMPDIR stands for /tmp, which everyone can traverse (a root runner's
    // sandbox uid must reach the recipe's directory below it).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let bins = bin("orch").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // A fresh shell: nothing of the test's environment but PATH, HOME and
    // TMPDIR (where the recipe's `mktemp -d` lands, cleaned up with it).
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(repo_root())
        .env_clear()
        .env("PATH", path)
        .env("HOME", tmp.path())
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the recipe failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("status    success"), "{stdout}");
    for step in ["01_plan", "02_implement", "03_review"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(step))
            .unwrap_or_else(|| panic!("no {step} line in:\n{stdout}"));
        assert!(line.contains("success"), "{line}");
    }
    // The steps really ran sandboxed, in absolute workspaces.
    let demo = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .find(|e| e.path().join("artifacts").is_dir())
        .expect("the recipe's directory")
        .path();
    let arts = demo.join("artifacts");
    let job = std::fs::read_dir(&arts)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.join("steps/01_plan/result.json")).unwrap())
            .unwrap();
    assert_eq!(plan["metrics"]["sandboxed"], true, "{plan}");
}
