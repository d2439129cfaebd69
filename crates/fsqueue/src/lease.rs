//! Leases: how a claim stays owned, and how an abandoned one comes back.
//!
//! A running file's **mtime is its lease**. The owner refreshes it (a
//! `utimensat` "touch") about every quarter of `RUNNER_LEASE_SEC`, on a
//! thread that does nothing else (never behind a durable barrier or a
//! claim), for as long as the job runs. Two deadlines bound a lease:
//!
//! - the **owner's deadline**: the owner counts its lease as lost once its
//!   last *successful* renewal started more than `lease - margin` ago
//!   (`margin` = a quarter of the lease), whatever a later touch says, and
//!   then stops the job's work and never publishes for that attempt again;
//! - the **reaper's wait**: a claim is expired only when its file was not
//!   touched for longer than `lease + margin`, judged against the
//!   *filesystem's* clock (we touch a probe file and read its mtime back,
//!   with open + fstat so a network client's attribute cache cannot serve a
//!   stale time), so hosts sharing the queue need no synchronised clocks,
//!   and the time a job waited in `pending/` never counts (claims refresh
//!   mtime).
//!
//! The two margins between them absorb clock-rate differences and the time
//! an owner needs between its last check and its last rename.
//!
//! On one host there is a faster signal: every runner holds an exclusive
//! `flock` on `runners/<id>.lock` for its whole life, and writes its host
//! name and boot id into it. The kernel drops the lock when the process
//! dies, however it dies, so a reaper *on the same host and boot* that can
//! take the lock knows the owner is gone and reaps its jobs at once. A lock
//! written on another host (or before a reboot) proves nothing and such
//! claims are judged by their lease only.
//!
//! Reaping moves `running/<name>@<runner>` back to `pending/` (keeping its
//! place in FIFO order), or to `failed/` once it has been reaped
//! `max_reclaims` times: a job that kills its runner every time must end.

use crate::claim::touch;
use crate::durable::{self, DurableError};
use crate::fence::host_id;
use crate::name::{Entry, is_valid_runner_id};
use crate::queue::{Located, Queue, QueueError, RUNNERS_DIR, Result, State};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Exclusive ownership of a runner id for the life of the process.
pub struct RunnerLock {
    runner_id: String,
    _lock: Flock<File>,
    heartbeat_path: PathBuf,
}

impl std::fmt::Debug for RunnerLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerLock")
            .field("runner_id", &self.runner_id)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("invalid runner id {0:?}: use 1..64 of [A-Za-z0-9_-]")]
    BadId(String),
    #[error("another live runner holds the id {0:?} (lock file {1})")]
    InUse(String, PathBuf),
    #[error(transparent)]
    Io(#[from] DurableError),
}

fn lock_path(queue: &Queue, runner_id: &str) -> PathBuf {
    queue
        .internal_dir(RUNNERS_DIR)
        .join(format!("{runner_id}.lock"))
}

impl RunnerLock {
    /// Takes the id's lock. Fails with `InUse` when a live process holds it.
    pub fn acquire(queue: &Queue, runner_id: &str) -> std::result::Result<Self, LockError> {
        if !is_valid_runner_id(runner_id) {
            return Err(LockError::BadId(runner_id.to_owned()));
        }
        let path = lock_path(queue, runner_id);
        // A reaper may briefly hold the lock while probing liveness, and may
        // unlink the file of a dead runner: retry a few times, and verify the
        // locked inode is still the one at `path`.
        for _ in 0..50 {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| DurableError::new("open", &path, e))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    let same = std::fs::metadata(&path)
                        .ok()
                        .zip(lock.metadata().ok())
                        .is_some_and(|(a, b)| a.ino() == b.ino() && a.dev() == b.dev());
                    if same {
                        // Who holds it: a reaper trusts a free lock only
                        // when it was written on its own host and boot.
                        let h = host_id();
                        let mut f: &File = &lock;
                        let ident = format!(
                            "host={}\nboot_id={}\npid={}\n",
                            h.host,
                            h.boot_id,
                            std::process::id()
                        );
                        f.set_len(0)
                            .and_then(|()| f.write_all(ident.as_bytes()))
                            .map_err(|e| DurableError::new("write", &path, e))?;
                        return Ok(Self {
                            runner_id: runner_id.to_owned(),
                            _lock: lock,
                            heartbeat_path: queue
                                .internal_dir(RUNNERS_DIR)
                                .join(format!("{runner_id}.json")),
                        });
                    }
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
                Err((_, e)) => return Err(DurableError::new("flock", &path, e.into()).into()),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(LockError::InUse(runner_id.to_owned(), path))
    }

    pub fn runner_id(&self) -> &str {
        &self.runner_id
    }

