//! The one durable-write primitive of orch. Every queue file and every
//! artifact is published through `write_file` (or moved with
//! `move_noreplace`/`move_replace`), so a crash at any instant leaves
//! either the old complete file or the new complete file, never a torn one.
//!
//! The protocol, in order:
//! 1. write the bytes to a temporary file in the *same directory* (same
//!    filesystem, so the rename is atomic), created `O_EXCL` with the final
//!    mode;
//! 2. a data barrier: the temporary file's data is on disk before its name;
//! 3. `rename` it over the destination;
//! 4. a name barrier: the destination directory's new entry is on disk.
//!
//! Only after step 4 succeeds do we report success. A failed barrier is
//! returned as an error and the temporary file is removed: after a failed
//! sync the page cache state is unknown, so publishing would be a lie.
//!
//! Barriers are group-committed (see `commit`): by default one `syncfs`
//! serves every thread of the process that reached a barrier meanwhile;
//! `FSYNC_MODE=file` makes them one `fsync` per file and directory.

use crate::commit::{self, Mark};
use crate::fault::{self, Op, point};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

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

/// Ownership check of a directory tree: every rename (or unlink) of a
/// durable write whose destination lies below a registered prefix asks the
/// fence immediately before it, and is refused when the fence says the
/// writer no longer owns the tree. The runner registers one per job attempt
/// (its artifacts and workspace), so a stale attempt cannot replace files
/// written by a newer one.
pub trait Fence: Send + Sync {
    /// Checks ownership and returns a hold that is kept while the one
    /// rename runs (for example a shared lock that a newer attempt must
    /// take exclusively before it starts). `Err` refuses the rename.
    fn hold(&self) -> io::Result<Box<dyn std::any::Any>>;
}

/// The error a fence returns to refuse a publish.
#[derive(Debug, thiserror::Error)]
#[error("publish refused: {0}")]
pub struct Refused(pub String);

impl Refused {
    pub fn io(why: impl Into<String>) -> io::Error {
        io::Error::other(Refused(why.into()))
    }
}

/// True when `e` is a fence's refusal (the writer lost ownership).
pub fn is_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<Refused>() {
            return true;
        }
        if let Some(ioe) = err.downcast_ref::<io::Error>()
            && ioe.get_ref().is_some_and(|inner| inner.is::<Refused>())
        {
            return true;
        }
        cur = err.source();
    }
    false
}

type FenceList = Vec<(PathBuf, Arc<dyn Fence>)>;

fn fences() -> &'static RwLock<FenceList> {
    static F: std::sync::OnceLock<RwLock<FenceList>> = std::sync::OnceLock::new();
    F.get_or_init(Default::default)
}

/// Keeps a fence registered; dropping it unregisters the fence.
pub struct FenceRegistration {
    fence: Arc<dyn Fence>,
}

impl Drop for FenceRegistration {
    fn drop(&mut self) {
        let mut list = fences().write().unwrap_or_else(|p| p.into_inner());
        list.retain(|(_, f)| !Arc::ptr_eq(f, &self.fence));
    }
}

/// Registers `fence` for every durable write below `prefix` (compared by
/// path components, in the form the writers use: register the same
/// relative or absolute spelling they join their paths from).
pub fn register_fence(prefixes: &[&Path], fence: Arc<dyn Fence>) -> FenceRegistration {
    let mut list = fences().write().unwrap_or_else(|p| p.into_inner());
    for p in prefixes {
        list.push((p.to_path_buf(), fence.clone()));
    }
    FenceRegistration { fence }
}

/// The fences guarding `paths` (usually none or one).
fn fences_for<'p>(paths: impl IntoIterator<Item = &'p Path>) -> Vec<Arc<dyn Fence>> {
    let list = fences().read().unwrap_or_else(|p| p.into_inner());
    if list.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<Arc<dyn Fence>> = Vec::new();
    for path in paths {
        for (prefix, f) in list.iter() {
            if path.starts_with(prefix) && !out.iter().any(|o| Arc::ptr_eq(o, f)) {
                out.push(f.clone());
            }
        }
    }
    out
}

