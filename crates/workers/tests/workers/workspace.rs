//! Workspace preparation: empty, reused, copied (with hostile trees) and
//! cloned work dirs.

use crate::support::{git, has_git, put, runnable};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use workers::workspace::{is_git_workspace, prepare};
use workers::{PrepareMethod, SkipReason, WorkspaceError};

fn link_target(p: &Path) -> PathBuf {
    std::fs::read_link(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn skipped_reason<'a>(out: &'a workers::PrepareOutcome, rel: &str) -> Option<&'a SkipReason> {
    out.skipped
        .iter()
        .find(|s| s.path == Path::new(rel))
        .map(|s| &s.reason)
}

#[test]
fn no_source_gives_an_empty_work_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("workspaces/job/work");
    let out = prepare(None, &work, &[]).unwrap();
    assert_eq!(out.method, PrepareMethod::Empty);
    assert!(work.is_dir());
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    // Empty work dirs are filled on the next prepare, not "reused".
    let src = tmp.path().join("src");
    put(&src, "a.txt", "a");
    let out = prepare(Some(&src), &work, &[]).unwrap();
    assert_eq!(out.method, PrepareMethod::Copy);
    assert!(work.join("a.txt").is_file());
}

#[test]
fn a_non_empty_work_dir_is_reused_as_is() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    put(&src, "a.txt", "from source");
    let work = tmp.path().join("work");
    put(&work, "a.txt", "changed by step 1");
    let out = prepare(Some(&src), &work, &[]).unwrap();
    assert_eq!(out.method, PrepareMethod::Reused);
    assert_eq!(
        std::fs::read_to_string(work.join("a.txt")).unwrap(),
        "changed by step 1"
    );
}