    /// Publishes the runner's heartbeat document (`runners/<id>.json`), read
    /// by `/health` and `orch doctor`. Advisory: written by an atomic rename
    /// but without a barrier, so it never waits for the disk (a crash may
    /// leave an older heartbeat, which only says less).
    pub fn write_heartbeat(&self, doc: &[u8]) -> Result<()> {
        durable::write_file_advisory(&self.heartbeat_path, doc)?;
        crate::fault::point("runner.heartbeat.written");
        Ok(())
    }

    /// Removes the heartbeat document (clean shutdown).
    pub fn clear_heartbeat(&self) {
        let _ = durable::remove_file(&self.heartbeat_path);
    }
}

/// Liveness of a runner id as seen from this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// A process holds the id's lock.
    Alive,
    /// The lock file was written on this host and boot, and nobody holds
    /// it: the owner is dead.
    Dead,
    /// No lock file, or one written on another host or before a reboot (a
    /// free lock proves nothing there): judge by lease.
    Unknown,
}

/// Probes a runner id's lock without keeping it.
pub fn liveness(queue: &Queue, runner_id: &str) -> Liveness {
    let path = lock_path(queue, runner_id);
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&path)
    else {
        return Liveness::Unknown;
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut &*lock, &mut text);
            let h = host_id();
            let here = !h.boot_id.is_empty()
                && text.lines().any(|l| l == format!("host={}", h.host))
                && text.lines().any(|l| l == format!("boot_id={}", h.boot_id));
            if here {
                Liveness::Dead
            } else {
                Liveness::Unknown
            }
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Liveness::Alive,
        Err(_) => Liveness::Unknown,
    }
}

/// A point on the boot-time clock (`CLOCK_BOOTTIME`: monotonic, and it
/// keeps counting while the system is suspended, so a host that slept
/// through its lease knows it on waking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(Duration);

impl Stamp {
    pub fn now() -> Self {
        use nix::time::{ClockId, clock_gettime};
        match clock_gettime(ClockId::CLOCK_BOOTTIME)
            .or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC))
        {
            Ok(ts) => Stamp(Duration::from(ts)),
            Err(_) => Stamp(Duration::ZERO),
        }
    }

    /// Time since this stamp (zero if the clock went backwards).
    pub fn elapsed(self) -> Duration {
        Stamp::now().0.saturating_sub(self.0)
    }

    /// Nanoseconds since boot (for atomics).
    pub fn as_nanos(self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn from_nanos(n: u64) -> Self {
        Stamp(Duration::from_nanos(n))
    }
}

/// The safety margin of a lease: the owner gives up `margin` before the
/// lease ends, and the reaper waits `margin` after it.
pub fn margin(lease: Duration) -> Duration {
    lease / 4
}

/// How long after its last successful renewal started an owner still
/// trusts its lease: `lease - margin`.
pub fn owner_deadline(lease: Duration) -> Duration {
    lease.saturating_sub(margin(lease))
}

/// How often the owner renews: a quarter of the lease (at least 50 ms),
/// so a few renewals can fail before the owner's deadline.
pub fn renew_interval(lease: Duration) -> Duration {
    (lease / 4).max(Duration::from_millis(50))
}

/// Renews a lease: touches the running file. `LeaseLost` when the file is
/// gone (the job was reaped or moved): the caller must stop working on it.
pub fn renew(loc: &Located) -> Result<()> {
    match touch(&loc.path) {
        Ok(()) => {
            crate::fault::point("queue.renew.touched");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(QueueError::LeaseLost {
            path: loc.path.clone(),
        }),
        Err(e) => Err(DurableError::new("touch", &loc.path, e).into()),
    }
}

/// The filesystem's idea of "now": touch a probe file and read its mtime.
pub fn fs_now(queue: &Queue) -> Result<SystemTime> {
    let probe = queue.root().join(".clock");
    if let Err(e) = touch(&probe) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(DurableError::new("touch", &probe, e).into());
        }
        durable::write_file(&probe, b"")?;
    }
    fstat_mtime(&probe).map_err(|e| DurableError::new("stat", &probe, e).into())
}

/// A file's mtime read with open + fstat: on NFS, `open` revalidates the
/// attributes with the server (close-to-open consistency), so a cached
/// attribute cannot make a live lease look old.
fn fstat_mtime(path: &Path) -> io::Result<SystemTime> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path)?
        .metadata()?
        .modified()
}

/// What the reaper did with one abandoned claim.
#[derive(Debug, Clone)]
pub enum ReapOutcome {
    /// Back to `pending/`, to be resumed by any runner.
    Requeued {
        from: Located,
        to: Located,
        reason: String,
    },
    /// Reaped too often: moved to `failed/`. The caller records the error
    /// in the job's artifacts.
    Failed {
        from: Located,
        to: Located,
        reason: String,
    },
}