/// The fences guarding a publish, found once per publish.
struct Holds {
    fences: Vec<Arc<dyn Fence>>,
}

impl Holds {
    fn take<'p>(paths: impl IntoIterator<Item = &'p Path>) -> Self {
        Self {
            fences: fences_for(paths),
        }
    }

    /// Runs one rename (`op`) while every fence is held, after the fault
    /// seam: check and rename are as close together as they can be.
    fn rename<T>(&self, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let mut holds = Vec::with_capacity(self.fences.len());
        for f in &self.fences {
            holds.push(f.hold()?);
        }
        crate::fault::rename()?;
        let r = op();
        drop(holds);
        r
    }
}

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
    let mark = Mark::now();
    let tmp = write_synced_temp(path, data, mode, mark)?;
    let renamed = Holds::take([path]).rename(|| std::fs::rename(&tmp, path));
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&tmp);
        return Err(DurableError::new("rename", path, e));
    }
    fault::record(Op::Rename(&tmp, path));
    point("durable.write.renamed");
    sync_names(&[parent_of(path)], mark)?;
    point("durable.write.names_synced");
    Ok(())
}

/// Publishes `data` at `path` atomically (temp file + rename) but without
/// barriers: for advisory files (heartbeats, metrics) that must never wait
/// for the disk. After a crash the file may hold an older version, or be
/// empty; never a mix.
pub fn write_file_advisory(path: &Path, data: &[u8]) -> Result<()> {
    let (tmp, f) = write_temp(path, data, FILE_MODE)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DurableError::new("rename", path, e)
    })?;
    fault::record(Op::Rename(&tmp, path));
    Ok(())
}

/// Durably publishes `data` at `path` only if nothing exists there yet.
/// Returns `Ok(false)` (and writes nothing) when `path` already exists.
pub fn write_file_new(path: &Path, data: &[u8]) -> Result<bool> {
    if data.is_empty() {
        // Nothing to tear: an O_EXCL create is atomic by itself.
        let mark = Mark::now();
        let placed = create_empty_unsynced(path)?;
        if placed {
            sync_names(&[parent_of(path)], mark)?;
        }
        return Ok(placed);
    }
    write_file_new_after(path, data, &[])
}

/// `write_file_new` for a file that must not reach the disk before names
/// created earlier in `earlier` (an id reservation before its job): the
/// file's data barrier covers them too.
pub fn write_file_new_after(path: &Path, data: &[u8], earlier: &[&Path]) -> Result<bool> {
    write_files_new_after(&[(path, data)], earlier)?
        .pop()
        .unwrap_or(Ok(false))
}

/// Several `write_file_new_after` at the cost of one data barrier and one
/// name barrier. The outer error is a failed barrier (nothing may be
/// trusted as durable); the inner results are per file (`Ok(false)`: the
/// name existed, nothing written).
pub fn write_files_new_after(
    files: &[(&Path, &[u8])],
    earlier: &[&Path],
) -> Result<Vec<Result<bool>>> {
    let mark = Mark::now();
    let mut temps: Vec<Result<(PathBuf, File)>> = files
        .iter()
        .map(|(path, data)| write_temp(path, data, FILE_MODE))
        .collect();
    let remove_temps = |temps: &[Result<(PathBuf, File)>]| {
        for (tmp, _) in temps.iter().flatten() {
            let _ = std::fs::remove_file(tmp);
        }
    };
    let handles: Vec<(&Path, &File)> = temps
        .iter()
        .zip(files)
        .filter_map(|(t, (path, _))| t.as_ref().ok().map(|(_, f)| (parent_of(path), f)))
        .collect();
    if let Err(e) = commit::sync_files_and_dirs(&handles, earlier, mark) {
        remove_temps(&temps);
        let at = files.first().map_or(Path::new("."), |(p, _)| parent_of(p));
        return Err(DurableError::new("fsync", at, e));
    }
    point("durable.new.data_synced");
    let mut results = Vec::with_capacity(files.len());
    let mut dirs: Vec<&Path> = Vec::new();
    for (t, (path, _)) in temps.drain(..).zip(files) {
        let res = t.and_then(|(tmp, _)| match rename_noreplace_raw(&tmp, path) {
            Ok(()) => {
                fault::record(Op::Rename(&tmp, path));
                point("durable.new.renamed_one");
                let dir = parent_of(path);
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
                Ok(true)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Ok(false)
                } else {
                    Err(DurableError::new("rename", *path, e))
                }
            }
        });
        results.push(res);
    }
    if !dirs.is_empty() {
        sync_names(&dirs, mark)?;
        point("durable.new.names_synced");
    }
    Ok(results)
}