#[test]
fn copy_keeps_modes_and_in_tree_links_and_skips_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    put(&src, "README", "hello\n");
    let script = put(&src, "bin/run.sh", "#!/bin/sh\n");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    put(&src, "venv/lib/site.py", "x = 1\n");
    symlink("../README", src.join("bin/readme")).unwrap(); // relative, inside
    symlink(src.join("venv/lib"), src.join("venv/lib64")).unwrap(); // absolute, inside
    symlink("/usr/bin/python3", src.join("venv/python")).unwrap(); // absolute, outside
    symlink("../../outside", src.join("bin/up")).unwrap(); // relative, outside
    symlink(".", src.join("self")).unwrap(); // a directory loop: copied as a link, not walked
    symlink("b", src.join("a")).unwrap(); // a two-link loop
    symlink("a", src.join("b")).unwrap();
    symlink("sub/l1/..", src.join("sneaky")).unwrap(); // lexically in, really out
    std::fs::create_dir(src.join("sub")).unwrap();
    symlink("..", src.join("sub/l1")).unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();

    let work = tmp.path().join("ws/job/work");
    let out = prepare(Some(&src), &work, &[]).unwrap();
    assert_eq!(out.method, PrepareMethod::Copy);
    assert_eq!(
        std::fs::read_to_string(work.join("README")).unwrap(),
        "hello\n"
    );
    let mode = std::fs::metadata(work.join("bin/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "executable bit kept");
    assert_eq!(
        link_target(&work.join("bin/readme")),
        Path::new("../README")
    );
    assert_eq!(
        std::fs::read_to_string(work.join("bin/readme")).unwrap(),
        "hello\n"
    );
    // The absolute in-tree link now points into the copy, not the source.
    assert_eq!(
        link_target(&work.join("venv/lib64")),
        Path::new("../venv/lib")
    );
    assert_eq!(
        std::fs::read_to_string(work.join("venv/lib64/site.py")).unwrap(),
        "x = 1\n"
    );
    assert_eq!(link_target(&work.join("self")), Path::new("."));
    assert_eq!(link_target(&work.join("sub/l1")), Path::new(".."));
    assert!(matches!(
        skipped_reason(&out, "venv/python"),
        Some(SkipReason::SymlinkOutside { .. })
    ));
    assert!(matches!(
        skipped_reason(&out, "bin/up"),
        Some(SkipReason::SymlinkOutside { .. })
    ));
    assert!(matches!(
        skipped_reason(&out, "sneaky"),
        Some(SkipReason::SymlinkOutside { .. })
    ));
    assert!(matches!(
        skipped_reason(&out, "a"),
        Some(SkipReason::SymlinkLoop { .. })
    ));
    assert!(matches!(
        skipped_reason(&out, "b"),
        Some(SkipReason::SymlinkLoop { .. })
    ));
    assert_eq!(skipped_reason(&out, "fifo"), Some(&SkipReason::SpecialFile));
    for gone in ["venv/python", "bin/up", "sneaky", "a", "b", "fifo"] {
        assert!(
            std::fs::symlink_metadata(work.join(gone)).is_err(),
            "{gone} copied"
        );
    }
    // No staging directories left behind.
    let names: Vec<_> = std::fs::read_dir(tmp.path().join("ws/job"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["work"]);
}

#[test]
fn orch_data_dirs_inside_the_source_are_not_copied() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("project");
    put(&src, "main.rs", "fn main() {}\n");
    put(&src, "var/queue/pending/x.json", "{}");
    put(&src, "artifacts/old/job.json", "{}");
    let work = src.join("workspaces/job-1/work");
    put(&src, "workspaces/job-0/work/big.bin", "earlier job");
    let exclude = [
        src.join("var"),
        src.join("artifacts"),
        src.join("workspaces"),
        tmp.path().join("missing"),
    ];
    let out = prepare(Some(&src), &work, &exclude).unwrap();
    assert_eq!(out.method, PrepareMethod::Copy);
    assert!(work.join("main.rs").is_file());
    for dir in ["var", "artifacts", "workspaces"] {
        assert!(!work.join(dir).exists(), "{dir} copied");
        assert_eq!(skipped_reason(&out, dir), Some(&SkipReason::Excluded));
    }
}

#[test]
fn a_work_dir_inside_the_source_never_copies_itself() {
    // Even without excludes, the copy must not recurse into its destination
    // (SPEC §15 defect 8).
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("project");
    put(&src, "main.rs", "fn main() {}\n");
    let work = src.join("workspaces/job-1/work");
    let out = prepare(Some(&src), &work, &[]).unwrap();
    assert!(work.join("main.rs").is_file());
    assert!(!work.join("workspaces/job-1/work").exists());
    assert!(
        out.skipped.iter().any(|s| s.reason == SkipReason::Excluded),
        "{out:?}"
    );
}

#[test]
fn refuses_symlinked_work_dirs_and_missing_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let work = tmp.path().join("work");
    symlink(&elsewhere, &work).unwrap();
    let err = prepare(None, &work, &[]).unwrap_err();
    assert!(matches!(err, WorkspaceError::BadWorkDir { .. }), "{err}");

    let missing = tmp.path().join("no-such-source");
    let err = prepare(Some(&missing), &tmp.path().join("w2"), &[]).unwrap_err();
    assert!(err.to_string().contains("no-such-source"), "{err}");
    let file = put(tmp.path(), "file", "x");
    let err = prepare(Some(&file), &tmp.path().join("w3"), &[]).unwrap_err();
    assert!(matches!(err, WorkspaceError::BadSource { .. }), "{err}");
}

#[test]
fn a_git_source_is_cloned_at_head() {
    if !runnable(has_git(), "git is not installed") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("repo");
    put(&src, "committed.txt", "v1\n");
    git(&src, &["init", "-q"]);
    git(&src, &["add", "."]);
    git(&src, &["commit", "-q", "-m", "init"]);
    put(&src, "uncommitted.txt", "wip\n");

    let work = tmp.path().join("ws/job/work");
    let out = prepare(Some(&src), &work, &[]).unwrap();
    assert_eq!(out.method, PrepareMethod::GitClone);
    assert!(is_git_workspace(&work));
    assert_eq!(
        std::fs::read_to_string(work.join("committed.txt")).unwrap(),
        "v1\n"
    );
    assert!(!work.join("uncommitted.txt").exists());
    assert!(git(&work, &["status", "--porcelain"]).is_empty());

    // Re-preparing (resume, approve, retry) reuses the clone.
    put(&work, "step1.txt", "made by step 1\n");
    let again = prepare(Some(&src), &work, &[]).unwrap();
    assert_eq!(again.method, PrepareMethod::Reused);
    assert!(work.join("step1.txt").is_file());
}

