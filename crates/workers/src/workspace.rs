//! Preparing a job's workspace (`workspaces/<job_id>/work`, the agent's
//! cwd; SPEC §5.2).
//!
//! - An existing, non-empty work dir is **reused as is**: resume, approve and
//!   retry continue in the workspace the earlier steps changed (the MVP
//!   failed here, defect 7).
//! - No source: an empty work dir.
//! - A git source (it has `.git`): a local clone at its current HEAD
//!   (`git clone --local --no-hardlinks`); when `git` is not installed, a
//!   copy instead.
//! - Any other source: a copy that never follows symlinks. In-tree links
//!   are copied as links (absolute in-tree links are rewritten relative, so
//!   they point into the copy, not back into the source); links that resolve
//!   outside the source, or never resolve, are skipped and reported. Every
//!   Python venv has links, so refusing them (the MVP, defect 8) is not an
//!   option; following them would let a link leak files from anywhere.
//! - The copy never recurses into the `exclude` directories (orch's own
//!   var/artifacts/workspaces may live inside the source tree) nor into the
//!   directory it is copying into (the MVP recursed into itself, defect 8).
//!   Exclusion compares device and inode, so no path spelling (symlinks,
//!   `..`, bind mounts) can sneak past it.
//!
//! - The copy stays on the source's filesystem: a directory that is a
//!   mount point of another filesystem is skipped and reported (a source
//!   tree with `/proc` or a network share mounted inside is not copied
//!   whole).
//! - The source is never `/` or a system directory
//!   (`contracts::validate::check_workdir`, checked again here on the
//!   resolved path, whatever the job said), and a copy is capped at
//!   [`Limits`] (`WORKSPACE_MAX_BYTES`, `WORKSPACE_MAX_FILES`): past either
//!   cap preparation fails with an error naming the cap, and nothing is
//!   left behind. A git clone is measured against the same caps.
//!
//! The work dir appears atomically: everything is built in a staging
//! sibling, flushed with `syncfs`, then renamed into place. A crash mid-copy
//! therefore never leaves a half-copied work dir that the next attempt would
//! "reuse". (The copy is flushed once with `syncfs` rather than one `fsync`
//! per file, which would make copying a large tree crawl.)

use crate::exec::{ExecError, run_program};
use artifacts::durable;
use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Links resolved through more hops than this are treated as loops (the
/// kernel's own limit is 40).
const MAX_LINK_HOPS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("workspace source {path}: {what}")]
    BadSource { path: PathBuf, what: &'static str },
    #[error("work dir {path}: {what}")]
    BadWorkDir { path: PathBuf, what: &'static str },
    #[error("workspace source {path}: {why}")]
    Refused { path: PathBuf, why: String },
    #[error(
        "workspace source {path} is too large: more than {var}={limit} {unit}; choose a smaller workdir or raise {var}"
    )]
    TooLarge {
        path: PathBuf,
        var: &'static str,
        limit: u64,
        unit: &'static str,
    },
    #[error("cloning git source {source_dir} failed: {error}")]
    GitClone {
        source_dir: PathBuf,
        #[source]
        error: ExecError,
    },
}

impl From<durable::DurableError> for WorkspaceError {
    fn from(e: durable::DurableError) -> Self {
        Self::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WorkspaceError + 'a {
    move |source| WorkspaceError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// How the work dir came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrepareMethod {
    /// It existed and was not empty; nothing was touched.
    Reused,
    /// No source: a new empty directory.
    Empty,
    /// A local git clone of the source's HEAD.
    GitClone,
    /// A copy of a non-git source.
    Copy,
    /// A copy of a git source, because `git` is not installed.
    CopyGitMissing,
}

/// Why an entry of the source was not copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// A symlink resolving outside the source tree.
    SymlinkOutside { target: PathBuf },
    /// A symlink that never resolves (a loop, or a chain too long).
    SymlinkLoop { target: PathBuf },
    /// An excluded directory (orch's own data, or the copy's destination).
    Excluded,
    /// A FIFO, socket or device.
    SpecialFile,
    /// A directory on another filesystem (a mount point inside the source).
    OtherFilesystem,
    /// Could not be read (permissions).
    Unreadable { error: String },
}

/// One entry of the source that is not in the work dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Relative to the source root.
    pub path: PathBuf,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareOutcome {
    pub work_dir: PathBuf,
    pub method: PrepareMethod,
    /// Entries of the source left out of the copy (empty for clones).
    pub skipped: Vec<Skipped>,
}

