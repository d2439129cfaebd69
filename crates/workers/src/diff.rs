//! Per-step diffs of a workspace (SPEC §4: each step's `patch.diff` holds
//! **that step's** changes, new untracked files included; the MVP's was
//! cumulative and ignored new files, defect 9).
//!
//! The runner takes a `Snapshot` of the work dir before a step and another
//! after it; `diff` renders the difference as a git-style unified diff that
//! `git apply` accepts. Snapshots do not depend on git, so non-git
//! workspaces get patches too, and nothing that happened before the step
//! leaks into its patch.
//!
//! A snapshot keeps the text of files up to `SnapshotLimits::max_text_file`
//! bytes (the "before" side of a diff needs the old text), within a total
//! budget; binary files and files beyond the limits are tracked by hash or
//! by size/mtime and rendered as `Binary files a/x and b/x differ`.
//! Taking a snapshot reads the tree: call it from blocking context
//! (`tokio::task::spawn_blocking`).

use similar::TextDiff;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::hash::{DefaultHasher, Hasher};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one file's line diff may take before `similar` settles for a
/// less minimal (still correct) diff.
const DIFF_TIMEOUT: Duration = Duration::from_secs(5);
/// git's binary heuristic: a NUL byte in the first 8000 bytes.
const BINARY_SNIFF: usize = 8000;

/// Bounds on what a snapshot keeps in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotLimits {
    /// Text files up to this size keep their content (1 MiB).
    pub max_text_file: u64,
    /// Total text kept per snapshot (256 MiB); beyond it files are tracked
    /// by size and mtime only.
    pub max_total_text: u64,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        Self {
            max_text_file: 1024 * 1024,
            max_total_text: 256 * 1024 * 1024,
        }
    }
}

/// The state of a directory tree at one instant (`.git` excluded, symlinks
/// recorded as links, never followed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    entries: BTreeMap<PathBuf, Entry>,
    /// Entries that could not be read (relative paths); they are absent from
    /// `entries`.
    unreadable: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    size: u64,
    mtime: (i64, i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    File { executable: bool, content: Content },
    Symlink { target: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Text(String),
    Binary {
        hash: u64,
    },
    /// Not read (over the limits): compared by size and mtime.
    Untracked,
}

impl Snapshot {
    /// Snapshots `dir` with the default limits.
    pub fn take(dir: &Path) -> io::Result<Self> {
        Self::take_with(dir, SnapshotLimits::default())
    }

    pub fn take_with(dir: &Path, limits: SnapshotLimits) -> io::Result<Self> {
        std::fs::metadata(dir)?;
        let mut snap = Self::default();
        let mut budget = limits.max_total_text;
        let walk = walkdir::WalkDir::new(dir)
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| e.file_name() != ".git");
        for entry in walk {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    if let Some(p) = e.path().and_then(|p| p.strip_prefix(dir).ok()) {
                        snap.unreadable.push(p.to_path_buf());
                    }
                    continue;
                }
            };
            let ft = entry.file_type();
            if ft.is_dir() {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(dir) else {
                continue;
            };
            let rel = rel.to_path_buf();
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(_) => {
                    snap.unreadable.push(rel);
                    continue;
                }
            };
            let kind = if ft.is_symlink() {
                match std::fs::read_link(entry.path()) {
                    Ok(t) => Kind::Symlink {
                        target: t.as_os_str().as_bytes().to_vec(),
                    },
                    Err(_) => {
                        snap.unreadable.push(rel);
                        continue;
                    }
                }
            } else if ft.is_file() {
                let content = if meta.len() > limits.max_text_file || meta.len() > budget {
                    Content::Untracked
                } else {
                    match read_content(entry.path(), limits.max_text_file) {
                        Ok(c) => c,
                        Err(_) => {
                            snap.unreadable.push(rel);
                            continue;
                        }
                    }
                };
                if let Content::Text(t) = &content {
                    budget = budget.saturating_sub(t.len() as u64);
                }
                Kind::File {
                    executable: meta.mode() & 0o100 != 0,
                    content,
                }
            } else {
                // FIFOs, sockets, devices: git does not track them either.
                continue;
            };
            snap.entries.insert(
                rel,
                Entry {
                    kind,
                    size: meta.len(),
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                },
            );
        }
        Ok(snap)
    }

    /// Number of files and links recorded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries that could not be read (permissions, races).
    pub fn unreadable(&self) -> &[PathBuf] {
        &self.unreadable
    }
}

fn read_content(path: &Path, max: u64) -> io::Result<Content> {
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)?;
    let mut data = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        // It grew since the stat.
        return Ok(Content::Untracked);
    }
    if !data[..data.len().min(BINARY_SNIFF)].contains(&0) {
        // Non-UTF-8 text is treated as binary: the diff is a String.
        match String::from_utf8(data) {
            Ok(text) => return Ok(Content::Text(text)),
            Err(e) => data = e.into_bytes(),
        }
    }
    let mut h = DefaultHasher::new();
    h.write(&data);
    Ok(Content::Binary { hash: h.finish() })
}

/// `"changed"` when `diff` holds a change, else `"no_changes"` (the values
/// of `result.json`'s `change_status`).
pub fn change_status(diff: &str) -> &'static str {
    if diff.trim().is_empty() {
        "no_changes"
    } else {
        "changed"
    }
}

/// The changes from `before` to `after` as a git-style unified diff (paths
/// sorted; 3 lines of context; empty when nothing changed).
pub fn diff(before: &Snapshot, after: &Snapshot) -> String {
    let mut out = String::new();
    let mut paths: Vec<&PathBuf> = before.entries.keys().chain(after.entries.keys()).collect();
    paths.sort();
    paths.dedup();
    for path in paths {
        match (before.entries.get(path), after.entries.get(path)) {
            (None, Some(new)) => added(&mut out, path, new),
            (Some(old), None) => deleted(&mut out, path, old),
            (Some(old), Some(new)) => modified(&mut out, path, old, new),
            (None, None) => {}
        }
    }
    out
}

