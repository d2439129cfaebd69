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
//! 4. a loser reads the record: committed → the original job id; not yet
//!    committed → it waits for the winner, and if the record is older than
//!    [`ORPHAN_AGE`] (the winner crashed between claim and enqueue) it
//!    finishes the winner's work from the job document in the record.
//!
//! A crash at any point therefore loses nothing: either no record exists
//! (nothing was acknowledged; the sender's retry starts over) or the record
//! holds everything needed to finish. Records past the window are pruned.

use crate::crypto::{hex, sha256};
use fsqueue::durable::{self, DurableError};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Directory under the queue root.
pub const DELIVERIES_DIR: &str = "deliveries";

/// An uncommitted record older than this is an orphan of a crash.
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
}

/// The deliveries directory.
#[derive(Debug, Clone)]
pub struct Deliveries {
    dir: PathBuf,
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
    pub fn open(queue_root: &Path) -> Result<Self, DurableError> {
        let dir = queue_root.join(DELIVERIES_DIR);
        durable::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// Claims `key` with `rec`. `Ok(false)` when a record already exists.
    pub fn create(&self, key: &str, rec: &Record) -> Result<bool, DurableError> {
        let bytes = serde_json::to_vec(rec).map_err(|e| {
            DurableError::new("serialize", self.path(key), io::Error::other(e.to_string()))
        })?;
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
        durable::write_file(&self.path(key), &bytes)
    }

    /// Removes a claim whose job could not be enqueued, so a retry can
    /// start over.
    pub fn release(&self, key: &str) -> Result<(), DurableError> {
        durable::remove_file(&self.path(key))
    }

    /// The record and its age, `None` when there is none. An unreadable
    /// record (torn by a crash mid-create cannot happen — creates are
    /// atomic — but a hand-edited one can) is an error.
    pub fn read(&self, key: &str) -> Result<Option<(Record, Duration)>, DurableError> {
        let path = self.path(key);
        read_record(&path)
    }

    /// Uncommitted records older than [`ORPHAN_AGE`], for recovery.
    pub fn orphans(&self) -> Vec<(String, Record)> {
        self.scan()
            .filter_map(|(key, path)| match read_record(&path) {
                Ok(Some((r, age))) if !r.committed && age > ORPHAN_AGE => Some((key, r)),
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
        };
        assert!(d.create(&k, &rec).unwrap());
        assert!(!d.create(&k, &rec).unwrap());
        d.commit(&k, &rec).unwrap();
        let (back, _) = d.read(&k).unwrap().unwrap();
        assert!(back.committed && back.job.is_none());
        assert!(d.orphans().is_empty());
        assert_eq!(d.prune(Duration::from_secs(3600)), 0);
        d.release(&k).unwrap();
        assert!(d.read(&k).unwrap().is_none());
    }
}
