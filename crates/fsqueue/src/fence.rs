//! Attempt fencing: which claim of a job may still write its artifacts and
//! workspace.
//!
//! Every claim has an attempt number (in its queue file name, `~{attempt}`).
//! `fences/<job_id>.json` records the newest attempt that started, with the
//! runner, host, boot id and process id that run it. A new attempt
//! *advances* the record before it writes anything: it takes
//! `fences/<job_id>.lock` exclusively, refuses to run when a newer attempt is
//! recorded, and writes its own number. Every rename of an attempt's publish
//! *holds* the record: it takes the lock shared, checks that the record
//! still names its attempt, and keeps the lock while that rename runs. So on
//! one host (and on a network filesystem whose locks work) a stale attempt's
//! rename either completes before the newer attempt starts, or is refused;
//! never after. `fences/<job_id>.agent` records the attempt's agent process
//! group (written by the runner).
//!
//! The lock file is never replaced (locks live on inodes); the record is
//! replaced durably while the lock is held exclusively.

use crate::durable::{self, DurableError};
use crate::queue::{FENCES_DIR, Queue};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// This host's identity: hostname and kernel boot id. Two processes are on
/// the same running system exactly when both match; process ids, locks and
/// process groups mean something only then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostId {
    pub host: String,
    pub boot_id: String,
}

/// The identity of the host this process runs on (read once).
pub fn host_id() -> &'static HostId {
    static H: std::sync::OnceLock<HostId> = std::sync::OnceLock::new();
    H.get_or_init(|| HostId {
        host: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .map(|h| clean(&h))
            .unwrap_or_default(),
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| clean(&s))
            .unwrap_or_default(),
    })
}

/// One line of plain text: no newlines or `=`.
fn clean(s: &str) -> String {
    s.trim()
        .chars()
        .filter(|c| !c.is_control() && *c != '=')
        .take(200)
        .collect()
}

/// The newest attempt of a job that started, and where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub attempt: u32,
    pub runner: String,
    pub host: String,
    pub boot_id: String,
    pub pid: u32,
}

impl Record {
    /// A record for `attempt` run by this process.
    pub fn here(attempt: u32, runner: &str) -> Self {
        let h = host_id();
        Self {
            attempt,
            runner: clean(runner),
            host: h.host.clone(),
            boot_id: h.boot_id.clone(),
            pid: std::process::id(),
        }
    }

    /// True when the record was written on this host since its last boot.
    pub fn same_host(&self) -> bool {
        let h = host_id();
        !self.boot_id.is_empty() && self.host == h.host && self.boot_id == h.boot_id
    }

    fn to_text(&self) -> String {
        format!(
            "attempt={}\nrunner={}\nhost={}\nboot_id={}\npid={}\n",
            self.attempt, self.runner, self.host, self.boot_id, self.pid
        )
    }