/// Creates an empty file at `path` with `O_EXCL` (`Ok(false)` when the
/// name exists), without a barrier: the caller makes the name durable
/// later (see `write_file_new_after`).
pub fn create_empty_unsynced(path: &Path) -> Result<bool> {
    place_empty_new(path, None).map_err(|e| DurableError::new("create", path, e))
}

/// How `write_batch` places one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Replace whatever is there.
    Replace,
    /// Only if nothing exists at the name yet (placeholders).
    IfAbsent,
}

/// Durably publishes several files into one directory with one data
/// barrier and one name barrier: every temp file is written, the data
/// barrier makes them durable, all are renamed into place in order, then
/// the name barrier. Same guarantee per file as `write_file`; a crash may
/// leave any prefix of the batch published, so callers that need "A implies
/// B" publish B in a later batch (or call).
pub fn write_batch(dir: &Path, files: &[(&str, &[u8], Place)]) -> Result<()> {
    write_batch_linked(dir, files, None)
}

/// `write_batch` where empty files are hard links to `empty_src` (an empty
/// regular file) instead of new files.
///
/// Placeholders are most of the files of an artifacts tree, and every new
/// file is an inode allocated and, when it is replaced, freed again: on
/// ext4 without a journal the inode allocator then scans past every
/// recently freed inode, which made inode churn the largest cost of a job.
/// A link allocates nothing, and replacing it later only drops a link.
/// An empty `Replace` over a file that is already empty is skipped (the
/// content is the same). Whenever linking is impossible (`empty_src`
/// missing, not empty any more, too many links, another filesystem) the
/// empty file is created on its own; empty files need no data barrier and
/// are created in place with `O_EXCL` (there is no content to tear).
pub fn write_batch_linked(
    dir: &Path,
    files: &[(&str, &[u8], Place)],
    empty_src: Option<&Path>,
) -> Result<()> {
    let mut txn = Txn::new(empty_src);
    for (name, data, place) in files {
        txn.file(&dir.join(name), data, *place)?;
    }
    txn.commit()
}

/// A publish of files in one or several directories, in phases: the data
/// of every file is made durable by one barrier, then each phase's names
/// are published (renamed into place, in the order given) and made durable
/// by one name barrier before the next phase starts. So a file of a later
/// phase on disk implies every file of the earlier phases on disk (a step's
/// `result.json` after its report), at the cost of one barrier per phase
/// rather than two per file. Empty files are handled as in
/// `write_batch_linked`. Dropping an uncommitted `Txn` removes its
/// temporary files.
pub struct Txn<'a> {
    mark: Mark,
    empty_src: Option<&'a Path>,
    staged: Vec<Staged>,
    phase: usize,
}

/// (phase, final path, place, temp path and handle for files with data)
type Staged = (usize, PathBuf, Place, Option<(PathBuf, File)>);

impl<'a> Txn<'a> {
    pub fn new(empty_src: Option<&'a Path>) -> Self {
        Txn {
            mark: Mark::now(),
            empty_src,
            staged: Vec::new(),
            phase: 0,
        }
    }

    /// Stages `data` for `path` (its temp file is written now).
    pub fn file(&mut self, path: &Path, data: &[u8], place: Place) -> Result<()> {
        let temp = if data.is_empty() {
            None
        } else {
            Some(write_temp(path, data, FILE_MODE)?)
        };
        self.staged
            .push((self.phase, path.to_path_buf(), place, temp));
        Ok(())
    }

