//! Ownership of claimed jobs (see docs/ARCHITECTURE.md, "Ownership
//! protocol"): lease renewal on a thread of its own, the owner's deadline,
//! the attempt fence that every publish into a job's artifacts and
//! workspace passes, and the killing of a previous attempt's agent.
//!
//! - The **renewer** thread touches every running file a quarter of the
//!   lease apart and does nothing else: no durable barrier, no claim, no
//!   heartbeat document can make it wait.
//! - The **owner's deadline**: an attempt is lost once its last successful
//!   renewal started more than `lease - margin` ago (boot-time clock),
//!   whatever a later touch says. Losing it stops the job (its agent's
//!   process group is killed by the executor) and refuses every later
//!   publish of the attempt.
//! - The **fence** (`fsqueue::fence`): a new attempt records itself before
//!   it writes anything; every rename of a publish holds the record (shared
//!   lock) while it runs and is refused unless the record still names its
//!   attempt, its running file still exists and its deadline has not
//!   passed.

use crate::error::AttemptError;
use crate::exec::{JobControl, StopReason};
use fsqueue::fence::{FenceError, HostId, JobFence, Record, host_id};
use fsqueue::lease::{self, Stamp};
use fsqueue::{Located, Queue, QueueError};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One attempt's hold on one job.
pub struct Ownership {
    pub job_id: String,
    pub loc: Located,
    pub control: JobControl,
    lease: Duration,
    /// Start of the last successful renewal (`Stamp` nanoseconds).
    last_ok: AtomicU64,
    lost: AtomicBool,
    fence: JobFence,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("job_id", &self.job_id)
            .field("attempt", &self.loc.entry.attempt)
            .finish()
    }
}

impl Ownership {
    pub fn new(queue: &Queue, claim: &fsqueue::Claim, lease: Duration) -> Arc<Self> {
        Arc::new(Self {
            job_id: claim.loc.entry.job_id.clone(),
            loc: claim.loc.clone(),
            control: JobControl::new(),
            lease,
            last_ok: AtomicU64::new(claim.renewed_at.as_nanos()),
            lost: AtomicBool::new(false),
            fence: JobFence::new(queue, &claim.loc.entry.job_id),
        })
    }

    pub fn attempt(&self) -> u32 {
        self.loc.entry.attempt
    }

    /// `Ok` while the attempt still owns the job by its own deadline.
    pub fn valid(&self) -> Result<(), AttemptError> {
        if self.lost.load(Ordering::Acquire) {
            return Err(AttemptError::LeaseLost("the attempt lost its lease".into()));
        }
        let since = Stamp::from_nanos(self.last_ok.load(Ordering::Acquire)).elapsed();
        if since > lease::owner_deadline(self.lease) {
            self.lose(&format!(
                "no successful renewal for {} ms (owner deadline {} ms)",
                since.as_millis(),
                lease::owner_deadline(self.lease).as_millis()
            ));
            return Err(AttemptError::LeaseLost("owner deadline passed".into()));
        }
        Ok(())
    }

    /// Marks the attempt lost for good and stops the job.
    pub fn lose(&self, why: &str) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            tracing::warn!(job_id = %self.job_id, attempt = self.attempt(), why, "lease lost; stopping the job");
        }
        self.control.stop(StopReason::LeaseLost);
    }

    /// One renewal: touch the running file. Success moves the deadline
    /// (from the moment the touch *started*); a vanished file loses the
    /// attempt; other errors leave the deadline where it was.
    pub fn renew(&self) -> Result<(), AttemptError> {
        if self.lost.load(Ordering::Acquire) {
            return Err(AttemptError::LeaseLost("the attempt lost its lease".into()));
        }
        let started = Stamp::now();
        match lease::renew(&self.loc) {
            Ok(()) => {
                self.last_ok.fetch_max(started.as_nanos(), Ordering::AcqRel);
                self.valid()
            }
            Err(QueueError::LeaseLost { .. }) => {
                self.lose("the running file is gone (reaped or moved)");
                Err(AttemptError::LeaseLost("the running file is gone".into()))
            }
            Err(e) => {
                tracing::warn!(job_id = %self.job_id, error = %e, "lease renewal failed");
                self.valid()
            }
        }
    }

    /// Checks the fence for a publish and holds it (see the module docs).
    fn hold(&self) -> io::Result<Box<dyn std::any::Any>> {
        let refuse = |why: String| {
            self.lose(&why);
            fsqueue::durable::Refused::io(why)
        };
        self.valid().map_err(|e| refuse(e.to_string()))?;
        let give_up = || self.valid().is_err();
        let lock = self.fence.hold(self.attempt(), &give_up).map_err(|e| {
            if fsqueue::durable::is_refused(&e) {
                refuse(e.to_string())
            } else {
                e
            }
        })?;
        // The name is the fencing token: a reaped claim's file is gone.
        if std::fs::symlink_metadata(&self.loc.path).is_err() {
            return Err(refuse("the running file is gone (reaped or moved)".into()));
        }
        self.valid().map_err(|e| refuse(e.to_string()))?;
        Ok(Box::new(lock))
    }

    /// Starts the attempt: records it in the job's fence (waiting for a
    /// stale attempt's publish in progress), then kills the previous
    /// attempt's agent when it ran on this host. Blocking. Fails with
    /// `LeaseLost` when a newer attempt started or the lease ran out while
    /// waiting, and with `Storage`/`Io` when the record cannot be written.
    pub fn start(&self, runner_id: &str) -> Result<(), AttemptError> {
        let give_up = || self.valid().is_err();
        let rec = Record::here(self.attempt(), runner_id);
        match self.fence.advance(&rec, &give_up) {
            Ok(prev) => {
                if let Some(p) = prev
                    && p.attempt < rec.attempt
                {
                    kill_recorded_agent(&self.fence, &self.job_id);
                }
                Ok(())
            }
            Err(FenceError::Stale { newer, .. }) => {
                let why = format!("attempt {newer} of the job already started");
                self.lose(&why);
                Err(AttemptError::LeaseLost(why))
            }
            Err(FenceError::GaveUp(_)) => Err(AttemptError::LeaseLost(
                "lease ran out while waiting for the job's fence".into(),
            )),
            Err(FenceError::Io(e)) => {
                // Without a record no publish of ours passes: the attempt
                // is over. The error keeps its errno, so the caller can
                // tell a full or read-only disk (give the job back to
                // pending) from any other failure (leave it to its lease).
                let why = format!("cannot record the attempt: {e}");
                self.lose(&why);
                Err(AttemptError::from_io(why, e.source))
            }
        }
    }
}

