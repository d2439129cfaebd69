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
//!
//! A name carrying a not-before time that has not come yet (a job deferred
//! by the budget gate) moves from the index into a second set ordered by
//! that time; it comes back when due, and [`Claimer::wait`] sleeps no longer
//! than until the earliest one. So a queue holding only deferred jobs costs
//! a sleeping runner nothing, and no such file is ever touched early.

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
    /// Names not due yet, by not-before time (Unix seconds).
    deferred: BTreeSet<(u64, String)>,
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

impl Inner {
    /// Moves deferred names whose time has come back into the index.
    fn promote_due(&mut self, now: u64) {
        while let Some(first) = self.deferred.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, name)) = self.deferred.pop_first() {
                self.names.insert(name);
            }
        }
    }

    fn forget(&mut self, name: &str) {
        self.names.remove(name);
        if let Some(t) = Entry::parse(name).and_then(|e| e.not_before) {
            self.deferred.remove(&(t, name.to_owned()));
        }
    }
}

/// The ordered index of `pending/` plus the claim operation.
pub struct Claimer {
    queue: Queue,
    runner_id: String,
    index: Arc<Index>,
    watching: bool,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// Jobs this claimer leaves alone until the given time (see `pass_over`).
    passed: Mutex<std::collections::HashMap<String, Instant>>,
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
            passed: Mutex::default(),
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
        inner.deferred.clear();
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
    /// is pending), deferred ones included.
    pub fn indexed(&self) -> usize {
        let inner = self.index.lock();
        inner.names.len() + inner.deferred.len()
    }

    /// Leaves `job_id` to other claimers for `period` (a runner that cannot
    /// run the job, because it names an agent this runner does not know,
    /// puts it back and passes over it instead of claiming it again at once).
    pub fn pass_over(&self, job_id: &str, period: Duration) {
        let mut p = self.passed.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        p.retain(|_, until| *until > now);
        p.insert(job_id.to_owned(), now + period);
    }

    /// How many jobs this claimer passes over right now.
    pub fn passed_over(&self) -> usize {
        let now = Instant::now();
        let p = self.passed.lock().unwrap_or_else(|e| e.into_inner());
        p.values().filter(|until| **until > now).count()
    }

    fn is_passed_over(&self, job_id: &str) -> bool {
        let p = self.passed.lock().unwrap_or_else(|e| e.into_inner());
        p.get(job_id).is_some_and(|until| *until > Instant::now())
    }

    /// Claims the first pending job, or returns `None` when there is none.
    /// Files whose names do not parse are quarantined to `corrupt/`.
    pub fn try_claim(&self) -> Result<Option<Claim>> {
        self.rescan_if_due()?;
        // Names passed over go back into the index when this call returns.
        let mut skipped = Skipped(&self.index, Vec::new());
        let now = crate::clock::now_unix();
        loop {
            let next = {
                let mut inner = self.index.lock();
                inner.promote_due(now);
                inner.names.pop_first()
            };
            let Some(name) = next else {
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
            if let Some(t) = entry.not_before.filter(|_| !entry.is_due(now)) {
                self.index.lock().deferred.insert((t, name));
                continue;
            }
            if self.is_passed_over(&entry.job_id) {
                skipped.1.push(name);
                continue;
            }
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
                Ok(()) => {
                    crate::fault::record(crate::fault::Op::Rename(&from, &to));
                    crate::fault::point("queue.claim.renamed");
                }
                // Someone else claimed it (or an operator moved it).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(DurableError::new("claim", &from, e).into()),
            }
            durable::sync_dirs(&[
                &self.queue.dir(State::Running),
                &self.queue.dir(State::Pending),
            ])?;
            crate::fault::point("queue.claim.synced");
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

    /// Waits until `pending/` may have changed: a notification, the
    /// rescan interval (shorter when notifications are unavailable), or the
    /// moment the earliest deferred job becomes due.
    pub async fn wait(&self) {
        let mut timeout = if self.watching {
            RESCAN_INTERVAL
        } else {
            Duration::from_millis(500)
        };
        let earliest = self.index.lock().deferred.first().map(|(t, _)| *t);
        if let Some(t) = earliest {
            let left = Duration::from_secs(t.saturating_sub(crate::clock::now_unix()));
            timeout = timeout.min(left);
        }
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

/// Names popped from the index but passed over: put back on drop.
struct Skipped<'a>(&'a Index, Vec<String>);

impl Drop for Skipped<'_> {
    fn drop(&mut self) {
        if !self.1.is_empty() {
            let mut inner = self.0.lock();
            inner.names.extend(self.1.drain(..));
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
                        inner.forget(&name);
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
