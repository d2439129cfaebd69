//! How one step hands its work to the next (`artifact_handoff`, SPEC §5.3),
//! and `apply_patches_from`: patches from the job's artifacts applied to the
//! shared workspace before a step runs.
//!
//! What each mode means, precisely:
//! - **`manual`** (default): a step gets exactly the `input_artifacts` it
//!   lists, and the patches it lists in `apply_patches_from` are applied to
//!   the workspace before its first attempt.
//! - **`patch_first`**: the step's listed `input_artifacts` plus the
//!   `patch.diff` of the most recent earlier step (in job order) that
//!   succeeded with changes, so a reviewer always reads the change it
//!   reviews. `apply_patches_from` is ignored: the workspace already holds
//!   that change, and applying it again could only conflict.
//! - **`workspace_first`**: both lists are ignored; the shared workspace is
//!   the hand-off (every step runs in the same directory) and the per-step
//!   patches are informational.
//!
//! Applying is all-or-nothing per patch (`git apply` checks every hunk
//! before it writes) and idempotent: a patch whose reverse applies cleanly
//! is already in the workspace (a resumed or retried step) and is skipped.
//! Before git sees a patch, every path it names is checked here: absolute
//! paths, `..`, `.git` and symlink modes are refused (`invalid_patch_path`),
//! because a patch is data that an agent wrote.

use artifacts::JobArtifacts;
use contracts::{ArtifactHandoff, ErrorInfo, Job, JobState, Status};
use serde_json::json;
use std::ffi::OsStr;
use std::path::Path;

/// The largest patch file `apply_patches_from` reads.
const MAX_PATCH_BYTES: u64 = 64 * 1024 * 1024;

/// What a step receives under the job's hand-off mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// Input artifacts rendered into the prompt.
    pub input_artifacts: Vec<String>,
    /// Patches applied to the workspace before the step runs.
    pub apply_patches_from: Vec<String>,
    /// One line for the step's logs saying what the mode did.
    pub note: String,
}

/// The inputs of step `index` of `job`, given what earlier steps did.
pub fn inputs(job: &Job, index: usize, state: &JobState, arts: &JobArtifacts) -> Inputs {
    let step = &job.steps[index];
    match job.artifact_handoff {
        ArtifactHandoff::Manual => Inputs {
            input_artifacts: step.input_artifacts.clone(),
            apply_patches_from: step.apply_patches_from.clone(),
            note: "artifact_handoff=manual: inputs as listed".into(),
        },
        ArtifactHandoff::WorkspaceFirst => Inputs {
            input_artifacts: Vec::new(),
            apply_patches_from: Vec::new(),
            note: "artifact_handoff=workspace_first: the shared workspace is the hand-off; listed input_artifacts and apply_patches_from are not used".into(),
        },
        ArtifactHandoff::PatchFirst => {
            let mut input = step.input_artifacts.clone();
            let last = job.steps[..index].iter().rev().find(|s| {
                let ok = state
                    .steps
                    .get(s.step_id.as_str())
                    .is_some_and(|st| st.status == Status::Success);
                ok && arts
                    .read_step_result(&s.step_id)
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.change_status.as_deref() == Some("changed"))
            });
            let note = match last {
                Some(s) => {
                    let rel = artifacts::layout::step_rel(&s.step_id, "patch.diff");
                    if !input.contains(&rel) {
                        input.push(rel.clone());
                    }
                    format!("artifact_handoff=patch_first: input includes {rel}; apply_patches_from is not used")
                }
                None => "artifact_handoff=patch_first: no earlier step changed the workspace; apply_patches_from is not used".into(),
            };
            Inputs {
                input_artifacts: input,
                apply_patches_from: Vec::new(),
                note,
            }
        }
    }
}

