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
//! Finding the records of dead writers must not cost a read of every
//! record (there is one per delivery of the whole dedup window). Each
//! gateway keeps an index of its unfinished records: `owners/<owner>.keys/`
//! holds an empty file per key it claimed and has not committed yet. The
//! index entry is created before the record, and the record's data barrier
//! covers the index directory, so no record of an owner reaches the disk
//! without its index entry; committing a record (whoever commits it) drops
//! the entry, and so does a release or a lost claim. An entry may outlive
//! its record's need for it (a crash right after the commit): an entry
//! whose record is committed, absent or someone else's is stale and simply
//! removed. A dead gateway is one whose lock is free (or whose lock file is
//! gone while its index is still there); recovery reads its index — the
//! deliveries it had in flight when it died, a handful — and finishes each
//! record with the same `resolve` a retry runs, then drops the index and
//! the lock file. The cost of start-up is therefore the number of dead
//! writers' unfinished records, never the history. A dead gateway of an
//! older version kept no index (its lock file has no `.keys` directory):
//! its records are found by a one-time scan of all records, in the
//! background. Recovery is only an optimisation of liveness, never needed
//! for safety: a retry of a delivery finishes its record itself, whether
//! or not recovery got there first (one finisher at a time, see above),
//! and a 202 is never sent before the job file is durable.
//!
//! Pruning (records past the window) walks the directory in bounded
//! batches, outside any lock a request takes, after the gateway has been
//! serving for a while: no request ever waits for it.
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
/// gateway (`<owner>.lock`) and each gateway's index of unfinished records
/// (`<owner>.keys/`).
pub const OWNERS_DIR: &str = "owners";

/// Suffix of an owner's index directory in `owners/`.
pub const KEYS_SUFFIX: &str = ".keys";

