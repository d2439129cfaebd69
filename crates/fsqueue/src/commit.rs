//! Group commit: the "make it durable" half of every write.
//!
//! The durable protocol has two barriers: the data of a temporary file must
//! be on disk before its name is published, and the name must be on disk
//! before success is reported. With one `fsync` per file and per directory,
//! every barrier is a journal commit plus a cache flush of its own, and a
//! busy process spends its time queueing for the disk (a job's artifacts
//! tree is dozens of files; a webhook burst is one file per request).
//!
//! In the default mode (`SyncMode::Filesystem`) a barrier is one
//! `syncfs(2)` of the filesystem, shared by every thread that reached a
//! barrier while the previous `syncfs` was running: a thread that arrives
//! while a sync is in flight waits for the *next* one (which starts after
//! its writes, so covers them), and all threads waiting for that one are
//! released by a single call. Thirty-two concurrent writers pay for two or
//! three flushes instead of sixty-four.
//!
//! `syncfs` flushes everything dirty on the filesystem, including other
//! programs' data: on a filesystem shared with write-heavy work (a build in
//! a workspace) a barrier waits for that too. `SyncMode::File` (environment
//! `FSYNC_MODE=file`) restores one `fsync` per file and per directory for
//! such set-ups; the better fix is to keep `WORKSPACES_ROOT` on another
//! filesystem than the queue and the artifacts.
//!
//! Errors: `syncfs` reports a writeback error once, to whichever call comes
//! first after it, which may be another thread's barrier. So a failure is
//! recorded globally and every barrier whose writes began before the failure
//! was reported fails too (`Mark`): conservative, never a false success.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

/// How barriers reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// One `syncfs` per barrier, shared by every concurrent writer (default).
    Filesystem,
    /// One `fsync` per file and per directory.
    File,
}

static MODE: AtomicU8 = AtomicU8::new(0);

/// Sets the process-wide sync mode (done once at start-up from
/// `FSYNC_MODE`).
pub fn set_sync_mode(mode: SyncMode) {
    MODE.store(
        match mode {
            SyncMode::Filesystem => 0,
            SyncMode::File => 1,
        },
        Ordering::Relaxed,
    );
}

/// `set_sync_mode` from a per-file flag (`FSYNC_MODE=file`).
pub fn set_per_file(per_file: bool) {
    set_sync_mode(if per_file {
        SyncMode::File
    } else {
        SyncMode::Filesystem
    });
}

/// The process-wide sync mode.
pub fn sync_mode() -> SyncMode {
    match MODE.load(Ordering::Relaxed) {
        0 => SyncMode::Filesystem,
        _ => SyncMode::File,
    }
}

/// Writeback failures reported by `syncfs` so far, and the last errno.
static FAILURES: AtomicU64 = AtomicU64::new(0);
static LAST_ERRNO: AtomicI32 = AtomicI32::new(0);

/// Taken before a write starts; a barrier after the write fails if any
/// writeback failure was reported since.
#[derive(Debug, Clone, Copy)]
pub struct Mark(u64);

impl Mark {
    pub fn now() -> Self {
        Mark(FAILURES.load(Ordering::Acquire))
    }

    fn check(self) -> io::Result<()> {
        if FAILURES.load(Ordering::Acquire) > self.0 {
            let errno = LAST_ERRNO.load(Ordering::Relaxed);
            let e = if errno != 0 {
                io::Error::from_raw_os_error(errno)
            } else {
                io::Error::other("writeback error")
            };
            return Err(io::Error::new(
                e.kind(),
                format!("syncfs reported a writeback error: {e}"),
            ));
        }
        Ok(())
    }
}

/// One filesystem's barrier: a handle on its mount root and the group state.
struct Group {
    anchor: File,
    state: Mutex<GroupState>,
    cv: Condvar,
}