/// Applies `patches` (paths relative to the job's artifacts directory) to
/// `work_dir`, in order, with orch's hardened git (`workers::hostgit`).
/// Returns one log line per patch, or the error that fails the step:
/// `invalid_patch_path`, `missing_patch`, `patch_apply_failed`, or
/// `sandbox_violation` when the workspace holds planted git configuration.
pub fn apply_patches(
    arts: &JobArtifacts,
    work_dir: &Path,
    patches: &[String],
) -> Result<Vec<String>, ErrorInfo> {
    let mut log = Vec::new();
    // git configuration planted in the workspace is inert for orch's git,
    // but it is an attempted escape: the step fails and says so.
    let planted = workers::hostgit::check_workspace(work_dir);
    if !planted.is_empty() {
        let list: Vec<String> = planted.iter().map(ToString::to_string).collect();
        let mut e = ErrorInfo::new(
            workers::confine::SANDBOX_VIOLATION,
            format!(
                "apply_patches_from: refused to run git in a workspace with planted git configuration: {}",
                list.join("; ")
            ),
        );
        e.details.insert("refused".into(), json!(list));
        return Err(e);
    }
    let mut git: Option<Result<workers::hostgit::HostGit, workers::exec::ExecError>> = None;
    for (i, rel) in patches.iter().enumerate() {
        let read = match arts.read_file(rel, MAX_PATCH_BYTES) {
            Ok(r) => r,
            Err(e) if e.is_invalid_path() => {
                return Err(err(
                    "invalid_patch_path",
                    rel,
                    format!(
                        "apply_patches_from: {rel:?} is not a file inside the job's artifacts: {e}"
                    ),
                ));
            }
            Err(e) if e.is_not_found() => {
                return Err(err(
                    "missing_patch",
                    rel,
                    format!(
                        "apply_patches_from: {rel} does not exist (did the step that writes it run?)"
                    ),
                ));
            }
            Err(e) => {
                return Err(err(
                    "missing_patch",
                    rel,
                    format!("apply_patches_from: cannot read {rel}: {e}"),
                ));
            }
        };
        if read.truncated {
            return Err(err(
                "patch_apply_failed",
                rel,
                format!("apply_patches_from: {rel} is larger than {MAX_PATCH_BYTES} bytes"),
            ));
        }
        let text = String::from_utf8_lossy(&read.data);
        if text.trim().is_empty() {
            log.push(format!("{rel}: empty, nothing to apply"));
            continue;
        }
        if let Err(msg) = check_patch_paths(&text) {
            return Err(err(
                "invalid_patch_path",
                rel,
                format!("apply_patches_from: {rel} {msg}; refusing to apply it"),
            ));
        }
        // git reads a private copy in an orch-owned directory outside every
        // agent-writable tree (a file in the state directory could be a
        // planted symlink), and runs hardened: see `workers::hostgit`.
        let git = git.get_or_insert_with(|| workers::hostgit::HostGit::new(work_dir));
        let git = match git {
            Ok(g) => g,
            Err(e) => {
                return Err(err(
                    "patch_apply_failed",
                    rel,
                    format!(
                        "apply_patches_from: cannot run git for {rel}: {e}; hint: install git on the runner host"
                    ),
                ));
            }
        };
        let copy = git
            .stage(&format!("apply-{i}.diff"), &read.data)
            .map_err(|e| {
                err(
                    "patch_apply_failed",
                    rel,
                    format!("cannot stage {rel} for git apply: {e}"),
                )
            })?;
        let c = copy.as_os_str();
        let already = git
            .run(&[
                OsStr::new("apply"),
                OsStr::new("--check"),
                OsStr::new("-R"),
                c,
            ])
            .is_ok();
        if already {
            log.push(format!("{rel}: already applied, skipped"));
            continue;
        }
        match git.run(&[OsStr::new("apply"), OsStr::new("--whitespace=nowarn"), c]) {
            Ok(_) => log.push(format!("{rel}: applied")),
            Err(e) => {
                let hint = match &e {
                    workers::exec::ExecError::NotFound { .. } => {
                        "; hint: install git on the runner host"
                    }
                    _ => "; hint: the workspace has diverged from what the patch expects",
                };
                return Err(err(
                    "patch_apply_failed",
                    rel,
                    format!("apply_patches_from: {rel} does not apply: {e}{hint}"),
                ));
            }
        }
    }
    Ok(log)
}

fn err(code: &str, rel: &str, message: String) -> ErrorInfo {
    let mut e = ErrorInfo::new(code, message);
    e.details.insert("patch".into(), json!(rel));
    e
}

/// Checks every path a unified/git diff names. `Err` says which and why.
pub fn check_patch_paths(text: &str) -> Result<(), String> {
    for line in text.lines() {
        let paths: Vec<&str> = if let Some(rest) = line.strip_prefix("diff --git ") {
            rest.split(' ').collect()
        } else if let Some(rest) = line
            .strip_prefix("--- ")
            .or_else(|| line.strip_prefix("+++ "))
        {
            // A tab may separate a timestamp (classic diff).
            vec![rest.split('\t').next().unwrap_or(rest)]
        } else if let Some(rest) = ["rename from ", "rename to ", "copy from ", "copy to "]
            .iter()
            .find_map(|p| line.strip_prefix(p))
        {
            vec![rest]
        } else {
            if (line.starts_with("new file mode ") || line.starts_with("new mode "))
                && line.trim_end().ends_with("120000")
            {
                return Err("creates a symbolic link".into());
            }
            continue;
        };
        for p in paths {
            check_one(p)?;
        }
    }
    Ok(())
}

