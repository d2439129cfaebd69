//! Claiming jobs from `pending/`.
//!
//! A claim is one plain `rename`, `pending/<name>` → `running/<name'>` where
//! `name'` carries the runner id and the incremented attempt. Rename is
//! atomic, so of any number of racing claimers (threads, processes, hosts
//! sharing the directory) exactly one succeeds; the others get `ENOENT` and
//! move on to the next name. The destination is unique to the claim, so no
//! "no-replace" semantics are needed (on NFS `renameat2(RENAME_NOREPLACE)`
//! is unsupported, and its link + unlink emulation would let two claimers
//! with different destination names both succeed).
//!
//! To avoid listing `pending/` on every claim, each claimer keeps an ordered
//! in-memory index of pending names. inotify keeps it current (a new job
//! wakes an idle runner within milliseconds and an idle runner costs no CPU);
//! a periodic full rescan is the source of truth, because inotify can
//! overflow and says nothing about renames made on other hosts.

use crate::durable::{self, DurableError};
use crate::name::Entry;
use crate::queue::{Located, Queue, QueueError, Result, State, read_names};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::collections::BTreeSet;
use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// How often the index is rebuilt from a directory listing even without
/// notifications.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Inner {
    names: BTreeSet<String>,
    last_scan: Option<Instant>,
    /// Set when notifications may have been lost (overflow, no watch).
    dirty: bool,
}

struct Index {
    inner: Mutex<Inner>,
    notify: Notify,
}