/// Directory entries one prune batch looks at.
pub const PRUNE_BATCH: usize = 512;

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
        // The index comes after the lock: an index directory without a
        // lock file is always a dead owner's.
        durable::create_dir_all(&owners.join(format!("{owner}{KEYS_SUFFIX}")))?;
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

    /// The gateways that died (their lock is free, or their lock file is
    /// gone while their index is left), this one aside. Reads `owners/`
    /// only: one entry per gateway not yet forgotten.
    pub fn dead_owners(&self) -> Vec<DeadOwner> {
        let dir = self.dir.join(OWNERS_DIR);
        let mut locks = std::collections::BTreeSet::new();
        let mut indexes = std::collections::BTreeSet::new();
        for ent in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(name) = ent.file_name().into_string() else {
                continue;
            };
            if let Some(o) = name.strip_suffix(".lock") {
                locks.insert(o.to_owned());
            } else if let Some(o) = name.strip_suffix(KEYS_SUFFIX) {
                indexes.insert(o.to_owned());
            }
        }
        locks
            .union(&indexes)
            .filter(|o| *o != &self.owner && is_owner_name(o) && !owner_alive(&dir, o))
            .map(|o| DeadOwner {
                name: o.clone(),
                indexed: indexes.contains(o),
            })
            .collect()
    }

    /// The keys a dead owner's index names: the records it may have left
    /// unfinished.
    pub fn unfinished_of(&self, owner: &str) -> Vec<String> {
        if !is_owner_name(owner) {
            return Vec::new();
        }
        let dir = self
            .dir
            .join(OWNERS_DIR)
            .join(format!("{owner}{KEYS_SUFFIX}"));
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|k| is_record_key(k))
            .collect()
    }

    /// Drops `owner`'s index entry for `key`, whose record needs no
    /// finishing by it (committed, absent, or another writer's).
    pub fn drop_stale(&self, owner: &str, key: &str) {
        self.drop_index_entry(owner, key);
    }

    /// Forgets a dead owner whose index is empty: its lock file, then its
    /// index directory (a crash between the two leaves an index without a
    /// lock: still a dead owner, found again). `false` while its index
    /// still names records, or when `owner` lives.
    pub fn forget_owner(&self, owner: &str) -> bool {
        let dir = self.dir.join(OWNERS_DIR);
        if owner == self.owner || !is_owner_name(owner) || owner_alive(&dir, owner) {
            return false;
        }
        if !self.unfinished_of(owner).is_empty() {
            return false;
        }
        let lock = dir.join(format!("{owner}.lock"));
        let index = dir.join(format!("{owner}{KEYS_SUFFIX}"));
        if durable::remove_file(&lock).is_err() {
            return false;
        }
        match std::fs::remove_dir(&index) {
            Ok(()) => durable::sync_dirs(&[&dir]).is_ok(),
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The index entry of `owner` for `key` (`None` for a record that
    /// names no owner, or a malformed one).
    fn index_entry(&self, owner: &str, key: &str) -> Option<PathBuf> {
        is_owner_name(owner).then(|| {
            self.dir
                .join(OWNERS_DIR)
                .join(format!("{owner}{KEYS_SUFFIX}"))
                .join(key)
        })
    }

    /// Claims `key` with `rec`. `Ok(false)` when a record already exists.
    /// The owner's index entry is created first and reaches the disk with
    /// the record's data barrier.
    pub fn create(&self, key: &str, rec: &Record) -> Result<bool, DurableError> {
        let bytes = serde_json::to_vec(rec).map_err(|e| {
            DurableError::new("serialize", self.path(key), io::Error::other(e.to_string()))
        })?;
        let entry = self.index_entry(&rec.owner, key);
        let mut made_entry = false;
        if let Some(e) = &entry {
            made_entry = match durable::create_empty_unsynced(e) {
                Ok(made) => made,
                // The index directory was removed by hand: make it again.
                Err(err) if err.source.kind() == io::ErrorKind::NotFound => {
                    if let Some(dir) = e.parent() {
                        durable::create_dir_all(dir)?;
                    }
                    durable::create_empty_unsynced(e)?
                }
                Err(err) => return Err(err),
            };
        }
        let index: Vec<&Path> = entry
            .as_deref()
            .and_then(Path::parent)
            .into_iter()
            .collect();
        fsqueue::fault::point("gateway.dedup.creating");
        let placed = durable::write_file_new_after(&self.path(key), &bytes, &index);
        if made_entry && !matches!(placed, Ok(true)) {
            // Lost the claim (or failed): the entry is ours to drop unless
            // the record there is an unfinished one of the same owner (a
            // second copy in this process won it).
            let keep = matches!(
                self.read(key),
                Ok(Some((r, _))) if !r.committed && r.owner == rec.owner
            );
            if !keep && let Some(e) = &entry {
                let _ = std::fs::remove_file(e);
            }
        }
        placed
    }

    /// Drops the index entry of a record that no longer needs finishing.
    /// No barrier: an entry that comes back after a power loss is stale,
    /// and recovery removes it.
    fn drop_index_entry(&self, owner: &str, key: &str) {
        if let Some(e) = self.index_entry(owner, key) {
            let _ = std::fs::remove_file(e);
        }
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
        durable::write_file(&self.path(key), &bytes)?;
        self.drop_index_entry(&rec.owner, key);
        Ok(())
    }

    /// Removes this process's uncommitted claim on `key` for `job_id` (its
    /// job could not be enqueued), so a retry can start over. Anything else
    /// at the name (a committed record, another job's) is left alone;
    /// `Ok(false)` then.
    pub fn release(&self, key: &str, job_id: &str) -> Result<bool, DurableError> {
        match self.read(key)? {
            Some((r, _)) if !r.committed && r.owner == self.owner && r.job_id == job_id => {
                durable::remove_file(&self.path(key))?;
                self.drop_index_entry(&r.owner, key);
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

    /// Uncommitted records whose writer is gone, found by reading every
    /// record: only for dead gateways of an older version, which kept no
    /// index of their unfinished records.
    pub fn scan_orphans(&self) -> Vec<(String, Record)> {
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

    /// Removes the lock files of dead gateways that kept no index (once
    /// their records were scanned). Returns how many.
    pub fn prune_unindexed_owners(&self) -> usize {
        let dir = self.dir.join(OWNERS_DIR);
        self.dead_owners()
            .into_iter()
            .filter(|o| !o.indexed)
            .filter(|o| durable::remove_file(&dir.join(format!("{}.lock", o.name))).is_ok())
            .count()
    }

    /// One bounded step of pruning: looks at up to [`PRUNE_BATCH`] names
    /// of the deliveries directory (from where the previous step of the
    /// same `walk` stopped; `None` starts a new pass) and deletes the
    /// records among them older than `window`, with one name barrier for
    /// the batch. Reads no record: only names and modification times.
    pub fn prune_step(&self, walk: &mut Option<std::fs::ReadDir>, window: Duration) -> PruneStep {
        let mut step = PruneStep::default();
        if walk.is_none() {
            match std::fs::read_dir(&self.dir) {
                Ok(rd) => *walk = Some(rd),
                Err(_) => {
                    step.done = true;
                    return step;
                }
            }
        }
        let now = SystemTime::now();
        let Some(rd) = walk.as_mut() else {
            step.done = true;
            return step;
        };
        while step.looked < PRUNE_BATCH {
            let Some(ent) = rd.next() else {
                step.done = true;
                break;
            };
            step.looked += 1;
            let Ok(ent) = ent else { continue };
            let Some(name) = ent.file_name().into_string().ok() else {
                continue;
            };
            if !name.strip_suffix(".json").is_some_and(is_record_key) {
                continue;
            }
            let old = ent
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > window);
            if old && std::fs::remove_file(ent.path()).is_ok() {
                step.removed += 1;
            }
        }
        if step.removed > 0 {
            let _ = durable::sync_dirs(&[&self.dir]);
        }
        if step.done {
            *walk = None;
        }
        step
    }

    /// Deletes records older than `window` in one go (all steps of a
    /// pass). Returns how many.
    pub fn prune(&self, window: Duration) -> usize {
        let mut walk = None;
        let mut n = 0;
        loop {
            let step = self.prune_step(&mut walk, window);
            n += step.removed;
            if step.done {
                return n;
            }
        }
    }

    fn scan(&self) -> impl Iterator<Item = (String, PathBuf)> + '_ {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let key = name.strip_suffix(".json")?;
                is_record_key(key).then(|| (key.to_owned(), e.path()))
            })
    }
}

/// A record file's key: 64 hex digits.
fn is_record_key(k: &str) -> bool {
    k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A gateway that died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadOwner {
    pub name: String,
    /// Whether it kept an index of its unfinished records (all gateways of
    /// this version do).
    pub indexed: bool,
}

/// What one prune step did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PruneStep {
    /// Directory entries looked at (at most [`PRUNE_BATCH`]).
    pub looked: usize,
    pub removed: usize,
    /// The pass reached the end of the directory.
    pub done: bool,
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
        assert!(d.scan_orphans().is_empty());
        // The commit dropped the index entry.
        assert!(d.unfinished_of(d.owner()).is_empty());
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
        let dead = me.dead_owners();
        assert_eq!(
            dead,
            vec![DeadOwner {
                name: theirs.owner.clone(),
                indexed: true
            }]
        );
        assert!(me.forget_owner(&theirs.owner));
        assert!(me.dead_owners().is_empty());
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

    #[test]
    fn a_dead_owners_unfinished_records_are_found_from_its_index_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let me = Deliveries::open(tmp.path()).unwrap();
        let other = Deliveries::open(tmp.path()).unwrap();
        let rec = |owner: &str, n: u8| Record {
            job_id: format!("{:032x}", n),
            state: "pending".into(),
            body_sha256: "x".into(),
            committed: false,
            created_at: "now".into(),
            job: None,
            owner: owner.into(),
        };
        let (k1, k2, k3) = (key("t", &[b"1"]), key("t", &[b"2"]), key("t", &[b"3"]));
        // Two claims of the other gateway; one is committed.
        assert!(other.create(&k1, &rec(other.owner(), 1)).unwrap());
        assert!(other.create(&k2, &rec(other.owner(), 2)).unwrap());
        other.commit(&k2, &rec(other.owner(), 2)).unwrap();
        // A lost claim leaves no entry behind.
        assert!(!me.create(&k1, &rec(me.owner(), 3)).unwrap());
        assert!(me.unfinished_of(me.owner()).is_empty());
        assert!(me.create(&k3, &rec(me.owner(), 3)).unwrap());
        let name = other.owner().to_owned();
        // Alive: not dead, cannot be forgotten.
        assert!(me.dead_owners().is_empty());
        assert!(!me.forget_owner(&name));
        drop(other);
        assert_eq!(me.dead_owners().len(), 1);
        assert_eq!(me.unfinished_of(&name), vec![k1.clone()]);
        // Not forgotten while a record is unfinished.
        assert!(!me.forget_owner(&name));
        me.commit(&k1, &rec(&name, 1)).unwrap();
        assert!(me.forget_owner(&name));
        assert!(me.dead_owners().is_empty());
        // This gateway's own entry is untouched.
        assert_eq!(me.unfinished_of(me.owner()), vec![k3]);
        // An index directory removed by hand is made again by the next claim.
        let mine = tmp
            .path()
            .join(DELIVERIES_DIR)
            .join(OWNERS_DIR)
            .join(format!("{}{KEYS_SUFFIX}", me.owner()));
        std::fs::remove_dir_all(&mine).unwrap();
        let k4 = key("t", &[b"4"]);
        assert!(me.create(&k4, &rec(me.owner(), 4)).unwrap());
        assert_eq!(me.unfinished_of(me.owner()), vec![k4]);
    }

    #[test]
    fn pruning_goes_in_bounded_steps() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Deliveries::open(tmp.path()).unwrap();
        let dir = tmp.path().join(DELIVERIES_DIR);
        let n = PRUNE_BATCH * 2 + 7;
        let old = SystemTime::now() - Duration::from_secs(7200);
        for i in 0..n {
            let p = dir.join(format!("{}.json", key("p", &[i.to_string().as_bytes()])));
            std::fs::write(&p, b"{}").unwrap();
            if i % 2 == 0 {
                File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
        }
        let mut walk = None;
        let (mut steps, mut removed) = (0, 0);
        loop {
            let s = d.prune_step(&mut walk, Duration::from_secs(3600));
            assert!(s.looked <= PRUNE_BATCH);
            steps += 1;
            removed += s.removed;
            if s.done {
                break;
            }
        }
        assert!(steps >= 3, "{steps} steps");
        assert_eq!(removed, n.div_ceil(2));
        assert_eq!(d.prune(Duration::from_secs(3600)), 0);
    }
}