/// The durable layer's view of an `Ownership`.
pub struct OwnershipFence(pub Arc<Ownership>);

impl fsqueue::durable::Fence for OwnershipFence {
    fn hold(&self) -> io::Result<Box<dyn std::any::Any>> {
        self.0.hold()
    }
}

/// The jobs this process owns, by job id.
pub type Owned = Arc<Mutex<HashMap<String, Arc<Ownership>>>>;

pub fn lock_owned(o: &Owned) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Ownership>>> {
    o.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the renewer thread: renews every owned job a quarter of the
/// lease apart and enforces owners' deadlines. Ends when `stop` is set.
pub fn spawn_renewer(
    owned: Owned,
    lease: Duration,
    stop: Arc<AtomicBool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let every = lease::renew_interval(lease);
    std::thread::Builder::new()
        .name("lease-renewer".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let jobs: Vec<Arc<Ownership>> = lock_owned(&owned).values().cloned().collect();
                for own in jobs {
                    let _ = own.renew();
                }
                // Sleep in short slices so a stop is seen quickly.
                let t = Stamp::now();
                while t.elapsed() < every && !stop.load(Ordering::Acquire) {
                    std::thread::sleep(every.min(Duration::from_millis(50)));
                }
            }
        })
}

/// Where the agents of a job are recorded: `fences/<job_id>.agent`.
fn agent_record_path(fence: &JobFence, job_id: &str) -> PathBuf {
    fence
        .record_path()
        .with_file_name(format!("{job_id}.agent"))
}

/// Records a started agent (called by the executor for every child whose
/// working directory is a job's workspace): pid (= process group), its
/// start time, host, boot id. Advisory, no barrier: after a crash of the
/// host the processes are gone anyway.
pub fn record_agent(queue: &Queue, workspaces_root: &Path, cwd: &Path, pid: u32) {
    let Some(job_dir) = cwd.parent() else { return };
    if job_dir.parent() != Some(workspaces_root) {
        return;
    }
    let Some(job_id) = job_dir.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    if !fsqueue::name::is_valid_job_id(job_id) {
        return;
    }
    let fence = JobFence::new(queue, job_id);
    let h: &HostId = host_id();
    let text = format!(
        "pgid={pid}\nstart={}\nhost={}\nboot_id={}\nrunner_pid={}\n",
        start_time(pid).unwrap_or(0),
        h.host,
        h.boot_id,
        std::process::id()
    );
    let path = agent_record_path(&fence, job_id);
    if let Err(e) = fsqueue::durable::write_file_advisory(&path, text.as_bytes()) {
        tracing::warn!(job_id, error = %e, "could not record the agent's process group");
    }
}

/// Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Kills the process group of the job's previously recorded agent, if it
/// was started on this host since its last boot and still exists.
fn kill_recorded_agent(fence: &JobFence, job_id: &str) {
    let path = agent_record_path(fence, job_id);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or("")
    };
    let h = host_id();
    if h.boot_id.is_empty() || get("host") != h.host || get("boot_id") != h.boot_id {
        return;
    }
    let (Ok(pgid), Ok(start)) = (get("pgid").parse::<i32>(), get("start").parse::<u64>()) else {
        return;
    };
    if pgid <= 1 || pgid == nix::unistd::getpgrp().as_raw() {
        return;
    }
    // A leader with the recorded start time is the same process; without
    // a leader, the group's remaining members can only be the original
    // group's (the kernel does not reuse an id still used as a group id).
    if let Some(now) = start_time(pgid as u32)
        && now != start
    {
        return;
    }
    let pg = nix::unistd::Pid::from_raw(pgid);
    if nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL).is_ok() {
        tracing::warn!(
            job_id,
            pgid,
            "killed the previous attempt's agent process group"
        );
        // Wait (bounded) until the group is gone, so two agents never share
        // the workspace.
        let t = Stamp::now();
        while nix::sys::signal::killpg(pg, None).is_ok() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