    /// Files staged from now on are published after the earlier ones are
    /// durable.
    pub fn then(&mut self) {
        if self.staged.last().is_some_and(|s| s.0 == self.phase) {
            self.phase += 1;
        }
    }

    /// Publishes everything staged; see the type's documentation.
    pub fn commit(mut self) -> Result<()> {
        let with_data: Vec<(&Path, &File)> = self
            .staged
            .iter()
            .filter_map(|(_, path, _, t)| t.as_ref().map(|(_, f)| (parent_of(path), f)))
            .collect();
        commit::sync_files(&with_data, self.mark)
            .map_err(|e| DurableError::new("fsync", parent_of(&self.staged[0].1), e))?;
        point("durable.txn.data_synced");
        let holds = Holds::take(self.staged.iter().map(|s| s.1.as_path()));
        let mut dirs: Vec<PathBuf> = Vec::new();
        for i in 0..self.staged.len() {
            let temp = self.staged[i].3.take().map(|(tmp, _)| tmp);
            let (phase, ref path, place, _) = self.staged[i];
            let res = holds.rename(|| match (&temp, place) {
                (Some(tmp), Place::Replace) => {
                    std::fs::rename(tmp, path).inspect(|()| fault::record(Op::Rename(tmp, path)))
                }
                (Some(tmp), Place::IfAbsent) => match rename_noreplace_raw(tmp, path) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let _ = std::fs::remove_file(tmp);
                        Ok(())
                    }
                    r => r.inspect(|()| fault::record(Op::Rename(tmp, path))),
                },
                (None, Place::IfAbsent) => place_empty_new(path, self.empty_src).map(drop),
                (None, Place::Replace) => replace_with_empty(path, self.empty_src),
            });
            if let Err(e) = res {
                if let Some(tmp) = temp {
                    let _ = std::fs::remove_file(tmp);
                }
                return Err(DurableError::new("rename", path, e));
            }
            point("durable.txn.renamed_one");
            let dir = parent_of(path);
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_path_buf());
            }
            let last_of_phase = self.staged.get(i + 1).is_none_or(|next| next.0 != phase);
            if last_of_phase {
                let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
                sync_names(&refs, self.mark)?;
                point("durable.txn.phase_synced");
                dirs.clear();
            }
        }
        Ok(())
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        for (.., temp) in &self.staged {
            if let Some((tmp, _)) = temp {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

/// Creates an empty file at `path` unless something exists there (Ok(false)).
fn place_empty_new(path: &Path, empty_src: Option<&Path>) -> io::Result<bool> {
    if let Some(src) = empty_src {
        match std::fs::hard_link(src, path) {
            Ok(()) => {
                if is_empty_file(path) {
                    fault::record(Op::Create(path));
                    return Ok(true);
                }
                // The source gained content since it was chosen: undo.
                std::fs::remove_file(path)?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(_) => {}
        }
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => {
            fault::record(Op::Create(path));
            f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Atomically replaces whatever is at `path` with an empty file (a no-op
/// when it already is one).
fn replace_with_empty(path: &Path, empty_src: Option<&Path>) -> io::Result<()> {
    if is_empty_file(path) {
        return Ok(());
    }
    let name = path.file_name().unwrap_or_default();
    let tmp = parent_of(path).join(tmp_name(name));
    place_empty_new(&tmp, empty_src)?;
    std::fs::rename(&tmp, path)
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .inspect(|()| fault::record(Op::Rename(&tmp, path)))
}

/// A regular file (not a symlink) of length zero.
fn is_empty_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0)
}

/// Writes a temporary sibling of `path` (not yet synced), returning its
/// path and open handle.
fn write_temp(path: &Path, data: &[u8], mode: u32) -> Result<(PathBuf, File)> {
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
        });
    if let Err(e) = res {
        drop(f);
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    fault::record(Op::Write(&tmp, data));
    Ok((tmp, f))
}

/// `write_temp` followed by its data barrier (skipped for empty files).
fn write_synced_temp(path: &Path, data: &[u8], mode: u32, mark: Mark) -> Result<PathBuf> {
    let (tmp, f) = write_temp(path, data, mode)?;
    point("durable.write.temp_written");
    if !data.is_empty()
        && let Err(e) = commit::sync_files(&[(parent_of(path), &f)], mark)
    {
        drop(f);
        let _ = std::fs::remove_file(&tmp);
        return Err(DurableError::new("fsync", &tmp, e));
    }
    point("durable.write.data_synced");
    Ok(tmp)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the names in `dir` (creations, renames, unlinks made so far)
/// durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    sync_names(&[dir], Mark::now())
}

/// Makes the names in every one of `dirs` durable with one barrier.
pub fn sync_dirs(dirs: &[&Path]) -> Result<()> {
    sync_names(dirs, Mark::now())
}

/// Name barrier for `dirs`, mapped to the first directory on error.
fn sync_names(dirs: &[&Path], mark: Mark) -> Result<()> {
    commit::sync_dirs(dirs, mark).map_err(|e| {
        DurableError::new(
            "fsync dir",
            dirs.first().copied().unwrap_or(Path::new(".")),
            e,
        )
    })
}

fn sync_parent(path: &Path, mark: Mark) -> Result<()> {
    sync_names(&[parent_of(path)], mark)
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
    let mark = Mark::now();
    crate::fault::rename()
        .and_then(|()| rename_noreplace_raw(from, to))
        .map_err(|e| DurableError::new("rename", from, e))?;
    fault::record(Op::Rename(from, to));
    point("durable.move.renamed");
    sync_move_dirs(from, to, mark)?;
    point("durable.move.synced");
    Ok(())
}

/// Durably moves `from` to `to`, replacing `to` if present.
pub fn move_replace(from: &Path, to: &Path) -> Result<()> {
    let mark = Mark::now();
    crate::fault::rename()
        .and_then(|()| std::fs::rename(from, to))
        .map_err(|e| DurableError::new("rename", from, e))?;
    fault::record(Op::Rename(from, to));
    point("durable.move.renamed");
    sync_move_dirs(from, to, mark)?;
    point("durable.move.synced");
    Ok(())
}

fn sync_move_dirs(from: &Path, to: &Path, mark: Mark) -> Result<()> {
    let (src, dst) = (parent_of(from), parent_of(to));
    if src == dst {
        sync_names(&[dst], mark)
    } else {
        sync_names(&[dst, src], mark)
    }
}

/// Durably removes a file (unlink + fsync of its directory). A missing file
/// is not an error.
pub fn remove_file(path: &Path) -> Result<()> {
    let mark = Mark::now();
    let removed = Holds::take([path]).rename(|| std::fs::remove_file(path));
    match removed {
        Ok(()) => {
            fault::record(Op::Unlink(path));
            point("durable.remove.unlinked");
            sync_parent(path, mark)
        }
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
    let mark = Mark::now();
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt;
            fault::record(Op::Mkdir(dir));
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
                .map_err(|e| DurableError::new("chmod", dir, e))?;
            sync_parent(dir, mark)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(DurableError::new("mkdir", dir, e)),
    }
}

/// Creates several subdirectories of an existing `parent` (those missing)
/// with one fsync of `parent`.
pub fn create_subdirs(parent: &Path, names: &[&str]) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mark = Mark::now();
    let mut created = false;
    for name in names {
        let dir = parent.join(name);
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(&dir) {
            Ok(()) => {
                fault::record(Op::Mkdir(&dir));
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(DIR_MODE))
                    .map_err(|e| DurableError::new("chmod", &dir, e))?;
                created = true;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(DurableError::new("mkdir", &dir, e)),
        }
    }
    if created {
        sync_names(&[parent], mark)?;
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

    #[test]
    fn txn_publishes_across_dirs_in_phases() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        create_dir_all(&a).unwrap();
        create_dir_all(&b).unwrap();
        write_file(&a.join("old"), b"before").unwrap();
        let mut txn = Txn::new(None);
        txn.file(&a.join("old"), b"after", Place::Replace).unwrap();
        txn.file(&b.join("x"), b"1", Place::IfAbsent).unwrap();
        txn.then();
        txn.file(&b.join("result"), b"done", Place::Replace)
            .unwrap();
        // Nothing is visible before the commit.
        assert_eq!(std::fs::read(a.join("old")).unwrap(), b"before");
        assert!(!b.join("result").exists());
        txn.commit().unwrap();
        assert_eq!(std::fs::read(a.join("old")).unwrap(), b"after");
        assert_eq!(std::fs::read(b.join("x")).unwrap(), b"1");
        assert_eq!(std::fs::read(b.join("result")).unwrap(), b"done");
        for dir in [&a, &b] {
            let names: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert!(names.iter().all(|n| !is_temp_name(n)), "{names:?}");
        }
        // A dropped, uncommitted txn leaves no temp files and changes nothing.
        let mut txn = Txn::new(None);
        txn.file(&a.join("old"), b"never", Place::Replace).unwrap();
        drop(txn);
        assert_eq!(std::fs::read(a.join("old")).unwrap(), b"after");
        assert_eq!(std::fs::read_dir(&a).unwrap().count(), 1);
    }

    #[test]
    fn empty_files_are_links_to_an_empty_source_and_never_copy_content() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        write_batch(d.path(), &[("src", b"", Place::IfAbsent)]).unwrap();
        write_batch_linked(
            d.path(),
            &[("p1", b"", Place::IfAbsent), ("p2", b"", Place::Replace)],
            Some(&src),
        )
        .unwrap();
        let ino = std::fs::metadata(&src).unwrap().ino();
        for p in ["p1", "p2"] {
            let m = std::fs::metadata(d.path().join(p)).unwrap();
            assert_eq!((m.ino(), m.len()), (ino, 0), "{p} shares the empty inode");
        }
        // Content replaces a link without touching the shared inode.
        write_batch_linked(d.path(), &[("p1", b"data", Place::Replace)], Some(&src)).unwrap();
        assert_eq!(std::fs::read(d.path().join("p1")).unwrap(), b"data");
        assert_eq!(std::fs::metadata(&src).unwrap().len(), 0);
        // Emptying a file with content works; an empty one is left alone.
        write_batch_linked(d.path(), &[("p1", b"", Place::Replace)], Some(&src)).unwrap();
        assert_eq!(std::fs::metadata(d.path().join("p1")).unwrap().len(), 0);
        // A source that is not empty (or missing) is never linked: the
        // placeholder is a fresh empty file.
        write_file(&src, b"secret").unwrap();
        write_batch_linked(d.path(), &[("p3", b"", Place::IfAbsent)], Some(&src)).unwrap();
        let m = std::fs::metadata(d.path().join("p3")).unwrap();
        assert_eq!(m.len(), 0);
        assert_ne!(m.ino(), std::fs::metadata(&src).unwrap().ino());
        write_batch_linked(
            d.path(),
            &[("p4", b"", Place::IfAbsent)],
            Some(&d.path().join("missing")),
        )
        .unwrap();
        assert_eq!(std::fs::metadata(d.path().join("p4")).unwrap().len(), 0);
        // An existing placeholder is kept by IfAbsent.
        write_file(&d.path().join("p5"), b"kept").unwrap();
        write_batch_linked(d.path(), &[("p5", b"", Place::IfAbsent)], Some(&src)).unwrap();
        assert_eq!(std::fs::read(d.path().join("p5")).unwrap(), b"kept");
        // A symlink source is not followed.
        let link = d.path().join("link");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        write_batch_linked(d.path(), &[("p6", b"", Place::IfAbsent)], Some(&link)).unwrap();
        let m = std::fs::symlink_metadata(d.path().join("p6")).unwrap();
        assert!(m.is_file() && m.len() == 0);
    }
}
