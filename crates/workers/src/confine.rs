//! Host-side writes into trees an agent can write (its workspace and its
//! per-job state directory), and the checks that turn what an agent planted
//! there into a refused action instead of a host-side effect.
//!
//! The runner runs with more privileges than the agent, on the host. Any
//! path it opens inside an agent-writable tree may have been replaced by a
//! symlink (to another job's workspace, the queue, a host file), so every
//! such write walks the path one component at a time with `openat` and
//! `O_NOFOLLOW`, as `artifacts` does for reads: the kernel refuses a link at
//! any level, and no check-then-open race exists. A file is never written in
//! place: an existing regular file is unlinked and a new one created with
//! `O_EXCL`, so a hard link planted at the name cannot redirect the write.
//! A symlink (or a FIFO, socket or device) where orch expects a directory or
//! a file is a [`Violation`]: the step fails with `sandbox_violation` and the
//! path is named in its result and logs.

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// The error code of a step whose agent planted something orch refused.
pub const SANDBOX_VIOLATION: &str = "sandbox_violation";

/// Something in an agent-writable tree that orch refused to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The full path involved.
    pub path: PathBuf,
    /// What was found, e.g. "is a symlink".
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.what)
    }
}

/// Why a confined write failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The agent planted something at the path (a link, a special file).
    #[error("refused: {0}")]
    Violation(Violation),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a plain relative path")]
    BadPath { path: PathBuf },
}

impl ConfineError {
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            Self::Violation(v) => Some(v),
            _ => None,
        }
    }
}

fn io(op: &'static str, path: &Path, e: Errno) -> ConfineError {
    ConfineError::Io {
        op,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

fn kind_of(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

fn describe(kind: SFlag) -> &'static str {
    match kind {
        SFlag::S_IFLNK => "is a symlink",
        SFlag::S_IFDIR => "is a directory",
        SFlag::S_IFIFO => "is a FIFO",
        SFlag::S_IFSOCK => "is a socket",
        SFlag::S_IFCHR | SFlag::S_IFBLK => "is a device",
        _ => "is not a regular file",
    }
}

fn violation(path: &Path, what: impl Into<String>) -> ConfineError {
    ConfineError::Violation(Violation {
        path: path.to_path_buf(),
        what: what.into(),
    })
}

/// The plain components of `rel` (no `..`, no root, no `.`).
fn parts(rel: &Path) -> Result<Vec<&std::ffi::OsStr>, ConfineError> {
    rel.components()
        .map(|c| match c {
            Component::Normal(s) => Ok(s),
            _ => Err(ConfineError::BadPath {
                path: rel.to_path_buf(),
            }),
        })
        .collect()
}

/// Opens `root` itself as a directory, refusing a symlink there.
pub fn open_root(root: &Path) -> Result<OwnedFd, ConfineError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(AT_FDCWD, root, flags, Mode::empty()).map_err(|e| classify(e, AT_FDCWD, root, root))
}

fn classify<Fd: AsFd>(e: Errno, at: Fd, name: &Path, path: &Path) -> ConfineError {
    match e {
        Errno::ELOOP | Errno::ENOTDIR => {
            match fstatat(at.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => violation(path, describe(kind_of(&st))),
                Err(e) => io("stat", path, e),
            }
        }
        other => io("open", path, other),
    }
}

/// Creates (mode `mode`) or opens every directory of `rel` beneath `root`,
/// one component at a time, never following a link. Returns the last one.
pub fn mkdirs_beneath(root: &Path, rel: &Path, mode: u32) -> Result<OwnedFd, ConfineError> {
    let mut fd = open_root(root)?;
    let mut path = root.to_path_buf();
    for part in parts(rel)? {
        path.push(part);
        match mkdirat(fd.as_fd(), part, Mode::from_bits_truncate(mode)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io("mkdir", &path, e)),
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        fd = openat(fd.as_fd(), part, flags, Mode::empty())
            .map_err(|e| classify(e, fd.as_fd(), Path::new(part), &path))?;
    }
    Ok(fd)
}

/// Writes `data` to `root/rel` (mode `mode`), creating its directories
/// (0700): a fresh file every time (an existing regular file is replaced,
/// anything else at the name is a [`Violation`]).
pub fn write_beneath(root: &Path, rel: &Path, data: &[u8], mode: u32) -> Result<(), ConfineError> {
    let (dir_rel, name) = match (rel.parent(), rel.file_name()) {
        (Some(d), Some(n)) => (d, n),
        _ => {
            return Err(ConfineError::BadPath {
                path: rel.to_path_buf(),
            });
        }
    };
    let dir = mkdirs_beneath(root, dir_rel, 0o700)?;
    let path = root.join(rel);
    match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if kind_of(&st) == SFlag::S_IFREG => {
            unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| io("unlink", &path, e))?;
        }
        Ok(st) => return Err(violation(&path, describe(kind_of(&st)))),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(io("stat", &path, e)),
    }
    let flags = OFlag::O_WRONLY
        | OFlag::O_CREAT
        | OFlag::O_EXCL
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NONBLOCK;
    let fd = openat(dir.as_fd(), name, flags, Mode::from_bits_truncate(mode)).map_err(|e| {
        if e == Errno::EEXIST || e == Errno::ELOOP {
            violation(&path, "appeared while orch was writing it")
        } else {
            io("create", &path, e)
        }
    })?;
    let mut f = File::from(fd);
    f.write_all(data).map_err(|e| ConfineError::Io {
        op: "write",
        path: path.clone(),
        source: e,
    })?;
    Ok(())
}