/// Caps on what a workspace copy may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of regular files (`WORKSPACE_MAX_BYTES`).
    pub max_bytes: u64,
    /// Entries: files, directories and links (`WORKSPACE_MAX_FILES`).
    pub max_files: u64,
}

impl Default for Limits {
    /// The documented defaults of `WORKSPACE_MAX_BYTES` and
    /// `WORKSPACE_MAX_FILES`.
    fn default() -> Self {
        Self {
            max_bytes: 2 << 30,
            max_files: 100_000,
        }
    }
}

/// Prepares `work_dir` from `source` (see the module docs) with the
/// default [`Limits`]. `exclude` lists directories never copied (missing
/// ones are ignored). Blocking (it copies trees and may run `git`): call it
/// from `tokio::task::spawn_blocking`.
pub fn prepare(
    source: Option<&Path>,
    work_dir: &Path,
    exclude: &[PathBuf],
) -> Result<PrepareOutcome, WorkspaceError> {
    prepare_with_limits(source, work_dir, exclude, Limits::default())
}

/// [`prepare`] with explicit caps.
pub fn prepare_with_limits(
    source: Option<&Path>,
    work_dir: &Path,
    exclude: &[PathBuf],
    limits: Limits,
) -> Result<PrepareOutcome, WorkspaceError> {
    prepare_with_git(source, work_dir, exclude, OsStr::new("git"), limits)
}

/// True when `work_dir` is a git work tree (a clone, or a reused clone), the
/// case in which `change_status` is reported.
pub fn is_git_workspace(work_dir: &Path) -> bool {
    std::fs::symlink_metadata(work_dir.join(".git")).is_ok()
}

