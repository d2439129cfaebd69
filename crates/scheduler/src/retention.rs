//! Retention: what terminal jobs leave behind is deleted once it is old
//! enough.
//!
//! A terminal job (its file in `done/` or `failed/`) is judged by the age of
//! that file (its mtime: the last lease renewal, i.e. when the job ended;
//! an operator's `cancel`, `reject` or `unlock` refreshes it, so a job that
//! waited long before it was ended is kept for the full TTLs).
//! Older than `WORKSPACES_TTL_SEC`: `workspaces/<id>` goes. Older than
//! `ARTIFACTS_TTL_SEC`: `artifacts/<id>` goes. Older than the dedup window
//! (`DEDUP_WINDOW_SEC`) *and* both of those: the queue file goes and its id
//! reservation is released. Jobs in `pending/`, `running/` and
//! `awaiting_approval/` are never looked at, and a job that left its
//! terminal state since it was listed (an operator's `retry`) is skipped.
//!
//! Deletion never follows a symlink (a directory is renamed to a tombstone
//! first, then removed entry by entry without following links), and one
//! sweep deletes at most `MAX_JOBS_PER_SWEEP` jobs' worth, so a large
//! backlog is worked off over several sweeps instead of one long burst of
//! deletions.

use artifacts::ArtifactStore;
use contracts::JobId;
use fsqueue::{Queue, State};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Most jobs touched by one sweep.
pub const MAX_JOBS_PER_SWEEP: usize = 1000;

/// Prefix of a workspace being deleted (skipped by everyone, removed by the
/// next sweep when a crash interrupted it).
const TOMBSTONE_PREFIX: &str = ".orch-deleting-";

#[derive(Debug, Clone)]
pub struct Retention {
    pub queue: Queue,
    pub store: ArtifactStore,
    pub workspaces_root: PathBuf,
    pub artifacts_ttl: Duration,
    pub workspaces_ttl: Duration,
    pub queue_ttl: Duration,
}

/// What one sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub workspaces: usize,
    pub artifacts: usize,
    pub queue_files: usize,
}

impl Retention {
    /// One pass over the terminal jobs, judged at `now`.
    pub fn sweep(&self, now: SystemTime) -> Swept {
        let mut swept = Swept::default();
        self.remove_tombstones();
        let forget_after = self
            .queue_ttl
            .max(self.artifacts_ttl)
            .max(self.workspaces_ttl);
        let mut touched = 0;
        for st in [State::Done, State::Failed] {
            let jobs = match self.queue.list(st) {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!(state = st.dir_name(), error = %e, "retention: cannot list");
                    continue;
                }
            };
            for loc in jobs {
                if touched >= MAX_JOBS_PER_SWEEP {
                    return swept;
                }
                let Some(age) = std::fs::symlink_metadata(&loc.path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                else {
                    continue;
                };
                let Ok(id) = JobId::parse(&loc.entry.job_id) else {
                    continue;
                };
                let mut did = false;
                // Counts a deletion, logs a failure.
                let mut tally = |res: Result<bool, String>, n: &mut usize, what: &str| match res {
                    Ok(true) => {
                        *n += 1;
                        did = true;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(job_id = %id, error = %e, "retention: cannot delete the {what}")
                    }
                };
                // Re-checked before each deletion: a job retried meanwhile
                // is not terminal any more and keeps everything.
                if age > self.workspaces_ttl && loc.path.exists() {
                    let res = remove_tree(&self.workspaces_root, id.as_str());
                    tally(
                        res.map_err(|e| e.to_string()),
                        &mut swept.workspaces,
                        "workspace",
                    );
                }
                if age > self.artifacts_ttl && loc.path.exists() {
                    fsqueue::fault::point("scheduler.retention.removing");
                    let res = self.store.delete_job(&id);
                    tally(
                        res.map_err(|e| e.to_string()),
                        &mut swept.artifacts,
                        "artifacts",
                    );
                }
                if age > forget_after {
                    fsqueue::fault::point("scheduler.retention.forgetting");
                    let res = fsqueue::durable::remove_file(&loc.path).map(|()| {
                        if let Err(e) = self.queue.forget_id(id.as_str()) {
                            tracing::warn!(job_id = %id, error = %e, "retention: cannot release the job id");
                        }
                        true
                    });
                    tally(
                        res.map_err(|e| e.to_string()),
                        &mut swept.queue_files,
                        "queue file",
                    );
                }
                touched += usize::from(did);
            }
        }
        swept
    }

    /// Finishes deletions a crash interrupted.
    fn remove_tombstones(&self) {
        let Ok(rd) = std::fs::read_dir(&self.workspaces_root) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(TOMBSTONE_PREFIX)
            {
                let _ = remove_all(&e.path());
            }
        }
    }
}

/// Removes `root/<name>` without following symlinks: a symlink is unlinked
/// (its target untouched); a directory is renamed to a tombstone (so nobody
/// sees a half-deleted tree under the job's name) and then removed.
fn remove_tree(root: &Path, name: &str) -> io::Result<bool> {
    let path = root.join(name);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
        Ok(m) if !m.is_dir() => std::fs::remove_file(&path).map(|()| true),
        Ok(_) => {
            static CTR: AtomicU64 = AtomicU64::new(0);
            let tomb = root.join(format!(
                "{TOMBSTONE_PREFIX}{name}-{}-{}",
                std::process::id(),
                CTR.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::rename(&path, &tomb)?;
            remove_all(&tomb)?;
            Ok(true)
        }
    }
}

/// `remove_dir_all` (which unlinks symlinks, never their targets), and when
/// a read-only directory stands in the way (tools such as Go's module cache
/// make their trees read-only), once more after making every directory of
/// the tree writable (walked without following symlinks).
fn remove_all(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            use std::os::unix::fs::PermissionsExt;
            for entry in walkdir::WalkDir::new(dir)
                .follow_links(false)
                .into_iter()
                .flatten()
            {
                if entry.file_type().is_dir() {
                    let _ = std::fs::set_permissions(
                        entry.path(),
                        std::fs::Permissions::from_mode(0o700),
                    );
                }
            }
            std::fs::remove_dir_all(dir)
        }
        r => r,
    }
}