/// What is at `root/rel`, without following links anywhere on the way:
/// `Ok(None)` when nothing is there. A symlink on the way is a violation.
pub fn kind_beneath(root: &Path, rel: &Path) -> Result<Option<SFlag>, ConfineError> {
    let (dir_rel, name) = match (rel.parent(), rel.file_name()) {
        (Some(d), Some(n)) => (d, n),
        _ => {
            return Err(ConfineError::BadPath {
                path: rel.to_path_buf(),
            });
        }
    };
    let mut fd = open_root(root)?;
    let mut path = root.to_path_buf();
    for part in parts(dir_rel)? {
        path.push(part);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        fd = match openat(fd.as_fd(), part, flags, Mode::empty()) {
            Ok(f) => f,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(classify(e, fd.as_fd(), Path::new(part), &path)),
        };
    }
    match fstatat(fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(kind_of(&st))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(io("stat", &root.join(rel), e)),
    }
}

/// The paths of the state directory orch itself opens from the host
/// (relative to the state dir), each with the kind orch expects there.
pub const STATE_PATHS: &[(&str, bool)] = &[
    ("prompts", true),
    ("claude", true),
    ("codex", true),
    ("xdg", true),
    ("xdg/config", true),
    ("xdg/data", true),
    ("xdg/cache", true),
    ("xdg/state", true),
    ("home", true),
    ("handoff", true),
    (".orch-seeded", false),
];

/// Checks the state directory's orch-opened paths after an agent ran: a
/// symlink or special file at any of them (or inside `prompts/`) is listed.
pub fn check_state_dir(state_dir: &Path) -> Vec<Violation> {
    let mut out = Vec::new();
    for (rel, want_dir) in STATE_PATHS {
        match kind_beneath(state_dir, Path::new(rel)) {
            Ok(None) => {}
            Ok(Some(k)) if *want_dir && k == SFlag::S_IFDIR => {}
            Ok(Some(k)) if !*want_dir && k == SFlag::S_IFREG => {}
            Ok(Some(k)) => out.push(Violation {
                path: state_dir.join(rel),
                what: describe(k).into(),
            }),
            Err(ConfineError::Violation(v)) => {
                // `xdg` is met again on the way to each `xdg/*`.
                if !out.contains(&v) {
                    out.push(v);
                }
            }
            Err(_) => {}
        }
    }
    if let Ok(rd) = std::fs::read_dir(state_dir.join("prompts"))
        && std::fs::symlink_metadata(state_dir.join("prompts")).is_ok_and(|m| m.is_dir())
    {
        for e in rd.flatten() {
            if let Ok(ft) = e.file_type()
                && !ft.is_file()
            {
                out.push(Violation {
                    path: e.path(),
                    what: if ft.is_symlink() {
                        "is a symlink".into()
                    } else {
                        "is not a regular file".into()
                    },
                });
            }
        }
    }
    out
}