fn prepare_with_git(
    source: Option<&Path>,
    work_dir: &Path,
    exclude: &[PathBuf],
    git: &OsStr,
    limits: Limits,
) -> Result<PrepareOutcome, WorkspaceError> {
    let outcome = |method, skipped| PrepareOutcome {
        work_dir: work_dir.to_path_buf(),
        method,
        skipped,
    };
    match std::fs::symlink_metadata(work_dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(WorkspaceError::BadWorkDir {
                path: work_dir.to_path_buf(),
                what: "is a symlink; refusing to use it",
            });
        }
        Ok(m) if m.is_dir() => {
            let mut rd = std::fs::read_dir(work_dir).map_err(io_err("read dir", work_dir))?;
            if rd.next().is_some() {
                return Ok(outcome(PrepareMethod::Reused, Vec::new()));
            }
        }
        Ok(_) => {
            return Err(WorkspaceError::BadWorkDir {
                path: work_dir.to_path_buf(),
                what: "exists and is not a directory",
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("stat", work_dir)(e)),
    }
    let Some(source) = source else {
        durable::create_dir_all(work_dir)?;
        return Ok(outcome(PrepareMethod::Empty, Vec::new()));
    };
    let src = std::fs::canonicalize(source).map_err(io_err("resolve", source))?;
    if !src.is_dir() {
        return Err(WorkspaceError::BadSource {
            path: source.to_path_buf(),
            what: "is not a directory",
        });
    }
    // Whatever the job said: the path actually copied is never `/` or a
    // system directory (a symlink to /etc resolves to /etc here).
    if let Err(why) = contracts::validate::check_workdir(&src.to_string_lossy()) {
        return Err(WorkspaceError::Refused {
            path: source.to_path_buf(),
            why,
        });
    }
    let parent = match work_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => {
            return Err(WorkspaceError::BadWorkDir {
                path: work_dir.to_path_buf(),
                what: "has no parent directory",
            });
        }
    };
    durable::create_dir_all(parent)?;
    let staging = staging_path(parent, work_dir);

    let built = build(&src, source, &staging, work_dir, exclude, git, limits);
    let (method, skipped) = match built {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    // Flush the whole copy once, then publish it by rename (over the empty
    // work dir, if one exists) and make the new name durable.
    let published = File::open(&staging)
        .map_err(io_err("open", &staging))
        .and_then(|f| nix::unistd::syncfs(&f).map_err(|e| io_err("syncfs", &staging)(e.into())))
        .and_then(|()| durable::move_replace(&staging, work_dir).map_err(WorkspaceError::from));
    if let Err(e) = published {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    for s in &skipped {
        tracing::info!(path = %s.path.display(), reason = ?s.reason, "left out of the workspace copy");
    }
    Ok(outcome(method, skipped))
}

/// Builds the new work dir at `staging`.
fn build(
    src: &Path,
    given_src: &Path,
    staging: &Path,
    work_dir: &Path,
    exclude: &[PathBuf],
    git: &OsStr,
    limits: Limits,
) -> Result<(PrepareMethod, Vec<Skipped>), WorkspaceError> {
    let git_source = std::fs::symlink_metadata(src.join(".git")).is_ok();
    let mut method = PrepareMethod::Copy;
    if git_source {
        let args = [
            OsStr::new("clone"),
            OsStr::new("--local"),
            OsStr::new("--no-hardlinks"),
            OsStr::new("-q"),
            OsStr::new("--"),
            src.as_os_str(),
            staging.as_os_str(),
        ];
        match run_program(git, &args, None) {
            Ok(_) => {
                measure(staging, given_src, limits)?;
                return Ok((PrepareMethod::GitClone, Vec::new()));
            }
            Err(ExecError::NotFound { .. }) => {
                tracing::warn!(source = %src.display(), "git is not installed; copying the git source instead of cloning it");
                method = PrepareMethod::CopyGitMissing;
            }
            Err(error) => {
                return Err(WorkspaceError::GitClone {
                    source_dir: src.to_path_buf(),
                    error,
                });
            }
        }
    }
    let root_meta = std::fs::metadata(src).map_err(io_err("stat", src))?;
    let root_mode = root_meta.mode();
    std::fs::DirBuilder::new()
        .mode(root_mode & 0o777 | 0o700)
        .create(staging)
        .map_err(io_err("mkdir", staging))?;
    let mut excluded = HashSet::new();
    for dir in exclude
        .iter()
        .map(PathBuf::as_path)
        .chain([staging, work_dir])
    {
        if let Ok(m) = std::fs::metadata(dir) {
            excluded.insert((m.dev(), m.ino()));
        }
    }
    let mut skipped = Vec::new();
    let roots = Roots {
        canonical: src,
        given: given_src,
        dev: root_meta.dev(),
    };
    let mut budget = Budget::new(limits, given_src);
    copy_tree(&roots, staging, &excluded, &mut skipped, &mut budget)?;
    Ok((method, skipped))
}

fn staging_path(parent: &Path, work_dir: &Path) -> PathBuf {
    static CTR: AtomicU64 = AtomicU64::new(0);
    let name = work_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent.join(format!(
        "{}{name}-{}-{}",
        durable::TMP_PREFIX,
        std::process::id(),
        CTR.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The source root as canonicalised and as the caller spelled it (absolute
/// links may use either).
struct Roots<'a> {
    canonical: &'a Path,
    given: &'a Path,
    /// The source root's filesystem: the copy never leaves it.
    dev: u64,
}

/// What a copy has used of its [`Limits`].
struct Budget<'a> {
    limits: Limits,
    source: &'a Path,
    bytes: u64,
    files: u64,
}

impl<'a> Budget<'a> {
    fn new(limits: Limits, source: &'a Path) -> Self {
        Self {
            limits,
            source,
            bytes: 0,
            files: 0,
        }
    }

    /// Accounts for one more entry of `size` bytes, or fails naming the cap.
    fn take(&mut self, size: u64) -> Result<(), WorkspaceError> {
        self.files += 1;
        self.bytes = self.bytes.saturating_add(size);
        if self.files > self.limits.max_files {
            return Err(WorkspaceError::TooLarge {
                path: self.source.to_path_buf(),
                var: "WORKSPACE_MAX_FILES",
                limit: self.limits.max_files,
                unit: "files",
            });
        }
        if self.bytes > self.limits.max_bytes {
            return Err(WorkspaceError::TooLarge {
                path: self.source.to_path_buf(),
                var: "WORKSPACE_MAX_BYTES",
                limit: self.limits.max_bytes,
                unit: "bytes",
            });
        }
        Ok(())
    }
}

/// Checks a finished clone against the caps (without following links).
fn measure(dir: &Path, source: &Path, limits: Limits) -> Result<(), WorkspaceError> {
    let mut budget = Budget::new(limits, source);
    for entry in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            WorkspaceError::Io {
                op: "walk",
                path,
                source: e.into(),
            }
        })?;
        let size = if entry.file_type().is_file() {
            entry.metadata().map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
        budget.take(size)?;
    }
    Ok(())
}

impl Roots<'_> {
    /// The part of an absolute `target` below the source root, if any.
    fn strip(&self, target: &Path) -> Option<PathBuf> {
        target
            .strip_prefix(self.canonical)
            .or_else(|_| target.strip_prefix(self.given))
            .ok()
            .map(Path::to_path_buf)
    }
}

/// Copies the tree below `roots.canonical` into `dst` (which exists),
/// iteratively (deep trees must not overflow the stack).
fn copy_tree(
    roots: &Roots<'_>,
    dst: &Path,
    excluded: &HashSet<(u64, u64)>,
    skipped: &mut Vec<Skipped>,
    budget: &mut Budget<'_>,
) -> Result<(), WorkspaceError> {
    let mut dirs: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel_dir) = dirs.pop() {
        let src_dir = roots.canonical.join(&rel_dir);
        let mut entries = match std::fs::read_dir(&src_dir) {
            Ok(rd) => rd
                .collect::<Result<Vec<_>, _>>()
                .map_err(io_err("read dir", &src_dir))?,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                skipped.push(Skipped {
                    path: rel_dir.clone(),
                    reason: SkipReason::Unreadable {
                        error: e.to_string(),
                    },
                });
                continue;
            }
            Err(e) => return Err(io_err("read dir", &src_dir)(e)),
        };
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let rel = rel_dir.join(entry.file_name());
            let from = entry.path();
            let to = dst.join(&rel);
            // `DirEntry::metadata` does not follow symlinks.
            let meta = entry.metadata().map_err(io_err("stat", &from))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                if excluded.contains(&(meta.dev(), meta.ino())) {
                    skipped.push(Skipped {
                        path: rel,
                        reason: SkipReason::Excluded,
                    });
                    continue;
                }
                if meta.dev() != roots.dev {
                    skipped.push(Skipped {
                        path: rel,
                        reason: SkipReason::OtherFilesystem,
                    });
                    continue;
                }
                budget.take(0)?;
                std::fs::DirBuilder::new()
                    .mode(meta.mode() & 0o777 | 0o700)
                    .create(&to)
                    .map_err(io_err("mkdir", &to))?;
                dirs.push(rel);
            } else if ft.is_file() {
                budget.take(meta.len())?;
                match copy_file(&from, &to, meta.permissions().mode() & 0o777 | 0o600) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                        skipped.push(Skipped {
                            path: rel,
                            reason: SkipReason::Unreadable {
                                error: e.to_string(),
                            },
                        })
                    }
                    Err(e) => return Err(io_err("copy", &from)(e)),
                }
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&from).map_err(io_err("read link", &from))?;
                let parent: Vec<OsString> = rel_dir.iter().map(OsStr::to_os_string).collect();
                match judge_link(roots, &parent, &target) {
                    LinkVerdict::Keep(new_target) => {
                        budget.take(0)?;
                        std::os::unix::fs::symlink(&new_target, &to)
                            .map_err(io_err("symlink", &to))?;
                    }
                    LinkVerdict::Outside => skipped.push(Skipped {
                        path: rel,
                        reason: SkipReason::SymlinkOutside { target },
                    }),
                    LinkVerdict::Loop => skipped.push(Skipped {
                        path: rel,
                        reason: SkipReason::SymlinkLoop { target },
                    }),
                }
            } else {
                skipped.push(Skipped {
                    path: rel,
                    reason: SkipReason::SpecialFile,
                });
            }
        }
    }
    Ok(())
}