fn git_mode(kind: &Kind) -> &'static str {
    match kind {
        Kind::Symlink { .. } => "120000",
        Kind::File {
            executable: true, ..
        } => "100755",
        Kind::File {
            executable: false, ..
        } => "100644",
    }
}

/// The text git would diff: a file's text, or a link's target (git stores
/// it as the link's content, without a newline).
fn text_of(kind: &Kind) -> Option<String> {
    match kind {
        Kind::File {
            content: Content::Text(t),
            ..
        } => Some(t.clone()),
        Kind::Symlink { target } => String::from_utf8(target.clone()).ok(),
        Kind::File { .. } => None,
    }
}

fn header(out: &mut String, path: &Path) {
    let _ = writeln!(
        out,
        "diff --git {} {}",
        quoted("a/", path),
        quoted("b/", path)
    );
}

fn added(out: &mut String, path: &Path, new: &Entry) {
    header(out, path);
    let _ = writeln!(out, "new file mode {}", git_mode(&new.kind));
    match text_of(&new.kind) {
        Some(t) if t.is_empty() => {}
        Some(t) => hunks(out, "", &t, "/dev/null".into(), quoted("b/", path)),
        None => {
            let _ = writeln!(
                out,
                "Binary files /dev/null and {} differ",
                quoted("b/", path)
            );
        }
    }
}

fn deleted(out: &mut String, path: &Path, old: &Entry) {
    header(out, path);
    let _ = writeln!(out, "deleted file mode {}", git_mode(&old.kind));
    match text_of(&old.kind) {
        Some(t) if t.is_empty() => {}
        Some(t) => hunks(out, &t, "", quoted("a/", path), "/dev/null".into()),
        None => {
            let _ = writeln!(
                out,
                "Binary files {} and /dev/null differ",
                quoted("a/", path)
            );
        }
    }
}

fn modified(out: &mut String, path: &Path, old: &Entry, new: &Entry) {
    let same_type = matches!(
        (&old.kind, &new.kind),
        (Kind::File { .. }, Kind::File { .. }) | (Kind::Symlink { .. }, Kind::Symlink { .. })
    );
    if !same_type {
        // git renders a type change as a deletion plus an addition.
        deleted(out, path, old);
        added(out, path, new);
        return;
    }
    let (old_mode, new_mode) = (git_mode(&old.kind), git_mode(&new.kind));
    let content_changed = match (&old.kind, &new.kind) {
        (Kind::Symlink { target: a }, Kind::Symlink { target: b }) => a != b,
        (Kind::File { content: a, .. }, Kind::File { content: b, .. }) => match (a, b) {
            (Content::Text(x), Content::Text(y)) => x != y,
            (Content::Binary { hash: x }, Content::Binary { hash: y }) => x != y,
            (Content::Untracked, Content::Untracked) => {
                old.size != new.size || old.mtime != new.mtime
            }
            _ => true,
        },
        _ => true,
    };
    if old_mode == new_mode && !content_changed {
        return;
    }
    header(out, path);
    if old_mode != new_mode {
        let _ = writeln!(out, "old mode {old_mode}\nnew mode {new_mode}");
    }
    if !content_changed {
        return;
    }
    match (text_of(&old.kind), text_of(&new.kind)) {
        (Some(a), Some(b)) => hunks(out, &a, &b, quoted("a/", path), quoted("b/", path)),
        _ => {
            let _ = writeln!(
                out,
                "Binary files {} and {} differ",
                quoted("a/", path),
                quoted("b/", path)
            );
        }
    }
}

fn hunks(out: &mut String, old: &str, new: &str, a: String, b: String) {
    let diff = TextDiff::configure()
        .timeout(DIFF_TIMEOUT)
        .diff_lines(old, new);
    let _ = write!(
        out,
        "{}",
        diff.unified_diff().context_radius(3).header(&a, &b)
    );
}

/// A path as git prints it: `a/x`, or C-quoted (`"a/t\tab"`) when it holds
/// control characters, quotes, backslashes or non-ASCII bytes (git's default
/// `core.quotePath`).
fn quoted(prefix: &str, path: &Path) -> String {
    let bytes = path.as_os_str().as_bytes();
    let needs = bytes
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x7f);
    if !needs {
        return format!("{prefix}{}", String::from_utf8_lossy(bytes));
    }
    let mut s = String::from("\"");
    s.push_str(prefix);
    for &b in bytes {
        match b {
            b'\x07' => s.push_str("\\a"),
            b'\x08' => s.push_str("\\b"),
            b'\t' => s.push_str("\\t"),
            b'\n' => s.push_str("\\n"),
            b'\x0b' => s.push_str("\\v"),
            b'\x0c' => s.push_str("\\f"),
            b'\r' => s.push_str("\\r"),
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b if !(0x20..0x7f).contains(&b) => {
                let _ = write!(s, "\\{b:03o}");
            }
            b => s.push(char::from(b)),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_follows_git() {
        assert_eq!(quoted("a/", Path::new("src/x.rs")), "a/src/x.rs");
        assert_eq!(quoted("b/", Path::new("with space")), "b/with space");
        assert_eq!(quoted("a/", Path::new("t\tab")), "\"a/t\\tab\"");
        assert_eq!(quoted("a/", Path::new("é")), "\"a/\\303\\251\"");
    }

    #[test]
    fn change_status_values() {
        assert_eq!(change_status(""), "no_changes");
        assert_eq!(change_status("diff --git a/x b/x\n"), "changed");
    }
}