// ---- limits, system directories, filesystem boundary -----------------------

/// Past `WORKSPACE_MAX_FILES` or `WORKSPACE_MAX_BYTES` the copy fails with
/// an error naming the variable, and leaves neither a work dir nor a
/// staging directory behind.
#[test]
fn a_copy_over_its_caps_fails_naming_the_cap_and_leaves_nothing() {
    use workers::{WorkspaceLimits, prepare_with_limits};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for i in 0..10 {
        put(&src, &format!("d/f{i}.txt"), "0123456789");
    }
    let ws = tmp.path().join("ws");
    let cases = [
        (
            WorkspaceLimits {
                max_bytes: 1 << 20,
                max_files: 5,
            },
            "WORKSPACE_MAX_FILES=5",
        ),
        (
            WorkspaceLimits {
                max_bytes: 50,
                max_files: 1000,
            },
            "WORKSPACE_MAX_BYTES=50",
        ),
    ];
    for (limits, named) in cases {
        let work = ws.join("job/work");
        let err = prepare_with_limits(Some(&src), &work, &[], limits).unwrap_err();
        assert!(matches!(err, WorkspaceError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains(named), "{err}");
        assert!(!work.exists());
        let left: Vec<_> = std::fs::read_dir(ws.join("job")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
    // Within the caps (11 entries, 100 bytes) it copies.
    let limits = WorkspaceLimits {
        max_bytes: 100,
        max_files: 11,
    };
    let out = prepare_with_limits(Some(&src), &ws.join("job/work"), &[], limits).unwrap();
    assert_eq!(out.method, PrepareMethod::Copy);
}

/// `/` and system directories are never copied, however they are named.
#[test]
fn system_directories_are_never_a_source() {
    let tmp = tempfile::tempdir().unwrap();
    let link = tmp.path().join("innocent");
    symlink("/etc", &link).unwrap();
    for src in [
        Path::new("/"),
        Path::new("/etc"),
        Path::new("/usr/share"),
        &link,
    ] {
        let work = tmp.path().join("w/work");
        let err = prepare(Some(src), &work, &[]).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::Refused { .. }),
            "{}: {err}",
            src.display()
        );
        assert!(!work.exists());
    }
}

/// The child side of `a_copy_never_crosses_into_another_filesystem`: runs
/// inside a private mount namespace where `src/mnt` is a tmpfs.
#[test]
#[ignore = "helper: run in a mount namespace by a_copy_never_crosses_into_another_filesystem"]
fn fs_boundary_helper() {
    let src = PathBuf::from(std::env::var("ORCH_TEST_FS_SRC").expect("run by the parent test"));
    let work = PathBuf::from(std::env::var("ORCH_TEST_FS_WORK").expect("run by the parent test"));
    assert!(src.join("mnt/other.txt").is_file(), "the tmpfs is mounted");
    let out = prepare(Some(&src), &work, &[]).unwrap();
    assert_eq!(
        skipped_reason(&out, "mnt"),
        Some(&SkipReason::OtherFilesystem)
    );
    assert!(work.join("a.txt").is_file());
    assert!(!work.join("mnt").exists());
}

/// A mount point inside the source (another filesystem) is skipped and
/// reported, never copied.
#[test]
// The test harness starts `unshare` itself: it is not an agent.
#[allow(clippy::disallowed_methods)]
fn a_copy_never_crosses_into_another_filesystem() {
    let unshare_works = std::process::Command::new("unshare")
        .args(["-rm", "true"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !runnable(
        unshare_works,
        "`unshare -rm` (user and mount namespaces) is unavailable",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    put(&src, "a.txt", "a");
    std::fs::create_dir_all(src.join("mnt")).unwrap();
    let me = std::env::current_exe().unwrap();
    let out = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c"])
        .arg(
            "mount -t tmpfs tmpfs \"$ORCH_TEST_FS_SRC/mnt\" && echo x > \"$ORCH_TEST_FS_SRC/mnt/other.txt\" \
             && exec \"$0\" --exact --ignored workspace::fs_boundary_helper --nocapture",
        )
        .arg(&me)
        .env("ORCH_TEST_FS_SRC", &src)
        .env("ORCH_TEST_FS_WORK", tmp.path().join("w/work"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
