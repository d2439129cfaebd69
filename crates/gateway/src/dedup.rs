//! Delivery deduplication: an `Idempotency-Key`, an `X-GitHub-Delivery` or
//! a signed GitHub body seen within `DEDUP_WINDOW_SEC` maps to the job it
//! created, so a redelivery returns the original job id and creates nothing
//! — however long ago the job left `pending/`, and even when two copies
//! arrive at the same instant.
//!
//! One small file per delivery under `<queue_root>/deliveries/`, named by
//! the SHA-256 of the key (client-chosen strings never become file names).
//! The protocol:
//!
//! 1. normalise the payload (the job id is chosen now);
//! 2. **claim** the key: a no-replace create of the record, holding the job
//!    id and the whole job document, `committed: false`. Exactly one copy
//!    of a delivery wins this race, on one host or many;
//! 3. the winner enqueues the job (fsqueue refuses a second job with the
//!    same id, so enqueuing twice is harmless), then rewrites the record as
//!    `committed: true` and answers 202;
//! 4. a loser reads the record: committed → the original job id. Not yet
//!    committed: when the job file is already in a queue state, the loser
//!    makes its name durable and commits the record itself; otherwise it
//!    waits while the record's writer is alive, and finishes the writer's
//!    work from the job document in the record once the writer is proven
//!    dead.
//!
//! "Alive" is not a matter of age: a winner can be slow for any length of
//! time (a stalled disk, a paused process). Every gateway holds an `flock`
//! on its own file in `deliveries/owners/` for its whole life and names
//! that file in the records it writes; the kernel drops the lock when the
//! process dies, however it dies. A record whose owner's lock is free (or
//! gone) has a dead writer. Within one gateway, the keys in flight are
//! known, so a record of a request of this very process that ended without
//! a commit (a failed commit) is finished too. One finisher at a time: the
//! finisher holds an `flock` on the record file while it works.
//!
//! The job id of a record belongs to that delivery: finishing takes over an
//! id reservation that a crash left without its job file
//! (`Queue::enqueue_recovered`), and never takes a reservation as proof
//! that the job exists. A crash at any point therefore loses nothing:
//! either no record exists (nothing was acknowledged; the sender's retry
//! starts over) or the record holds everything needed to finish, and a 202
//! is only ever sent for a job file found (or placed) durably in a queue
//! state. `release` (after a failed enqueue) only deletes an uncommitted
//! record of this process whose job does not exist. Records past the
//! window are pruned.

use crate::crypto::{hex, sha256};
use fsqueue::durable::{self, DurableError};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Directory under the queue root.
pub const DELIVERIES_DIR: &str = "deliveries";

/// Subdirectory of the deliveries directory with one lock file per live
/// gateway.
pub const OWNERS_DIR: &str = "owners";

/// An uncommitted record of an older gateway (one that named no owner)
/// older than this is taken for an orphan of a crash.
pub const ORPHAN_AGE: Duration = Duration::from_secs(10);

/// Largest record file read back (a record holds at most one job document).
const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

/// One delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub job_id: String,
    /// Queue state the job was enqueued into: `pending` or `awaiting_approval`.
    pub state: String,
    /// SHA-256 of the request body: the same key with a different body is a
    /// client bug, answered 409, never silently merged.
    pub body_sha256: String,
    pub committed: bool,
    pub created_at: String,
    /// The normalised job, kept until committed so a crash can be finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<serde_json::Value>,
    /// The gateway that wrote the record (its lock file in `owners/`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

/// The deliveries directory, and this gateway's ownership of its records.
pub struct Deliveries {
    dir: PathBuf,
    owner: String,
    _owner_lock: Flock<File>,
    /// Copies of each delivery inside claim-enqueue-commit right now.
    in_flight: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries")
            .field("dir", &self.dir)
            .field("owner", &self.owner)
            .finish()
    }
}

/// Whether the writer of an uncommitted record may still be at work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// Its process lives and has the delivery in flight: wait.
    Working,
    /// Proven gone (or, in this process, no longer working on it): finish.
    Gone,
}

/// A held claim on finishing a record (an `flock` on the record file).
pub struct FinishLock {
    _lock: Flock<File>,
}

fn is_owner_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A record file key: hex SHA-256 over a namespace and the key parts,
/// separated by NUL so no two different inputs collide by concatenation.
pub fn key(namespace: &str, parts: &[&[u8]]) -> String {
    let mut buf = namespace.as_bytes().to_vec();
    for p in parts {
        buf.push(0);
        buf.extend_from_slice(p);
    }
    hex(&sha256(&buf))
}

