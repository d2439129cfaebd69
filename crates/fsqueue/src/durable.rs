//! The one durable-write primitive of orch. Every queue file and every
//! artifact is published through `write_file` (or moved with
//! `rename_noreplace`/`rename_replace`), so a crash at any instant leaves
//! either the old complete file or the new complete file, never a torn one.
//!
//! The protocol, in order:
//! 1. write the bytes to a temporary file in the *same directory* (same
//!    filesystem, so the rename is atomic), created `O_EXCL` with the final
//!    mode;
//! 2. `fsync` the temporary file, so its data is on disk before its name is;
//! 3. `rename` it over the destination;
//! 4. `fsync` the destination directory, so the new name itself is durable.
//!
//! Only after step 4 succeeds do we report success. A failed `fsync` is
//! returned as an error and the temporary file is removed: after a failed
//! fsync the page cache state is unknown, so publishing would be a lie.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of every temporary file. Recovery removes stale ones; directory
/// scanners skip them.
pub const TMP_PREFIX: &str = ".orch-tmp-";

/// Default mode of published files: readable by the service group.
pub const FILE_MODE: u32 = 0o640;
/// Default mode of directories orch creates.
pub const DIR_MODE: u32 = 0o750;

/// An I/O error with the operation and path that caused it.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct DurableError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl DurableError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self {
            op,
            path: path.into(),
            source,
        }
    }

    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

pub type Result<T> = std::result::Result<T, DurableError>;

fn tmp_name(final_name: &OsStr) -> String {
    static CTR: AtomicU64 = AtomicU64::new(0);
    let n = CTR.fetch_add(1, Ordering::Relaxed);
    // The final name is included (truncated) only to make stray temp files
    // recognisable; uniqueness comes from pid + counter.
    let stem: String = final_name.to_string_lossy().chars().take(40).collect();
    // The pid is read once: a syscall per temp file adds up at thousands
    // of durable writes a second.
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(std::process::id);
    format!("{TMP_PREFIX}{pid}-{n}-{stem}")
}

/// Durably publishes `data` at `path` with mode `FILE_MODE`, replacing any
/// existing file atomically.
pub fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    write_file_mode(path, data, FILE_MODE)
}

/// `write_file` with an explicit mode.
pub fn write_file_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = write_temp(path, data, mode)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(DurableError::new("rename", path, e));
    }
    fsync_parent(path)
}

/// Durably publishes `data` at `path` only if nothing exists there yet.
/// Returns `Ok(false)` (and writes nothing) when `path` already exists.
pub fn write_file_new(path: &Path, data: &[u8]) -> Result<bool> {
    let tmp = write_temp(path, data, FILE_MODE)?;
    let placed = rename_noreplace_raw(&tmp, path);
    match placed {
        Ok(()) => {
            fsync_parent(path)?;
            Ok(true)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            if e.kind() == io::ErrorKind::AlreadyExists {
                Ok(false)
            } else {
                Err(DurableError::new("rename", path, e))
            }
        }
    }
}

/// How `write_batch` places one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Replace whatever is there.
    Replace,
    /// Only if nothing exists at the name yet (placeholders).
    IfAbsent,
}

/// Durably publishes several files into one directory at the cost of one
/// directory fsync: every temp file is written and fsynced, then all are
/// renamed into place in order, then the directory is fsynced once. Same
/// guarantee per file as `write_file`; a crash may leave any prefix of the
/// batch published, so callers that need "A implies B" publish B in a later
/// batch (or call).
pub fn write_batch(dir: &Path, files: &[(&str, &[u8], Place)]) -> Result<()> {
    let mut staged: Vec<(PathBuf, PathBuf, Place)> = Vec::with_capacity(files.len());
    let cleanup = |staged: &[(PathBuf, PathBuf, Place)]| {
        for (tmp, _, _) in staged {
            let _ = std::fs::remove_file(tmp);
        }
    };
    for (name, data, place) in files {
        let path = dir.join(name);
        match write_temp(&path, data, FILE_MODE) {
            Ok(tmp) => staged.push((tmp, path, *place)),
            Err(e) => {
                cleanup(&staged);
                return Err(e);
            }
        }
    }
    for (i, (tmp, path, place)) in staged.iter().enumerate() {
        let res = match place {
            Place::Replace => std::fs::rename(tmp, path),
            Place::IfAbsent => match rename_noreplace_raw(tmp, path) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let _ = std::fs::remove_file(tmp);
                    Ok(())
                }
                r => r,
            },
        };
        if let Err(e) = res {
            cleanup(&staged[i..]);
            return Err(DurableError::new("rename", path, e));
        }
    }
    fsync_dir(dir)
}

