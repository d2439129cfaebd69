//! The sweep's housekeeping: what crashed processes leave behind.
//!
//! * files of dead runners (lock, heartbeat, metrics; `fsqueue::tidy`), so
//!   they leave `/health` and `/metrics`;
//! * operator requests that can no longer be obeyed (their claim ended;
//!   `fsqueue::control`);
//! * orphan temp files (`.orch-tmp-*`) older than ten minutes under the
//!   queue, the artifacts tree and the metrics directory;
//! * quarantine reasons in `corrupt/` whose file never arrived, older than
//!   ten minutes.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Housekeeping {
    pub queue: fsqueue::Queue,
    pub artifacts_root: PathBuf,
    pub metrics_dir: PathBuf,
    pub lease: Duration,
}

/// What one pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tidied {
    pub dead_runners: Vec<String>,
    pub requests: usize,
    pub temps: usize,
    pub reasons: usize,
}

impl Housekeeping {
    pub fn run(&self) -> Tidied {
        let dead_runners =
            fsqueue::tidy::prune_dead_runners(&self.queue, Some(&self.metrics_dir), self.lease);
        let requests = self.queue.prune_requests();
        // Queue: files in the root and in each directory under it; the
        // artifacts tree: down to artifacts/<job>/steps/<step>/<file>.
        let temps = fsqueue::tidy::remove_orphan_temps(
            &[
                (self.queue.root(), 2),
                (&self.artifacts_root, 4),
                (&self.metrics_dir, 1),
            ],
            fsqueue::recover::STALE_TEMP_AGE,
        );
        let reasons =
            fsqueue::tidy::remove_orphan_reasons(&self.queue, fsqueue::recover::STALE_TEMP_AGE);
        Tidied {
            dead_runners,
            requests,
            temps,
            reasons,
        }
    }
}
