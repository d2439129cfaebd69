//! Temporary files a killed gateway leaves behind.
//!
//! Every durable write stages a temporary file named
//! `.orch-tmp-<pid>-<n>-<name>` beside its destination; a gateway killed
//! between that write and the rename leaves it there (in `pending/`,
//! `awaiting_approval/`, `deliveries/`). Nothing refers to such a file:
//! the job it would have been is finished from its delivery record, or was
//! never acknowledged. A temporary file is removed once the process named
//! in it no longer exists on this host and the file is older than
//! [`MIN_AGE`] (a writer on another host sharing the queue may have the
//! same pid number; none keeps a temporary file that long).

use fsqueue::durable;
use fsqueue::{Queue, State};
use std::time::{Duration, SystemTime};

/// How often the sweep runs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Youngest temporary file removed.
pub const MIN_AGE: Duration = Duration::from_secs(10);

/// The pid in a temporary file's name.
fn writer_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(durable::TMP_PREFIX)?;
    let digits = rest.split('-').next()?;
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|p| *p > 0)
}

/// Whether no process with `pid` exists on this host.
fn dead(pid: i32) -> bool {
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Removes the temporary files of dead writers from the directories the
/// gateway writes into. Returns how many.
pub fn sweep_temp_files(queue: &Queue) -> usize {
    let dirs = [
        queue.dir(State::Pending),
        queue.dir(State::AwaitingApproval),
        queue.root().join(crate::dedup::DELIVERIES_DIR),
        queue
            .root()
            .join(crate::dedup::DELIVERIES_DIR)
            .join(crate::dedup::OWNERS_DIR),
    ];
    let now = SystemTime::now();
    let mut n = 0;
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for ent in rd.flatten() {
            let Ok(name) = ent.file_name().into_string() else {
                continue;
            };
            let Some(pid) = writer_pid(&name) else {
                continue;
            };
            // symlink_metadata: a planted symlink is judged (and removed)
            // as itself, never followed.
            let old = std::fs::symlink_metadata(ent.path())
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= MIN_AGE);
            if old && dead(pid) && durable::remove_file(&ent.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_from_temp_names() {
        assert_eq!(writer_pid(".orch-tmp-123-4-5-x~0.0.json"), Some(123));
        assert_eq!(writer_pid(".orch-tmp--4-x"), None);
        assert_eq!(writer_pid(".orch-tmp-0-4-x"), None);
        assert_eq!(writer_pid(".orch-tmp-99999999999-4-x"), None);
        assert_eq!(writer_pid("5-123-job~0.0.json"), None);
        assert!(!dead(std::process::id() as i32));
    }
}