/// Writes and fsyncs a temporary sibling of `path`, returning its path.
fn write_temp(path: &Path, data: &[u8], mode: u32) -> Result<PathBuf> {
    let dir = parent_of(path);
    let name = path.file_name().ok_or_else(|| {
        DurableError::new("write", path, io::Error::from(io::ErrorKind::InvalidInput))
    })?;
    let tmp = dir.join(tmp_name(name));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| DurableError::new("create", &tmp, e))?;
    // The process umask may have narrowed the mode (a 077 umask would make
    // artifacts unreadable by the service group): set it explicitly.
    let res = f
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| DurableError::new("chmod", &tmp, e))
        .and_then(|()| {
            f.write_all(data)
                .map_err(|e| DurableError::new("write", &tmp, e))
        })
        // An empty file has no data to order before its name: its inode is
        // committed with the directory entry by the directory fsync that
        // follows (ext4, xfs), so the file fsync is skipped for
        // placeholders and id reservations.
        .and_then(|()| {
            if data.is_empty() {
                return Ok(());
            }
            f.sync_all()
                .map_err(|e| DurableError::new("fsync", &tmp, e))
        });
    if let Err(e) = res {
        drop(f);
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsyncs a directory so the names in it (creations, renames, unlinks) are
/// durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| DurableError::new("open dir", dir, e))?;
    f.sync_all()
        .map_err(|e| DurableError::new("fsync dir", dir, e))
}

fn fsync_parent(path: &Path) -> Result<()> {
    fsync_dir(parent_of(path))
}

/// Renames `from` to `to`, failing with `AlreadyExists` instead of replacing
/// an existing `to`. Uses `renameat2(RENAME_NOREPLACE)`; on filesystems that
/// do not support it, falls back to `link` + `unlink` (which also refuses to
/// replace). Not durable by itself; see `move_noreplace`.
pub fn rename_noreplace_raw(from: &Path, to: &Path) -> io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOSYS) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Durably moves `from` to `to` without replacing: renames, then fsyncs the
/// destination directory and (when different) the source directory.
/// `Err` with kind `AlreadyExists` means someone else already published `to`;
/// `NotFound` means `from` is gone (someone else moved it first).
pub fn move_noreplace(from: &Path, to: &Path) -> Result<()> {
    rename_noreplace_raw(from, to).map_err(|e| DurableError::new("rename", from, e))?;
    fsync_move_dirs(from, to)
}

/// Durably moves `from` to `to`, replacing `to` if present.
pub fn move_replace(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| DurableError::new("rename", from, e))?;
    fsync_move_dirs(from, to)
}

fn fsync_move_dirs(from: &Path, to: &Path) -> Result<()> {
    let (src, dst) = (parent_of(from), parent_of(to));
    fsync_dir(dst)?;
    if src != dst {
        fsync_dir(src)?;
    }
    Ok(())
}

/// Durably removes a file (unlink + fsync of its directory). A missing file
/// is not an error.
pub fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => fsync_parent(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DurableError::new("remove", path, e)),
    }
}

/// Creates `dir` and its missing parents with `DIR_MODE`, fsyncing each
/// parent whose entries changed.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        create_dir_all(parent)?;
    }
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
                .map_err(|e| DurableError::new("chmod", dir, e))?;
            fsync_parent(dir)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(DurableError::new("mkdir", dir, e)),
    }
}

/// Creates several subdirectories of an existing `parent` (those missing)
/// with one fsync of `parent`.
pub fn create_subdirs(parent: &Path, names: &[&str]) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut created = false;
    for name in names {
        let dir = parent.join(name);
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(&dir) {
            Ok(()) => {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(DIR_MODE))
                    .map_err(|e| DurableError::new("chmod", &dir, e))?;
                created = true;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(DurableError::new("mkdir", &dir, e)),
        }
    }
    if created {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// True for names that belong to in-flight temporary files.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TMP_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replace_and_noreplace() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write_file(&p, b"one").unwrap();
        write_file(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!write_file_new(&p, b"three").unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let q = d.path().join("b.json");
        assert!(write_file_new(&q, b"new").unwrap());
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !is_temp_name(n)), "{names:?}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    #[test]
    fn batch_publishes_all_and_keeps_existing_placeholders() {
        let d = tempfile::tempdir().unwrap();
        write_file(&d.path().join("keep"), b"old").unwrap();
        write_batch(
            d.path(),
            &[
                ("a", b"1", Place::Replace),
                ("keep", b"new", Place::IfAbsent),
                ("b", b"2", Place::IfAbsent),
            ],
        )
        .unwrap();
        assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(d.path().join("keep")).unwrap(), b"old");
        assert_eq!(std::fs::read(d.path().join("b")).unwrap(), b"2");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        // A missing directory fails cleanly and leaves nothing behind.
        assert!(write_batch(&d.path().join("nope"), &[("x", b"1", Place::Replace)]).is_err());
    }

    #[test]
    fn move_noreplace_refuses_existing() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        write_file(&a, b"a").unwrap();
        write_file(&b, b"b").unwrap();
        let err = move_noreplace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        remove_file(&b).unwrap();
        move_noreplace(&a, &b).unwrap();
        assert!(!a.exists());
        let err = move_noreplace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn write_does_not_follow_planted_symlink_at_temp() {
        // The destination being a symlink is replaced by the rename (the link
        // itself is replaced, its target untouched).
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_file(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(
            !std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