#[derive(Default)]
struct GroupState {
    /// Generation of the latest sync started / finished.
    started: u64,
    finished: u64,
    running: bool,
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once a `syncfs` that started after this call has finished.
    fn barrier(&self) {
        let mut st = self.lock();
        // A sync in flight may have started before our writes: we need the
        // next generation.
        let need = st.started + 1;
        loop {
            if st.finished >= need {
                return;
            }
            if !st.running && st.started < need {
                st.running = true;
                st.started = need;
                drop(st);
                if let Err(e) = nix::unistd::syncfs(&self.anchor) {
                    LAST_ERRNO.store(e as i32, Ordering::Relaxed);
                    FAILURES.fetch_add(1, Ordering::AcqRel);
                }
                let mut st = self.lock();
                st.running = false;
                st.finished = need;
                self.cv.notify_all();
                return;
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Groups by device number. A handful of entries per process (queue,
/// artifacts and workspaces roots), never removed.
fn group_for(dev: u64, near: &Path) -> io::Result<Arc<Group>> {
    static GROUPS: OnceLock<Mutex<HashMap<u64, Arc<Group>>>> = OnceLock::new();
    let groups = GROUPS.get_or_init(Default::default);
    if let Some(g) = groups.lock().unwrap_or_else(|p| p.into_inner()).get(&dev) {
        return Ok(g.clone());
    }
    // Opened outside the lock: the mount root of `near` (or the highest
    // directory on the way there that this user may open), so the handle
    // never pins a directory that retention may delete later.
    let anchor = open_anchor(near, dev)?;
    let mut map = groups.lock().unwrap_or_else(|p| p.into_inner());
    Ok(map
        .entry(dev)
        .or_insert_with(|| {
            Arc::new(Group {
                anchor,
                state: Mutex::new(GroupState::default()),
                cv: Condvar::new(),
            })
        })
        .clone())
}

/// `path` and its ancestors on device `dev`, highest first.
fn same_device_ancestors(path: &Path, dev: u64) -> io::Result<Vec<PathBuf>> {
    let path = std::fs::canonicalize(path)?;
    let mut chain: Vec<PathBuf> = Vec::new();
    for anc in path.ancestors() {
        match std::fs::metadata(anc) {
            Ok(m) if m.dev() == dev => chain.push(anc.to_path_buf()),
            _ => break,
        }
    }
    chain.reverse();
    Ok(chain)
}

/// A handle on the highest directory of `near`'s filesystem that can be
/// opened (a mount root that is not readable by the service user is
/// skipped; `near` itself is the last resort).
fn open_anchor(near: &Path, dev: u64) -> io::Result<File> {
    let mut last_err = None;
    for dir in same_device_ancestors(near, dev)? {
        match File::open(&dir) {
            Ok(f) => return Ok(f),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotFound)))
}

/// Barrier for data written to `files` (each with its directory) since
/// `mark`.
pub(crate) fn sync_files(files: &[(&Path, &File)], mark: Mark) -> io::Result<()> {
    sync_files_and_dirs(files, &[], mark)
}

/// One barrier covering both the data of `files` and the names in `dirs`
/// (with per-file fsync: each file, then each directory).
pub(crate) fn sync_files_and_dirs(
    files: &[(&Path, &File)],
    dirs: &[&Path],
    mark: Mark,
) -> io::Result<()> {
    crate::fault::barrier()?;
    match sync_mode() {
        SyncMode::File => {
            files.iter().try_for_each(|(_, f)| {
                f.sync_all()?;
                crate::fault::record_fsync(f);
                Ok::<_, io::Error>(())
            })?;
            dirs.iter().try_for_each(|d| {
                File::open(d)?.sync_all()?;
                crate::fault::record(crate::fault::Op::FsyncDir(d));
                Ok(())
            })
        }
        SyncMode::Filesystem => {
            // One barrier per distinct filesystem (usually one).
            let mut seen: Vec<u64> = Vec::with_capacity(1);
            let mut groups = Vec::with_capacity(1);
            for (dir, f) in files {
                let dev = f.metadata()?.dev();
                if !seen.contains(&dev) {
                    seen.push(dev);
                    groups.push(group_for(dev, dir)?);
                }
            }
            for d in dirs {
                let dev = std::fs::metadata(d)?.dev();
                if !seen.contains(&dev) {
                    seen.push(dev);
                    groups.push(group_for(dev, d)?);
                }
            }
            groups.iter().for_each(|g| g.barrier());
            mark.check()?;
            crate::fault::record(crate::fault::Op::Syncfs);
            Ok(())
        }
    }
}

/// Barrier for names created, renamed or removed in `dirs` since `mark`.
pub(crate) fn sync_dirs(dirs: &[&Path], mark: Mark) -> io::Result<()> {
    sync_files_and_dirs(&[], dirs, mark)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_barriers_share_syncs_and_all_return() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let dev = std::fs::metadata(&dir).unwrap().dev();
        let g = group_for(dev, &dir).unwrap();
        let before = g.lock().finished;
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    for k in 0..20 {
                        let m = Mark::now();
                        std::fs::write(dir.join(format!("{i}-{k}")), b"x").unwrap();
                        sync_dirs(&[&dir], m).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = g.lock();
        // 320 barriers from 16 threads: sharing makes far fewer syncs
        // (other tests of this process may add a few of their own).
        let syncs = st.finished - before;
        assert!((1..320).contains(&syncs), "{syncs} syncs for 320 barriers");
    }

    #[test]
    fn anchor_candidates_stay_on_device_highest_first() {
        let d = tempfile::tempdir().unwrap();
        let dev = std::fs::metadata(d.path()).unwrap().dev();
        let chain = same_device_ancestors(d.path(), dev).unwrap();
        let root = &chain[0];
        assert_eq!(chain.last().unwrap(), &d.path().canonicalize().unwrap());
        assert!(
            chain
                .iter()
                .all(|p| std::fs::metadata(p).unwrap().dev() == dev)
        );
        if let Some(parent) = root.parent() {
            assert_ne!(std::fs::metadata(parent).unwrap().dev(), dev);
        }
        assert!(open_anchor(d.path(), dev).is_ok());
    }
}