impl Deliveries {
    /// Opens the directory and takes this process's owner lock.
    pub fn open(queue_root: &Path) -> Result<Self, DurableError> {
        let dir = queue_root.join(DELIVERIES_DIR);
        let owners = dir.join(OWNERS_DIR);
        durable::create_dir_all(&owners)?;
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let host: String = host
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(48)
            .collect();
        let owner = format!(
            "{host}-{}-{}",
            std::process::id(),
            fsqueue::name::next_seq()
        );
        // Locked under a temporary name, then renamed into place: the name
        // never exists unlocked while this process lives, so nobody can
        // take it for a dead owner's.
        let lock_path = owners.join(format!("{owner}.lock"));
        let tmp = owners.join(format!(
            "{}{}-0-{owner}",
            durable::TMP_PREFIX,
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&tmp)
            .map_err(|e| DurableError::new("create", &tmp, e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| DurableError::new("flock", &tmp, e.into()))?;
        std::fs::rename(&tmp, &lock_path).map_err(|e| DurableError::new("rename", &tmp, e))?;
        Ok(Self {
            dir,
            owner,
            _owner_lock: lock,
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// This gateway's owner name, written into its records.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Counts a copy of `key` in (before it tries to create the record) or
    /// out (once it committed, released or lost the claim).
    pub fn set_in_flight(&self, key: &str, on: bool) {
        if let Ok(mut map) = self.in_flight.lock() {
            if on {
                *map.entry(key.to_owned()).or_insert(0) += 1;
            } else if let Some(n) = map.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }

    /// Whether the writer of the uncommitted record `rec` under `key` may
    /// still be at work.
    pub fn writer(&self, key: &str, rec: &Record, age: Duration) -> Writer {
        if rec.owner.is_empty() {
            // A record of a gateway that named no owner: age is all there is.
            return if age > ORPHAN_AGE {
                Writer::Gone
            } else {
                Writer::Working
            };
        }
        if rec.owner == self.owner {
            let busy = self.in_flight.lock().map_or(true, |m| m.contains_key(key));
            return if busy { Writer::Working } else { Writer::Gone };
        }
        if owner_alive(&self.dir.join(OWNERS_DIR), &rec.owner) {
            Writer::Working
        } else {
            Writer::Gone
        }
    }

    /// Claims the right to finish `key`'s record: `None` while another
    /// finisher holds it. The caller re-reads the record afterwards (a
    /// finisher before it may have committed it).
    pub fn lock_for_finish(&self, key: &str) -> Result<Option<FinishLock>, DurableError> {
        let path = self.path(key);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DurableError::new("open", &path, e)),
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(FinishLock { _lock: l })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(DurableError::new("flock", &path, e.into())),
        }
    }

    /// Removes the lock files of dead gateways. Returns how many.
    pub fn prune_owners(&self) -> usize {
        let dir = self.dir.join(OWNERS_DIR);
        let mut n = 0;
        for ent in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(name) = ent.file_name().into_string() else {
                continue;
            };
            let Some(owner) = name.strip_suffix(".lock") else {
                continue;
            };
            if owner != self.owner
                && is_owner_name(owner)
                && let Ok(f) = File::open(ent.path())
                && let Ok(_held) = Flock::lock(f, FlockArg::LockExclusiveNonblock)
            {
                // Dead for good: a lock file is only ever locked by the
                // process that created it.
                if std::fs::remove_file(ent.path()).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// Claims `key` with `rec`. `Ok(false)` when a record already exists.
    pub fn create(&self, key: &str, rec: &Record) -> Result<bool, DurableError> {
        let bytes = serde_json::to_vec(rec).map_err(|e| {
            DurableError::new("serialize", self.path(key), io::Error::other(e.to_string()))
        })?;
        fsqueue::fault::point("gateway.dedup.creating");
        durable::write_file_new(&self.path(key), &bytes)
    }

    /// Marks a record committed and drops its job copy.
    pub fn commit(&self, key: &str, rec: &Record) -> Result<(), DurableError> {
        let done = Record {
            committed: true,
            job: None,
            ..rec.clone()
        };
        let bytes = serde_json::to_vec(&done).map_err(|e| {
            DurableError::new("serialize", self.path(key), io::Error::other(e.to_string()))
        })?;
        fsqueue::fault::point("gateway.dedup.committing");
        durable::write_file(&self.path(key), &bytes)
    }

    /// Removes this process's uncommitted claim on `key` for `job_id` (its
    /// job could not be enqueued), so a retry can start over. Anything else
    /// at the name (a committed record, another job's) is left alone;
    /// `Ok(false)` then.
    pub fn release(&self, key: &str, job_id: &str) -> Result<bool, DurableError> {
        match self.read(key)? {
            Some((r, _)) if !r.committed && r.owner == self.owner && r.job_id == job_id => {
                durable::remove_file(&self.path(key))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The record and its age, `None` when there is none. An unreadable
    /// record (torn by a crash mid-create cannot happen — creates are
    /// atomic — but a hand-edited one can) is an error.
    pub fn read(&self, key: &str) -> Result<Option<(Record, Duration)>, DurableError> {
        let path = self.path(key);
        read_record(&path)
    }

    /// Uncommitted records whose writer is gone, for recovery.
    pub fn orphans(&self) -> Vec<(String, Record)> {
        self.scan()
            .filter_map(|(key, path)| match read_record(&path) {
                Ok(Some((r, age)))
                    if !r.committed && self.writer(&key, &r, age) == Writer::Gone =>
                {
                    Some((key, r))
                }
                _ => None,
            })
            .collect()
    }

    /// Deletes committed records older than `window`. Returns how many.
    pub fn prune(&self, window: Duration) -> usize {
        let now = SystemTime::now();
        let mut n = 0;
        for (_, path) in self.scan() {
            let old = std::fs::symlink_metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > window);
            if old && durable::remove_file(&path).is_ok() {
                n += 1;
            }
        }
        n
    }

    fn scan(&self) -> impl Iterator<Item = (String, PathBuf)> + '_ {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let key = name.strip_suffix(".json")?;
                (key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| (key.to_owned(), e.path()))
            })
    }
}

/// Whether the owner `owner` holds its lock in `dir`. A missing or
/// malformed lock file is a dead owner; an unexpected error counts as alive
/// (waiting is safe, finishing a live writer's work is not).
fn owner_alive(dir: &Path, owner: &str) -> bool {
    if !is_owner_name(owner) {
        return false;
    }
    let path = dir.join(format!("{owner}.lock"));
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_probe) => false,
        Err(_) => true,
    }
}

fn read_record(path: &Path) -> Result<Option<(Record, Duration)>, DurableError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DurableError::new("open", path, e)),
    };
    let age = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| DurableError::new("read", path, e))?;
    let rec = serde_json::from_slice(&bytes).map_err(|e| {
        DurableError::new(
            "parse",
            path,
            io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        )
    })?;
    Ok(Some((rec, age)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_commit_release() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Deliveries::open(tmp.path()).unwrap();
        let k = key("idem", &[b"tok", b"abc"]);
        assert_ne!(k, key("idem", &[b"toka", b"bc"]));
        let rec = Record {
            job_id: "0123456789abcdef0123456789abcdef".into(),
            state: "pending".into(),
            body_sha256: "x".into(),
            committed: false,
            created_at: "now".into(),
            job: Some(serde_json::json!({"goal": "g"})),
            owner: d.owner().to_owned(),
        };
        assert!(d.create(&k, &rec).unwrap());
        assert!(!d.create(&k, &rec).unwrap());
        d.commit(&k, &rec).unwrap();
        let (back, _) = d.read(&k).unwrap().unwrap();
        assert!(back.committed && back.job.is_none());
        assert!(d.orphans().is_empty());
        assert_eq!(d.prune(Duration::from_secs(3600)), 0);
        // A committed record is never released.
        assert!(!d.release(&k, &rec.job_id).unwrap());
        assert!(d.read(&k).unwrap().is_some());
    }

    #[test]
    fn a_writer_is_gone_only_when_its_lock_is_free() {
        let tmp = tempfile::tempdir().unwrap();
        let me = Deliveries::open(tmp.path()).unwrap();
        let other = Deliveries::open(tmp.path()).unwrap();
        let rec = |owner: &str| Record {
            job_id: "0123456789abcdef0123456789abcdef".into(),
            state: "pending".into(),
            body_sha256: "x".into(),
            committed: false,
            created_at: "now".into(),
            job: None,
            owner: owner.into(),
        };
        let hour = Duration::from_secs(3600);
        // Another live gateway's record: working, however old.
        let theirs = rec(other.owner());
        assert_eq!(me.writer("k", &theirs, hour), Writer::Working);
        // This process's: working while a copy is in flight, not after.
        let mine = rec(me.owner());
        me.set_in_flight("k", true);
        me.set_in_flight("k", true);
        me.set_in_flight("k", false);
        assert_eq!(me.writer("k", &mine, hour), Writer::Working);
        me.set_in_flight("k", false);
        assert_eq!(me.writer("k", &mine, Duration::ZERO), Writer::Gone);
        // The other gateway dies: its records are orphans at once, and its
        // lock file can go.
        drop(other);
        assert_eq!(me.writer("k", &theirs, Duration::ZERO), Writer::Gone);
        assert_eq!(me.prune_owners(), 1);
        assert_eq!(me.writer("k", &theirs, Duration::ZERO), Writer::Gone);
        // Unknown or hostile owner names are dead owners, never paths.
        assert_eq!(
            me.writer("k", &rec("../../x"), Duration::ZERO),
            Writer::Gone
        );
        // Records without an owner fall back to their age.
        assert_eq!(me.writer("k", &rec(""), Duration::ZERO), Writer::Working);
        assert_eq!(me.writer("k", &rec(""), hour), Writer::Gone);
        // One finisher at a time.
        let k = key("t", &[b"1"]);
        assert!(me.create(&k, &mine).unwrap());
        let held = me.lock_for_finish(&k).unwrap();
        assert!(held.is_some());
        assert!(me.lock_for_finish(&k).unwrap().is_none());
        drop(held);
        assert!(me.lock_for_finish(&k).unwrap().is_some());
    }
}
