//! Per-step diffs: exact git-style output for each kind of change, only the
//! step's own changes, and a round trip through the real `git apply`.

use crate::support::{git, has_git, put, runnable};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use workers::{Snapshot, change_status, diff};

fn snap(p: &Path) -> Snapshot {
    Snapshot::take(p).unwrap()
}

#[test]
fn new_modified_and_deleted_files() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    put(w, "keep.txt", "1\n2\n3\n4\n5\n6\n7\n8\n9\n");
    put(w, "gone.txt", "bye\n");
    let before = snap(w);
    put(w, "keep.txt", "1\n2\n3\n4\nfive\n6\n7\n8\n9\n");
    std::fs::remove_file(w.join("gone.txt")).unwrap();
    put(w, "new/file.txt", "hello\nworld");
    put(w, "empty", "");
    let patch = diff(&before, &snap(w));
    let expected = "\
diff --git a/empty b/empty
new file mode 100644
diff --git a/gone.txt b/gone.txt
deleted file mode 100644
--- a/gone.txt
+++ /dev/null
@@ -1 +0,0 @@
-bye
diff --git a/keep.txt b/keep.txt
--- a/keep.txt
+++ b/keep.txt
@@ -2,7 +2,7 @@
 2
 3
 4
-5
+five
 6
 7
 8
diff --git a/new/file.txt b/new/file.txt
new file mode 100644
--- /dev/null
+++ b/new/file.txt
@@ -0,0 +1,2 @@
+hello
+world
\\ No newline at end of file
";
    assert_eq!(patch, expected);
    assert_eq!(change_status(&patch), "changed");
}

#[test]
fn modes_links_binaries_and_git_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let script = put(w, "run.sh", "#!/bin/sh\n");
    put(w, "blob.bin", "a\0b");
    put(w, ".git/index", "ignored");
    let before = snap(w);
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    put(w, "blob.bin", "a\0c");
    put(w, ".git/index", "still ignored");
    symlink("run.sh", w.join("link")).unwrap();
    let patch = diff(&before, &snap(w));
    let expected = "\
diff --git a/blob.bin b/blob.bin
Binary files a/blob.bin and b/blob.bin differ
diff --git a/link b/link
new file mode 120000
--- /dev/null
+++ b/link
@@ -0,0 +1 @@
+run.sh
\\ No newline at end of file
diff --git a/run.sh b/run.sh
old mode 100644
new mode 100755
";
    assert_eq!(patch, expected);
}

#[test]
fn a_type_change_is_a_deletion_plus_an_addition() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    put(w, "x", "file\n");
    let before = snap(w);
    std::fs::remove_file(w.join("x")).unwrap();
    symlink("target", w.join("x")).unwrap();
    let patch = diff(&before, &snap(w));
    assert!(
        patch.starts_with("diff --git a/x b/x\ndeleted file mode 100644\n"),
        "{patch}"
    );
    assert!(
        patch.contains("diff --git a/x b/x\nnew file mode 120000\n"),
        "{patch}"
    );
}

#[test]
fn unchanged_trees_give_an_empty_diff() {
    let tmp = tempfile::tempdir().unwrap();
    put(tmp.path(), "a", "a\n");
    let s = snap(tmp.path());
    assert_eq!(diff(&s, &snap(tmp.path())), "");
    assert_eq!(change_status(""), "no_changes");
    assert_eq!(s.len(), 1);
}

#[test]
fn each_step_diff_holds_only_that_steps_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    put(w, "base.txt", "base\n");
    let s0 = snap(w);
    put(w, "step1.txt", "one\n"); // step 1
    let s1 = snap(w);
    put(w, "step2.txt", "two\n"); // step 2
    put(w, "base.txt", "base changed by step 2\n");
    let s2 = snap(w);
    let p1 = diff(&s0, &s1);
    let p2 = diff(&s1, &s2);
    assert!(
        p1.contains("b/step1.txt") && !p1.contains("step2.txt") && !p1.contains("base.txt"),
        "{p1}"
    );
    assert!(
        p2.contains("b/step2.txt") && p2.contains("b/base.txt") && !p2.contains("step1.txt"),
        "{p2}"
    );
}

#[test]
fn hostile_links_in_the_workspace_are_recorded_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir(&w).unwrap();
    let before = snap(&w);
    symlink(".", w.join("loop")).unwrap();
    symlink("a", w.join("b")).unwrap();
    symlink("b", w.join("a")).unwrap();
    symlink("/etc/passwd", w.join("passwd")).unwrap();
    let patch = diff(&before, &snap(&w));
    assert!(patch.contains("+/etc/passwd\n"), "{patch}");
    assert!(!patch.contains("root:"), "a link was followed: {patch}");
    assert_eq!(patch.matches("new file mode 120000").count(), 4, "{patch}");
}

#[test]
fn large_and_non_utf8_files_are_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let limits = workers::SnapshotLimits {
        max_text_file: 8,
        max_total_text: 1024,
    };
    put(w, "big.txt", "0123456789\n");
    std::fs::write(w.join("latin1.txt"), b"caf\xe9\n").unwrap();
    let before = Snapshot::take_with(w, limits).unwrap();
    put(w, "big.txt", "0123456789 changed\n");
    std::fs::write(w.join("latin1.txt"), b"caf\xe8\n").unwrap();
    let patch = diff(&before, &Snapshot::take_with(w, limits).unwrap());
    assert_eq!(
        patch,
        "diff --git a/big.txt b/big.txt\nBinary files a/big.txt and b/big.txt differ\n\
         diff --git a/latin1.txt b/latin1.txt\nBinary files a/latin1.txt and b/latin1.txt differ\n"
    );
}

#[test]
fn git_apply_reproduces_the_step() {
    if !runnable(has_git(), "git is not installed") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let text: String = (1..=40).map(|i| format!("line {i}\n")).collect();
    put(&a, "src/lib.rs", &text);
    put(&a, "old.txt", "remove me\n");
    put(&a, "no-newline", "x");
    put(&a, "with space.txt", "s\n");
    let script = put(&a, "tool.sh", "#!/bin/sh\necho hi\n");
    // A second copy that the patch will be applied to.
    let b = tmp.path().join("b");
    git(tmp.path(), &["init", "-q", "b"]);
    copy_dir(&a, &b);

    let before = snap(&a);
    put(
        &a,
        "src/lib.rs",
        &text
            .replace("line 3\n", "line three\n")
            .replace("line 30\n", ""),
    );
    std::fs::remove_file(a.join("old.txt")).unwrap();
    put(&a, "no-newline", "y\n");
    put(&a, "with space.txt", "s2\n");
    put(&a, "added/new.md", "# new\n");
    put(&a, "added/empty", "");
    symlink("src/lib.rs", a.join("lib-link")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let after = snap(&a);
    let patch = diff(&before, &after);
    let patch_file = tmp.path().join("step.patch");
    std::fs::write(&patch_file, &patch).unwrap();

    git(
        &b,
        &["apply", "--whitespace=nowarn", patch_file.to_str().unwrap()],
    );
    assert_eq!(diff(&after, &snap(&b)), "", "patch:\n{patch}");
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(from).unwrap();
        let dst = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
        } else {
            std::fs::copy(entry.path(), &dst).unwrap();
        }
    }
}