    /// Parses the record; `None` when it is not one (torn or foreign).
    pub fn parse(text: &str) -> Option<Self> {
        let mut r = Record {
            attempt: 0,
            runner: String::new(),
            host: String::new(),
            boot_id: String::new(),
            pid: 0,
        };
        let mut seen_attempt = false;
        for line in text.lines() {
            let (k, v) = line.split_once('=')?;
            match k {
                "attempt" => {
                    r.attempt = v.parse().ok()?;
                    seen_attempt = true;
                }
                "runner" => r.runner = v.to_owned(),
                "host" => r.host = v.to_owned(),
                "boot_id" => r.boot_id = v.to_owned(),
                "pid" => r.pid = v.parse().ok()?,
                _ => {}
            }
        }
        seen_attempt.then_some(r)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// A newer attempt of the job started: this one must not write.
    #[error("attempt {mine} of job {job_id} is stale: attempt {newer} started")]
    Stale {
        job_id: String,
        mine: u32,
        newer: u32,
    },
    /// The caller gave up waiting for the lock (its lease ran out).
    #[error("gave up waiting for the fence of job {0}")]
    GaveUp(String),
    #[error(transparent)]
    Io(#[from] DurableError),
}

/// The fence of one job.
#[derive(Debug, Clone)]
pub struct JobFence {
    job_id: String,
    lock_path: PathBuf,
    record_path: PathBuf,
}

/// How often a waiter retries a busy lock (and asks whether to give up).
const LOCK_POLL: Duration = Duration::from_millis(20);

impl JobFence {
    pub fn new(queue: &Queue, job_id: &str) -> Self {
        let dir = queue.internal_dir(FENCES_DIR);
        Self {
            job_id: job_id.to_owned(),
            lock_path: dir.join(format!("{job_id}.lock")),
            record_path: dir.join(format!("{job_id}.json")),
        }
    }

    pub fn record_path(&self) -> &std::path::Path {
        &self.record_path
    }

    fn lock(&self, arg: FlockArg, give_up: &dyn Fn() -> bool) -> Result<Flock<File>, FenceError> {
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .custom_flags_nofollow()
                .open(&self.lock_path)
                .map_err(|e| DurableError::new("open", &self.lock_path, e))?;
            match Flock::lock(file, arg) {
                Ok(l) => return Ok(l),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
                Err((_, e)) => {
                    return Err(DurableError::new("flock", &self.lock_path, e.into()).into());
                }
            }
            if give_up() {
                return Err(FenceError::GaveUp(self.job_id.clone()));
            }
            std::thread::sleep(LOCK_POLL);
        }
    }

    /// The current record (`None`: no attempt recorded yet, or unreadable).
    pub fn read(&self) -> Option<Record> {
        let text = std::fs::read_to_string(&self.record_path).ok()?;
        Record::parse(&text)
    }

    /// Starts attempt `rec.attempt`: waits for the exclusive lock (calling
    /// `give_up` between tries), refuses when a newer attempt is recorded,
    /// durably records this one, and returns the previous record.
    pub fn advance(
        &self,
        rec: &Record,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Option<Record>, FenceError> {
        let nonblock = FlockArg::LockExclusiveNonblock;
        let _lock = self.lock(nonblock, give_up)?;
        let prev = self.read();
        if let Some(p) = &prev
            && p.attempt > rec.attempt
        {
            return Err(FenceError::Stale {
                job_id: self.job_id.clone(),
                mine: rec.attempt,
                newer: p.attempt,
            });
        }
        durable::write_file(&self.record_path, rec.to_text().as_bytes())?;
        Ok(prev)
    }

    /// Holds the fence for a publish of `attempt`: a shared lock, taken
    /// only while the record names `attempt`. Dropping the returned lock
    /// lets a newer attempt start.
    pub fn hold(&self, attempt: u32, give_up: &dyn Fn() -> bool) -> io::Result<Flock<File>> {
        let lock = self
            .lock(FlockArg::LockSharedNonblock, give_up)
            .map_err(|e| match e {
                FenceError::Io(d) => d.source,
                other => durable::Refused::io(other.to_string()),
            })?;
        match self.read() {
            Some(r) if r.attempt == attempt => Ok(lock),
            Some(r) => Err(durable::Refused::io(format!(
                "attempt {attempt} of job {} is stale: attempt {} started",
                self.job_id, r.attempt
            ))),
            None => Err(durable::Refused::io(format!(
                "job {} has no attempt record",
                self.job_id
            ))),
        }
    }

    /// Removes the record, the lock and the agent record (the job is gone
    /// for good).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.record_path);
        let _ = std::fs::remove_file(&self.lock_path);
        let _ = std::fs::remove_file(self.lock_path.with_extension("agent"));
    }
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for std::fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOFOLLOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_refuses_older_attempts_and_hold_follows_the_record() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::open(d.path()).unwrap();
        let f = JobFence::new(&q, "job1");
        let never = || false;
        assert_eq!(f.advance(&Record::here(2, "a"), &never).unwrap(), None);
        let held = f.hold(2, &never).unwrap();
        // A newer attempt must wait for the publish in progress.
        let always = || true;
        assert!(matches!(
            f.advance(&Record::here(3, "b"), &always),
            Err(FenceError::GaveUp(_))
        ));
        drop(held);
        let prev = f.advance(&Record::here(3, "b"), &never).unwrap().unwrap();
        assert_eq!(prev.attempt, 2);
        assert!(prev.same_host());
        // The stale attempt can neither publish nor start again.
        let e = f.hold(2, &never).unwrap_err();
        assert!(durable::is_refused(&e), "{e}");
        assert!(matches!(
            f.advance(&Record::here(2, "a"), &never),
            Err(FenceError::Stale { newer: 3, .. })
        ));
        assert!(f.hold(3, &never).is_ok());
    }

    #[test]
    fn records_round_trip_and_garbage_is_no_record() {
        let r = Record::here(7, "r\nx=1");
        assert_eq!(Record::parse(&r.to_text()), Some(r.clone()));
        assert_eq!(r.runner, "rx1");
        assert_eq!(Record::parse("garbage"), None);
        assert_eq!(Record::parse("attempt=99999999999999\n"), None);
    }
}