fn check_one(raw: &str) -> Result<(), String> {
    let p = raw.trim();
    if p.is_empty() || p == "/dev/null" {
        return Ok(());
    }
    if p.starts_with('"') || p.contains('\\') {
        return Err(format!("names a quoted or escaped path ({p})"));
    }
    let p = p
        .strip_prefix("a/")
        .or_else(|| p.strip_prefix("b/"))
        .unwrap_or(p);
    if p.starts_with('/') {
        return Err(format!("names an absolute path ({p})"));
    }
    for part in p.split('/') {
        if part == ".." {
            return Err(format!("names a path outside the workspace ({p})"));
        }
        if part == ".git" {
            return Err(format!("touches git's own data ({p})"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent ran `git init` in its workspace and configured a filter
    /// driver (`* filter=x`) and an fsmonitor that touch a marker. On the
    /// old code `git apply --check -R` ran the filter on the host.
    #[test]
    fn planted_git_configuration_never_runs_on_the_host() {
        let Ok(_) = workers::exec::run_git(&[OsStr::new("--version")], None) else {
            panic!("git is required for this test (install git)");
        };
        let tmp = tempfile::tempdir().expect("tmp");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).expect("work");
        std::fs::write(work.join("a.txt"), "hello\n").expect("a");
        let marker = tmp.path().join("MARKER");
        let m = marker.display();
        workers::exec::run_git(&[OsStr::new("init"), OsStr::new("-q")], Some(&work)).expect("init");
        std::fs::write(work.join(".gitattributes"), "* filter=x\n").expect("attrs");
        let cfg = work.join(".git/config");
        let mut text = std::fs::read_to_string(&cfg).expect("config");
        text.push_str(&format!(
            "[filter \"x\"]\n\tclean = \"sh -c 'touch {m}; cat'\"\n\tsmudge = \"sh -c 'touch {m}; cat'\"\n[core]\n\tfsmonitor = touch {m}\n"
        ));
        std::fs::write(&cfg, text).expect("plant");
        let arts = artifacts::ArtifactStore::new(tmp.path().join("a"))
            .job(&contracts::JobId::parse("job-00000001").expect("id"));
        std::fs::create_dir_all(arts.dir()).expect("arts");
        std::fs::write(
            arts.dir().join("p.diff"),
            "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-hello\n+bye\n",
        )
        .expect("patch");
        let e = apply_patches(&arts, &work, &["p.diff".to_owned()]).expect_err("refused");
        assert_eq!(e.code, "sandbox_violation", "{}", e.message);
        assert!(e.message.contains("filter"), "{}", e.message);
        assert!(e.message.contains("fsmonitor"), "{}", e.message);
        assert!(!marker.exists(), "the agent's filter ran on the host");
        // orch's git ignores the planted configuration even when asked to
        // work in that workspace: the patch applies, nothing runs.
        let git = workers::hostgit::HostGit::new(&work).expect("git");
        let p = git
            .stage(
                "p.diff",
                &std::fs::read(arts.dir().join("p.diff")).expect("read"),
            )
            .expect("stage");
        git.run(&[OsStr::new("apply"), OsStr::new("--check"), p.as_os_str()])
            .expect("check");
        git.run(&[OsStr::new("apply"), p.as_os_str()])
            .expect("apply");
        assert_eq!(
            std::fs::read_to_string(work.join("a.txt")).expect("a"),
            "bye\n"
        );
        assert!(!marker.exists(), "the agent's filter ran on the host");
    }

    #[test]
    fn unsafe_patch_paths_are_refused() {
        let ok = "diff --git a/src/x.rs b/src/x.rs\n--- a/src/x.rs\n+++ b/src/x.rs\n@@ -1 +1 @@\n-a\n+b\n";
        assert!(check_patch_paths(ok).is_ok());
        let new =
            "diff --git a/n b/n\nnew file mode 100644\n--- /dev/null\n+++ b/n\n@@ -0,0 +1 @@\n+x\n";
        assert!(check_patch_paths(new).is_ok());
        for bad in [
            "--- a/../../etc/passwd\n+++ b/../../etc/passwd\n",
            "--- /etc/passwd\n+++ /etc/passwd\n",
            "diff --git a/.git/config b/.git/config\n",
            "diff --git a/l b/l\nnew file mode 120000\n",
            "diff --git a/x b/x\nrename from x\nrename to ../y\n",
            "+++ \"b/we\\x69rd\"\n",
        ] {
            assert!(check_patch_paths(bad).is_err(), "{bad}");
        }
    }
}