/// Copies one regular file, refusing to follow a link swapped in since the
/// `lstat` and to block on a FIFO.
fn copy_file(from: &Path, to: &Path, mode: u32) -> io::Result<()> {
    let mut src = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(from)?;
    if !src.metadata()?.is_file() {
        return Err(io::Error::other(
            "changed into a non-regular file while copying",
        ));
    }
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(to)?;
    io::copy(&mut src, &mut dst)?;
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum LinkVerdict {
    /// Copy the link with this target.
    Keep(PathBuf),
    Outside,
    Loop,
}

/// Decides what to do with a link at `<root>/<parent...>/<name>` whose
/// target is `target`.
///
/// A purely lexical check is not enough: with `sub/l1 -> ..` (lexically
/// inside), `l2 -> sub/l1/..` is lexically inside too but the kernel
/// resolves it to the root's parent. So we resolve the target the way the
/// kernel would, component by component, expanding links found inside the
/// tree, and treat the tree's root as the top: going above it is outside.
/// Components that do not exist resolve lexically (the kernel would fail on
/// them, so they cannot lead anywhere).
fn judge_link(roots: &Roots<'_>, parent: &[OsString], target: &Path) -> LinkVerdict {
    if let Some(verdict) = resolve_in_tree(roots, parent, target) {
        return verdict;
    }
    if target.is_absolute() {
        // In-tree absolute link: rewrite relative so it points into the copy.
        let Some(below) = roots.strip(target) else {
            return LinkVerdict::Outside;
        };
        let mut rel = PathBuf::new();
        for _ in parent {
            rel.push("..");
        }
        rel.push(below);
        if rel.as_os_str().is_empty() {
            rel.push(".");
        }
        LinkVerdict::Keep(rel)
    } else {
        LinkVerdict::Keep(target.to_path_buf())
    }
}

enum Part {
    Up,
    Name(OsString),
}

fn parts_of(p: &Path) -> impl Iterator<Item = Part> + '_ {
    p.components().filter_map(|c| match c {
        Component::ParentDir => Some(Part::Up),
        Component::Normal(n) => Some(Part::Name(n.to_os_string())),
        Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
    })
}

