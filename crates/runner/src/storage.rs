//! Storage faults: a full (`ENOSPC`, `EDQUOT`) or read-only (`EROFS`)
//! filesystem under the queue, the artifacts or the workspaces, or any
//! error that keeps the runner from recording a job's outcome.
//!
//! Which errors are storage faults is decided by their errno
//! (`crate::error::StorageKind`), never by their text.
//!
//! Such a fault is the runner's problem, not the job's: failing the job
//! would burn the backlog (every claim failing within a second) and leave
//! jobs in `failed/` with no result to say why. Instead:
//!
//! * the job that met it goes back to `pending/` unchanged (no reap
//!   counted) for this or another runner to run once there is room;
//! * the runner **stops claiming** and backs off (1 s, doubling up to 60 s);
//!   after each pause it probes with a real durable write into each root,
//!   and resumes claiming once every probe succeeds;
//! * while it holds back, its heartbeat (`runners/<id>.json`, served by
//!   `/health`) carries `storage_fault` (kind, error, since, probes) and
//!   `claiming: false`; its metrics carry `orch_runner_storage_fault` (1
//!   while holding back) and `orch_storage_faults_total{kind}`.
//!
//! Advisory files (heartbeat, metrics) fall back to an in-place rewrite
//! when the durable write fails, so a full disk can still say why.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// First pause after a fault; doubled after every failed probe.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause between probes.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Fault {
    kind: String,
    error: String,
    since: String,
    probes: u64,
    backoff: Duration,
    next_probe: Instant,
}

/// The runner's storage state, shared by the claim loop, the jobs and the
/// heartbeat.
#[derive(Debug, Default)]
pub struct Storage {
    fault: Mutex<Option<Fault>>,
}

impl Storage {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Fault>> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a fault: the runner stops claiming until a probe succeeds.
    pub fn trip(&self, kind: &str, error: &str) {
        metrics::counter!("orch_storage_faults_total", "kind" => kind.to_owned()).increment(1);
        metrics::gauge!("orch_runner_storage_fault").set(1.0);
        let mut f = self.lock();
        match f.as_mut() {
            Some(f) => {
                f.kind = kind.to_owned();
                f.error = error.to_owned();
            }
            None => {
                tracing::error!(
                    kind,
                    error,
                    "storage fault: no more claims until the disk accepts writes again; jobs go back to pending"
                );
                *f = Some(Fault {
                    kind: kind.to_owned(),
                    error: error.to_owned(),
                    since: contracts::now_rfc3339(),
                    probes: 0,
                    backoff: FIRST_BACKOFF,
                    next_probe: Instant::now() + FIRST_BACKOFF,
                });
            }
        }
    }

    /// `None` when the runner may claim. Otherwise how long to wait before
    /// asking again; when a probe is due it runs here (`roots`: where the
    /// runner writes), clearing the fault on success.
    pub fn hold_claims(&self, roots: &[PathBuf]) -> Option<Duration> {
        let (due, wait) = {
            let f = self.lock();
            let f = f.as_ref()?;
            let now = Instant::now();
            (
                f.next_probe <= now,
                f.next_probe.saturating_duration_since(now),
            )
        };
        if !due {
            return Some(wait);
        }
        let failed = roots.iter().find_map(|r| probe(r).err());
        let mut f = self.lock();
        let cur = f.as_mut()?;
        cur.probes += 1;
        match failed {
            None => {
                tracing::warn!(
                    kind = %cur.kind,
                    since = %cur.since,
                    "storage writable again; claiming resumes"
                );
                *f = None;
                metrics::gauge!("orch_runner_storage_fault").set(0.0);
                None
            }
            Some(e) => {
                cur.backoff = (cur.backoff * 2).min(MAX_BACKOFF);
                cur.next_probe = Instant::now() + cur.backoff;
                if let Some(kind) = crate::error::StorageKind::of(&e.source) {
                    cur.kind = kind.as_str().to_owned();
                }
                cur.error = e.to_string();
                tracing::warn!(kind = %cur.kind, error = %cur.error, retry_in_ms = cur.backoff.as_millis() as u64, "storage still failing");
                Some(cur.backoff)
            }
        }
    }

    /// Whether the runner is holding back.
    pub fn faulted(&self) -> bool {
        self.lock().is_some()
    }

    /// The heartbeat's view: `null` when healthy.
    pub fn doc(&self) -> Value {
        match self.lock().as_ref() {
            None => Value::Null,
            Some(f) => json!({
                "kind": f.kind,
                "error": f.error,
                "since": f.since,
                "probes": f.probes,
            }),
        }
    }
}

/// A real durable write and removal under `root`.
fn probe(root: &Path) -> Result<(), fsqueue::durable::DurableError> {
    // A temp name: if a crash leaves it, the sweep removes it.
    let p = root.join(format!(
        "{}probe-{}",
        fsqueue::durable::TMP_PREFIX,
        std::process::id()
    ));
    fsqueue::durable::write_file(&p, &[b'x'; 4096])?;
    fsqueue::durable::remove_file(&p)
}

/// Writes an advisory file (heartbeat, metrics): atomically (no barrier:
/// nothing depends on it surviving a crash) when possible,
/// else rewritten in place (no new blocks needed for a file of similar
/// size), so a full disk can still report itself.
pub fn write_advisory(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match fsqueue::durable::write_file_advisory(path, bytes) {
        Ok(()) => Ok(()),
        Err(e) if path.exists() => {
            tracing::debug!(error = %e, "durable write failed; rewriting in place");
            std::fs::write(path, bytes)
        }
        Err(e) => Err(e.source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_holds_claims_until_a_probe_succeeds() {
        let d = tempfile::tempdir().unwrap();
        let s = Storage::default();
        assert!(s.hold_claims(&[d.path().to_path_buf()]).is_none());
        s.trip("ENOSPC", "no space");
        assert!(s.faulted());
        assert_eq!(s.doc()["kind"], "ENOSPC");
        // A root that cannot be written keeps it held.
        let missing = d.path().join("missing/dir");
        {
            let mut f = s.lock();
            f.as_mut().unwrap().next_probe = Instant::now();
        }
        assert!(s.hold_claims(std::slice::from_ref(&missing)).is_some());
        assert_eq!(s.doc()["probes"], 1);
        {
            let mut f = s.lock();
            f.as_mut().unwrap().next_probe = Instant::now();
        }
        assert!(s.hold_claims(&[d.path().to_path_buf()]).is_none());
        assert!(!s.faulted());
        assert_eq!(s.doc(), Value::Null);
    }
}