/// Clears setuid, setgid (and sticky-on-file) bits on every regular file
/// under `root`, never following links, so nothing an agent leaves behind
/// runs with privileges when the host executes it. Returns the files that
/// had such bits (refused actions worth reporting).
pub fn strip_setid(root: &Path) -> Vec<PathBuf> {
    let mut stripped = Vec::new();
    let walk = walkdir::WalkDir::new(root).follow_links(false);
    for entry in walk.into_iter().flatten() {
        if !entry.file_type().is_file() {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        use std::os::unix::fs::MetadataExt;
        if meta.mode() & 0o6000 == 0 {
            continue;
        }
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let Ok(fd) = openat(AT_FDCWD, entry.path(), flags, Mode::empty()) else {
            continue;
        };
        let Ok(st) = fstat(fd.as_fd()) else { continue };
        if kind_of(&st) != SFlag::S_IFREG {
            continue;
        }
        let mode = Mode::from_bits_truncate(st.st_mode & 0o1777 & !0o6000);
        if nix::sys::stat::fchmod(fd.as_fd(), mode).is_ok() {
            stripped.push(entry.path().to_path_buf());
        }
    }
    stripped
}

/// Changes the owner (and group) of every entry under `root`, `root`
/// included, to `uid`, never following links (links themselves are
/// re-owned, their targets are not).
pub fn chown_tree(root: &Path, uid: u32) -> std::io::Result<()> {
    let owner = Some(nix::unistd::Uid::from_raw(uid));
    let group = Some(nix::unistd::Gid::from_raw(uid));
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.map_err(std::io::Error::other)?;
        nix::unistd::fchownat(
            AT_FDCWD,
            entry.path(),
            owner,
            group,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(std::io::Error::from)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "orch-confine-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&p).expect("tmp");
        p
    }

    #[test]
    fn a_symlink_at_any_level_is_a_violation_and_nothing_is_written_through_it() {
        let root = tmp();
        let outside = tmp();
        std::os::unix::fs::symlink(&outside, root.join("prompts")).expect("link");
        let e = write_beneath(&root, Path::new("prompts/a.md"), b"x", 0o600).unwrap_err();
        assert!(e.violation().is_some(), "{e}");
        assert!(!outside.join("a.md").exists());
        std::fs::remove_file(root.join("prompts")).expect("rm");
        std::fs::create_dir(root.join("prompts")).expect("dir");
        std::os::unix::fs::symlink(outside.join("victim"), root.join("prompts/a.md"))
            .expect("link");
        let e = write_beneath(&root, Path::new("prompts/a.md"), b"x", 0o600).unwrap_err();
        assert!(e.violation().is_some(), "{e}");
        assert!(!outside.join("victim").exists());
        assert_eq!(check_state_dir(&root).len(), 1);
        let e = mkdirs_beneath(&root, Path::new("prompts/a.md/x"), 0o700).unwrap_err();
        assert!(e.violation().is_some(), "{e}");
        std::fs::remove_file(root.join("prompts/a.md")).expect("rm");
        write_beneath(&root, Path::new("prompts/a.md"), b"ok", 0o600).expect("write");
        write_beneath(&root, Path::new("prompts/a.md"), b"again", 0o600).expect("rewrite");
        assert_eq!(
            std::fs::read(root.join("prompts/a.md")).expect("read"),
            b"again"
        );
        assert!(check_state_dir(&root).is_empty());
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&outside);
    }
}