impl ReapOutcome {
    pub fn job_id(&self) -> &str {
        match self {
            ReapOutcome::Requeued { to, .. } | ReapOutcome::Failed { to, .. } => &to.entry.job_id,
        }
    }
}

/// Finds and reaps expired claims.
#[derive(Debug, Clone)]
pub struct Reaper {
    pub queue: Queue,
    pub lease: Duration,
    pub max_reclaims: u32,
}

impl Reaper {
    pub fn new(queue: Queue, lease: Duration, max_reclaims: u32) -> Self {
        Self {
            queue,
            lease,
            max_reclaims,
        }
    }

    /// One pass over `running/`. Claims whose owner is provably dead (lock
    /// free, same host) or whose lease expired (`lease + margin` without a
    /// renewal) are requeued or failed. Errors on single files are logged
    /// and skipped; the pass goes on.
    pub fn reap(&self) -> Result<Vec<ReapOutcome>> {
        let now = fs_now(&self.queue)?;
        let expiry = self.lease + margin(self.lease);
        let mut out = Vec::new();
        for loc in self.queue.list(State::Running)? {
            let Some(runner) = loc.entry.runner.clone() else {
                continue;
            };
            let reason = match liveness(&self.queue, &runner) {
                Liveness::Alive => match lease_age(&loc.path, now) {
                    // A live owner that stopped renewing (hung, or its disk
                    // is gone) still loses the job once the lease expires.
                    Some(age) if age > expiry => format!(
                        "lease expired: runner {runner} is alive but last renewed {}s ago",
                        age.as_secs()
                    ),
                    _ => continue,
                },
                Liveness::Dead => format!("runner {runner} died (its lock is free)"),
                Liveness::Unknown => match lease_age(&loc.path, now) {
                    Some(age) if age > expiry => format!(
                        "lease expired: runner {runner} last renewed {}s ago",
                        age.as_secs()
                    ),
                    _ => continue,
                },
            };
            match self.reap_one(&loc, reason) {
                Ok(Some(o)) => out.push(o),
                Ok(None) => {}
                Err(e) => tracing::warn!(file = %loc.path.display(), error = %e, "reap failed"),
            }
        }
        Ok(out)
    }

    fn reap_one(&self, loc: &Located, reason: String) -> Result<Option<ReapOutcome>> {
        crate::fault::point("queue.reap.found");
        let mut entry: Entry = loc.entry.unowned();
        entry.reaps = entry.reaps.saturating_add(1);
        let poisoned = entry.reaps > self.max_reclaims;
        let to_state = if poisoned {
            State::Failed
        } else {
            State::Pending
        };
        match self.queue.move_to(loc, to_state, &entry) {
            Ok(to) => {
                crate::fault::point("queue.reap.moved");
                let job_id = to.entry.job_id.clone();
                if poisoned {
                    let reason = format!(
                        "{reason}; reclaimed {} times, more than RUNNER_MAX_RECLAIMS={}: giving up",
                        entry.reaps - 1,
                        self.max_reclaims
                    );
                    tracing::warn!(job_id, %reason, "poison job moved to failed");
                    Ok(Some(ReapOutcome::Failed {
                        from: loc.clone(),
                        to,
                        reason,
                    }))
                } else {
                    tracing::info!(job_id, %reason, attempt = entry.attempt, "lease reaped; job requeued");
                    Ok(Some(ReapOutcome::Requeued {
                        from: loc.clone(),
                        to,
                        reason,
                    }))
                }
            }
            // Someone else reaped it, or its owner just finished it.
            Err(QueueError::LeaseLost { .. }) | Err(QueueError::Duplicate { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn lease_age(path: &Path, now: SystemTime) -> Option<Duration> {
    let m = fstat_mtime(path).ok()?;
    Some(now.duration_since(m).unwrap_or(Duration::ZERO))
}

/// Heartbeat documents of runners with their liveness (for `/health`,
/// `orch doctor`).
pub fn runners(queue: &Queue) -> Vec<(String, Liveness, Option<Vec<u8>>)> {
    let dir = queue.internal_dir(RUNNERS_DIR);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let Ok(name) = ent.file_name().into_string() else {
            continue;
        };
        let Some(id) = name.strip_suffix(".lock") else {
            continue;
        };
        if !is_valid_runner_id(id) {
            continue;
        }
        let doc = std::fs::read(dir.join(format!("{id}.json"))).ok();
        out.push((id.to_owned(), liveness(queue, id), doc));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
