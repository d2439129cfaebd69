//! Start-up recovery: bring the queue directory back to a state where every
//! file is a valid job in exactly one place.
//!
//! * temp files left by a crash mid-write (older than `STALE_TEMP_AGE`, so
//!   writes in progress by live processes are left alone) are removed;
//! * files whose name is not a queue entry, or whose content the caller's
//!   validator refuses (torn JSON, schema violations), go to `corrupt/` with
//!   a `.reason` file. The validator checks structure only (parse and
//!   shape): whether this host can run a job's agents is not recovery's
//!   business, a runner that knows them may share the queue;
//! * a running file whose owner is alive (its runner holds its lock here,
//!   or, with no lock file on this host, another host may run it) is never
//!   touched: its owner is working on it, and the reaper judges its lease;
//! * a job present in several state directories (a crash inside the
//!   link+unlink fallback of a no-replace rename, or an operator's copy)
//!   keeps only its highest-precedence copy; the others go to `corrupt/`.

use crate::durable;
use crate::name::Entry;
use crate::queue::{Queue, QueueError, Result, State, TMP_DIR};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Temp files younger than this may belong to a write in progress.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(600);

/// Largest job file recovery will read; bigger ones are quarantined.
pub const MAX_JOB_FILE_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub temp_removed: usize,
    pub quarantined: Vec<(PathBuf, String)>,
    pub checked: usize,
    /// Running files left alone because their owner is (or may be) alive.
    pub skipped_live: usize,
}

/// Runs recovery. `validate` checks a job document's bytes and returns a
/// human-readable reason when it is unusable.
pub fn recover(
    queue: &Queue,
    validate: &dyn Fn(&[u8]) -> std::result::Result<(), String>,
) -> Result<RecoveryReport> {
    crate::fault::point("queue.recover.begun");
    let mut report = RecoveryReport::default();
    let now = SystemTime::now();

    let mut dirs: Vec<PathBuf> = State::ALL.iter().map(|s| queue.dir(*s)).collect();
    dirs.push(queue.internal_dir(TMP_DIR));
    for dir in &dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for ent in rd.flatten() {
            let name = ent.file_name();
            let name = name.to_string_lossy();
            let in_tmp_dir = dir.ends_with(TMP_DIR);
            if !(durable::is_temp_name(&name) || in_tmp_dir) {
                continue;
            }
            let stale = ent
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= STALE_TEMP_AGE);
            if stale && durable::remove_file(&ent.path()).is_ok() {
                report.temp_removed += 1;
            }
        }
    }

    // Validate live jobs; terminal ones are history and only name-checked.
    // Copies of each job: state, path, and whether a live owner holds it.
    let mut seen: HashMap<String, Vec<(State, PathBuf, bool)>> = HashMap::new();
    for st in State::ALL {
        let dir = queue.dir(st);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for ent in rd.flatten() {
            let path = ent.path();
            let Ok(name) = ent.file_name().into_string() else {
                report.quarantine(queue, path, "file name is not valid UTF-8");
                continue;
            };
            if durable::is_temp_name(&name) {
                continue;
            }
            let Some(entry) = Entry::parse(&name) else {
                report.quarantine(queue, path, "file name is not a queue entry");
                continue;
            };
            if (st == State::Running) != entry.runner.is_some() {
                report.quarantine(
                    queue,
                    path,
                    "owner part of the name does not match the state",
                );
                continue;
            }
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(_) => continue, // moved meanwhile by a live process
            };
            // Live work is its owner's: no content check, no quarantine,
            // not even as a duplicate (the owner may be mid-move).
            if let Some(runner) = &entry.runner
                && crate::lease::liveness(queue, runner) != crate::lease::Liveness::Dead
            {
                report.skipped_live += 1;
                // Still counted as a copy: a stray pending copy of live
                // work must not run a second time.
                seen.entry(entry.job_id).or_default().push((st, path, true));
                continue;
            }
            if !meta.file_type().is_file() {
                report.quarantine(queue, path, "not a regular file (symlink or directory)");
                continue;
            }
            if !st.is_terminal() {
                report.checked += 1;
                if meta.len() > MAX_JOB_FILE_BYTES {
                    report.quarantine(queue, path, "job file larger than 8 MiB");
                    continue;
                }
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        if let Err(reason) = validate(&bytes) {
                            report.quarantine(queue, path, &format!("invalid job: {reason}"));
                            continue;
                        }
                    }
                    Err(_) => continue,
                }
            }
            seen.entry(entry.job_id)
                .or_default()
                .push((st, path, false));
        }
    }

    for (_job, mut copies) in seen {
        if copies.len() < 2 {
            continue;
        }
        copies.sort_by_key(|(st, _, _)| std::cmp::Reverse(st.precedence()));
        let keep = copies[0].0;
        for (st, path, live) in copies.into_iter().skip(1) {
            if live {
                // Its owner is working on it: never taken from under it.
                continue;
            }
            report.quarantine(
                queue,
                path,
                &format!("duplicate: the same job is also in {keep}/ (kept there), this copy was in {st}/"),
            );
        }
    }
    Ok(report)
}

impl RecoveryReport {
    fn quarantine(&mut self, queue: &Queue, path: PathBuf, reason: &str) {
        match queue.quarantine(&path, reason) {
            Ok(_) => self.quarantined.push((path, reason.to_owned())),
            // Moved meanwhile by a live process (a runner claiming while
            // another one recovers): not a problem, nothing to quarantine.
            Err(QueueError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(file = %path.display(), "moved before it could be quarantined");
            }
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "could not quarantine"),
        }
    }
}