impl Index {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every mutation is a single insert/remove/replace, so a panic while
        // holding the lock cannot leave the set half-updated: ignore poison.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The ordered index of `pending/` plus the claim operation.
pub struct Claimer {
    queue: Queue,
    runner_id: String,
    index: Arc<Index>,
    watching: bool,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Claimer {
    fn drop(&mut self) {
        if let Some(h) = self.watcher.take() {
            h.abort();
        }
    }
}

/// A job this runner now owns.
#[derive(Debug, Clone)]
pub struct Claim {
    pub loc: Located,
    pub doc: Vec<u8>,
    pub claimed_at: SystemTime,
    /// When the claim's lease was last known good: just before the touch
    /// that started it (see `lease::owner_deadline`).
    pub renewed_at: crate::lease::Stamp,
}

impl Claimer {
    /// Creates a claimer for `runner_id` and starts watching `pending/`.
    /// Must be called inside a tokio runtime.
    pub fn new(queue: Queue, runner_id: &str) -> Result<Self> {
        let index = Arc::new(Index {
            inner: Mutex::new(Inner {
                dirty: true,
                ..Inner::default()
            }),
            notify: Notify::new(),
        });
        let mut c = Self {
            queue,
            runner_id: runner_id.to_owned(),
            index,
            watching: false,
            watcher: None,
        };
        match spawn_watch(&c.queue, Arc::downgrade(&c.index)) {
            Ok(h) => {
                c.watcher = Some(h);
                c.watching = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable; falling back to periodic rescans")
            }
        }
        c.rescan()?;
        Ok(c)
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    pub fn runner_id(&self) -> &str {
        &self.runner_id
    }

    /// Rebuilds the index from a listing of `pending/`.
    pub fn rescan(&self) -> Result<()> {
        let names: BTreeSet<String> = read_names(&self.queue.dir(State::Pending))?
            .into_iter()
            .filter(|n| n.ends_with(".json"))
            .collect();
        let mut inner = self.index.lock();
        inner.names = names;
        inner.last_scan = Some(Instant::now());
        inner.dirty = false;
        Ok(())
    }

    fn rescan_if_due(&self) -> Result<()> {
        let due = {
            let inner = self.index.lock();
            inner.dirty
                || inner
                    .last_scan
                    .is_none_or(|t| t.elapsed() >= RESCAN_INTERVAL)
        };
        if due { self.rescan() } else { Ok(()) }
    }

    /// Number of names currently in the index (what this claimer believes
    /// is pending).
    pub fn indexed(&self) -> usize {
        self.index.lock().names.len()
    }

    /// Claims the first pending job, or returns `None` when there is none.
    /// Files whose names do not parse are quarantined to `corrupt/`.
    pub fn try_claim(&self) -> Result<Option<Claim>> {
        self.rescan_if_due()?;
        loop {
            let Some(name) = self.index.lock().names.pop_first() else {
                return Ok(None);
            };
            let from = self.queue.dir(State::Pending).join(&name);
            let Some(entry) = Entry::parse(&name) else {
                if from.exists() {
                    let _ = self
                        .queue
                        .quarantine(&from, "file name is not a queue entry");
                }
                continue;
            };
            let claimed = entry.claimed_by(&self.runner_id);
            let to = self.queue.dir(State::Running).join(claimed.file_name());
            // Refresh the mtime *before* the rename: the lease is judged by
            // the running file's mtime, and rename keeps mtime. Without this
            // a job that waited in pending/ longer than the lease would look
            // expired the instant it was claimed (the MVP's double-run bug).
            let renewed_at = crate::lease::Stamp::now();
            match touch(&from) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(DurableError::new("touch", &from, e).into()),
            }
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                // Someone else claimed it (or an operator moved it).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(DurableError::new("claim", &from, e).into()),
            }
            durable::sync_dirs(&[
                &self.queue.dir(State::Running),
                &self.queue.dir(State::Pending),
            ])?;
            let loc = Located {
                state: State::Running,
                entry: claimed,
                path: to,
            };
            let doc = match self.queue.read(&loc) {
                Ok(d) => d,
                Err(QueueError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            return Ok(Some(Claim {
                loc,
                doc,
                claimed_at: SystemTime::now(),
                renewed_at,
            }));
        }
    }

    /// Waits until `pending/` may have changed: a notification, or the
    /// rescan interval (shorter when notifications are unavailable).
    pub async fn wait(&self) {
        let timeout = if self.watching {
            RESCAN_INTERVAL
        } else {
            Duration::from_millis(500)
        };
        let _ = tokio::time::timeout(timeout, self.index.notify.notified()).await;
    }

    /// Claims the next job, waiting for one as long as needed.
    pub async fn claim(&self) -> Result<Claim> {
        loop {
            if let Some(c) = self.try_claim()? {
                return Ok(c);
            }
            self.wait().await;
        }
    }
}

/// Sets a file's mtime to now.
pub fn touch(path: &std::path::Path) -> io::Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_NOW,
        &TimeSpec::UTIME_NOW,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

fn spawn_watch(queue: &Queue, index: Weak<Index>) -> io::Result<tokio::task::JoinHandle<()>> {
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    ino.add_watch(
        &queue.dir(State::Pending),
        AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF,
    )?;
    // `AsyncFd::new` is deprecated because a bare `AsRawFd` does not prove
    // ownership of the descriptor; `InotifyFd` owns it (the `Inotify` holds
    // an `OwnedFd` that lives exactly as long as the registration).
    #[allow(deprecated)]
    let fd = AsyncFd::new(InotifyFd(ino))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            let events = match fd.get_ref().0.read_events() {
                Ok(ev) => ev,
                Err(nix::errno::Errno::EAGAIN) => {
                    guard.clear_ready();
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "inotify read failed; relying on rescans");
                    if let Some(ix) = index.upgrade() {
                        ix.lock().dirty = true;
                    }
                    return;
                }
            };
            let Some(ix) = index.upgrade() else { return };
            let mut added = false;
            {
                let mut inner = ix.lock();
                for ev in events {
                    if ev.mask.intersects(
                        AddWatchFlags::IN_Q_OVERFLOW
                            | AddWatchFlags::IN_DELETE_SELF
                            | AddWatchFlags::IN_MOVE_SELF,
                    ) {
                        inner.dirty = true;
                        added = true;
                        continue;
                    }
                    let Some(name) = ev.name.and_then(|n| n.into_string().ok()) else {
                        continue;
                    };
                    if durable::is_temp_name(&name) || !name.ends_with(".json") {
                        continue;
                    }
                    if ev
                        .mask
                        .intersects(AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE)
                    {
                        inner.names.insert(name);
                        added = true;
                    } else {
                        inner.names.remove(&name);
                    }
                }
            }
            if added {
                // notify_one stores a permit when nobody waits yet, so a
                // claimer that checks the index and then waits never misses
                // a job that arrived in between.
                ix.notify.notify_one();
            }
        }
    }))
}

struct InotifyFd(Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}
