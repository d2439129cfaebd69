//! Opening files inside a job directory without ever following a symlink.
//!
//! Checking each component with `symlink_metadata` and then opening the path
//! is racy: a link can be swapped in between the check and the open. Instead
//! we walk the path with `openat`, one component at a time, each opened with
//! `O_NOFOLLOW` relative to the directory descriptor opened just before. The
//! kernel then refuses a symlink at any level, and what we read is exactly
//! the file we walked to. A symlink planted at `steps/x/report.md` pointing to
//! `/etc/passwd` yields `ArtifactError::Symlink`, never the password file.
//!
//! The artifacts *root* may itself be a symlink (operators relocate data
//! directories that way); everything from the job directory down may not.

use crate::error::{ArtifactError, Result};
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A bounded read: at most the requested number of bytes, and whether the
/// file held more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundedRead {
    pub data: Vec<u8>,
    /// True when the file is larger than the limit and `data` is its prefix.
    pub truncated: bool,
    /// The file's size when it was opened.
    pub size: u64,
}

/// Opens `dir/<parts...>` as a regular file for reading. `dir`'s last
/// component and every part must not be symlinks; the final part must be a
/// regular file (FIFOs would block, devices would lie).
pub(crate) fn open_beneath(dir: &Path, parts: &[&str]) -> Result<File> {
    let Some((last, inner)) = parts.split_last() else {
        return Err(ArtifactError::WrongType {
            path: dir.to_path_buf(),
            what: "is a directory, not a file",
        });
    };
    let mut path = dir.to_path_buf();
    let mut fd = open_dir_nofollow(AT_FDCWD, dir, &path)?;
    for part in inner {
        path.push(part);
        fd = open_dir_nofollow(fd.as_fd(), *part, &path)?;
    }
    path.push(last);
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NOCTTY
        // A FIFO planted in the tree must not block the open.
        | OFlag::O_NONBLOCK;
    let file = match openat(fd.as_fd(), *last, flags, Mode::empty()) {
        Ok(f) => f,
        Err(e) => return Err(classify(e, fd.as_fd(), last, &path)),
    };
    let st = fstat(file.as_fd()).map_err(|e| ArtifactError::io("stat", &path, e.into()))?;
    if !is_type(&st, SFlag::S_IFREG) {
        return Err(ArtifactError::WrongType {
            path,
            what: "is not a regular file",
        });
    }
    Ok(File::from(file))
}

/// Reads at most `max` bytes of `file`.
pub(crate) fn read_bounded(mut file: File, max: u64, path: &Path) -> Result<BoundedRead> {
    let size = file
        .metadata()
        .map_err(|e| ArtifactError::io("stat", path, e))?
        .len();
    let mut data = Vec::with_capacity(usize::try_from(size.min(max)).unwrap_or(0));
    // One byte past the limit tells us whether there was more, even when the
    // file grew after the fstat.
    (&mut file)
        .take(max.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| ArtifactError::io("read", path, e))?;
    let truncated = data.len() as u64 > max;
    if truncated {
        data.truncate(usize::try_from(max).unwrap_or(usize::MAX));
    }
    Ok(BoundedRead {
        data,
        truncated,
        size,
    })
}

/// True when `dir` exists and is a real directory (not a symlink to one).
pub(crate) fn is_real_dir(dir: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(ArtifactError::Symlink {
            path: dir.to_path_buf(),
        }),
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(ArtifactError::WrongType {
            path: dir.to_path_buf(),
            what: "is not a directory",
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ArtifactError::io("stat", dir, e)),
    }
}

fn open_dir_nofollow<Fd: AsFd>(
    at: Fd,
    name: &(impl AsRef<Path> + ?Sized),
    path: &Path,
) -> Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let at = at.as_fd();
    openat(at, name.as_ref(), flags, Mode::empty())
        .map_err(|e| classify(e, at, name.as_ref(), path))
}

/// Turns an `openat` failure into the most useful error: a symlink is named
/// as such (Linux reports it as `ELOOP` or, with `O_DIRECTORY`, sometimes
/// `ENOTDIR`), a missing file as `NotFound`.
fn classify<Fd: AsFd>(
    e: Errno,
    at: Fd,
    name: &(impl AsRef<Path> + ?Sized),
    path: &Path,
) -> ArtifactError {
    match e {
        Errno::ENOENT => ArtifactError::NotFound {
            path: path.to_path_buf(),
        },
        Errno::ELOOP | Errno::ENOTDIR => {
            match fstatat(at, name.as_ref(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if is_type(&st, SFlag::S_IFLNK) => ArtifactError::Symlink {
                    path: path.to_path_buf(),
                },
                _ => ArtifactError::WrongType {
                    path: path.to_path_buf(),
                    what: "is not a directory",
                },
            }
        }
        other => ArtifactError::io("open", path, other.into()),
    }
}

fn is_type(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind
}

/// The job-relative path of `parts`, for messages.
pub(crate) fn join(dir: &Path, parts: &[&str]) -> PathBuf {
    let mut p = dir.to_path_buf();
    p.extend(parts);
    p
}