/// `None` when the target resolves inside the tree; otherwise the verdict.
fn resolve_in_tree(roots: &Roots<'_>, parent: &[OsString], target: &Path) -> Option<LinkVerdict> {
    let mut stack: Vec<OsString> = parent.to_vec();
    let mut pending: VecDeque<Part> = VecDeque::new();
    let mut hops = 0;
    // Queues `t` to be walked next, relative to the current position (or to
    // the root, for absolute in-tree targets).
    let load = |t: &Path, stack: &mut Vec<OsString>, pending: &mut VecDeque<Part>| -> bool {
        let below;
        let rel = if t.is_absolute() {
            match roots.strip(t) {
                Some(b) => {
                    stack.clear();
                    below = b;
                    below.as_path()
                }
                None => return false,
            }
        } else {
            t
        };
        let parts: Vec<Part> = parts_of(rel).collect();
        for p in parts.into_iter().rev() {
            pending.push_front(p);
        }
        true
    };
    if !load(target, &mut stack, &mut pending) {
        return Some(LinkVerdict::Outside);
    }
    while let Some(part) = pending.pop_front() {
        match part {
            Part::Up => {
                if stack.pop().is_none() {
                    return Some(LinkVerdict::Outside);
                }
            }
            Part::Name(n) => {
                stack.push(n);
                let mut here = roots.canonical.to_path_buf();
                here.extend(&stack);
                let is_link =
                    std::fs::symlink_metadata(&here).is_ok_and(|m| m.file_type().is_symlink());
                if is_link {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Some(LinkVerdict::Loop);
                    }
                    stack.pop();
                    let Ok(next) = std::fs::read_link(&here) else {
                        return Some(LinkVerdict::Loop);
                    };
                    if !load(&next, &mut stack, &mut pending) {
                        return Some(LinkVerdict::Outside);
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_source_without_git_is_copied() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join(".git")).unwrap();
        std::fs::write(src.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(src.join("a.txt"), "a").unwrap();
        let work = tmp.path().join("ws/job/work");
        let out = prepare_with_git(
            Some(&src),
            &work,
            &[],
            OsStr::new("/nonexistent/orch-git"),
            Limits::default(),
        )
        .unwrap();
        assert_eq!(out.method, PrepareMethod::CopyGitMissing);
        assert_eq!(std::fs::read_to_string(work.join("a.txt")).unwrap(), "a");
        assert!(work.join(".git/HEAD").is_file());
    }

    #[test]
    fn chained_links_cannot_climb_out() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("..", root.join("sub/l1")).unwrap();
        let roots = Roots {
            canonical: &root,
            given: &root,
            dev: 0,
        };
        // Lexically inside, really outside.
        assert_eq!(
            judge_link(&roots, &[], Path::new("sub/l1/..")),
            LinkVerdict::Outside
        );
        assert_eq!(
            judge_link(&roots, &[], Path::new("sub/l1/sub")),
            LinkVerdict::Keep(PathBuf::from("sub/l1/sub"))
        );
        assert_eq!(
            judge_link(&roots, &["sub".into()], Path::new(&root.join("x"))),
            LinkVerdict::Keep(PathBuf::from("../x"))
        );
        assert_eq!(
            judge_link(&roots, &[], Path::new("/etc/passwd")),
            LinkVerdict::Outside
        );
        assert_eq!(
            judge_link(&roots, &["sub".into()], Path::new("../..")),
            LinkVerdict::Outside
        );
        assert_eq!(
            judge_link(&roots, &[], Path::new(&root)),
            LinkVerdict::Keep(PathBuf::from("."))
        );
    }
}
