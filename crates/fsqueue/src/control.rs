//! Control requests: an operator's message to the runner that owns a job
//! (today only `cancel`).
//!
//! A request belongs to **one claim**. Its name carries the attempt number of
//! the running file it was written for, `control/{job_id}~{attempt}.{what}`,
//! and only the runner holding that attempt obeys it. A request that nobody
//! consumed (its runner died, or finished first, or an operator unlocked the
//! job) can therefore never stop a later attempt: after `orch retry` the
//! next claim has a higher attempt number. Stale requests are also removed:
//! by the runner when it claims the job, by `retry`, and by the scheduler's
//! sweep ([`Queue::prune_requests`]) once their attempt is no longer running.
//!
//! Names of the older form `{job_id}.{what}` (no attempt) are never obeyed
//! and are removed like any other stale request.

use crate::durable;
use crate::name::is_valid_job_id;
use crate::queue::{CONTROL_DIR, Located, Queue, QueueError, Result, State, read_names};

/// A parsed control file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub job_id: String,
    /// `None` for the old form without an attempt (never obeyed).
    pub attempt: Option<u32>,
    pub what: String,
}

impl Request {
    /// Parses `{job_id}~{attempt}.{what}` or the old `{job_id}.{what}`.
    pub fn parse(name: &str) -> Option<Self> {
        let (stem, what) = name.rsplit_once('.')?;
        if !is_valid_what(what) {
            return None;
        }
        let (job_id, attempt) = match stem.rsplit_once('~') {
            Some((id, n)) => {
                if n.is_empty() || n.len() > 9 || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (id, Some(n.parse().ok()?))
            }
            None => (stem, None),
        };
        if !is_valid_job_id(job_id) {
            return None;
        }
        Some(Self {
            job_id: job_id.to_owned(),
            attempt,
            what: what.to_owned(),
        })
    }
}

fn is_valid_what(what: &str) -> bool {
    !what.is_empty() && what.len() <= 16 && what.bytes().all(|b| b.is_ascii_lowercase())
}

impl Queue {
    fn request_path(&self, loc: &Located, what: &str) -> std::path::PathBuf {
        self.internal_dir(CONTROL_DIR)
            .join(format!("{}~{}.{what}", loc.entry.job_id, loc.entry.attempt))
    }

    /// Writes a control request (`what`, e.g. `cancel`) for the claim `loc`
    /// (a job found in `running/`). Only the runner holding that very claim
    /// will see it.
    pub fn request(&self, loc: &Located, what: &str) -> Result<()> {
        if !is_valid_job_id(&loc.entry.job_id) {
            return Err(QueueError::BadJobId(
                loc.entry.job_id.chars().take(80).collect(),
            ));
        }
        if !is_valid_what(what) {
            return Err(QueueError::BadJobId(format!("request {what:?}")));
        }
        durable::write_file(&self.request_path(loc, what), b"")?;
        crate::fault::point("queue.control.requested");
        Ok(())
    }

    /// Whether a control request exists for the claim `loc` (and consumes it
    /// when `take`). Requests written for other attempts are not seen.
    pub fn has_request(&self, loc: &Located, what: &str, take: bool) -> bool {
        let p = self.request_path(loc, what);
        let exists = p.exists();
        if exists && take {
            let _ = durable::remove_file(&p);
        }
        exists
    }

    /// Removes the requests of `job_id` written for attempts up to `upto`
    /// (all of them with `None`), and any of the old form. Called when a job
    /// is claimed (with the attempt before the claim) and retried. Returns
    /// how many were removed.
    pub fn clear_requests(&self, job_id: &str, upto: Option<u32>) -> usize {
        let Ok(names) = read_names(&self.internal_dir(CONTROL_DIR)) else {
            return 0;
        };
        let mut n = 0;
        for name in names {
            let Some(r) = Request::parse(&name) else {
                continue;
            };
            let stale = r.job_id == job_id
                && match (r.attempt, upto) {
                    (None, _) | (_, None) => true,
                    (Some(a), Some(max)) => a <= max,
                };
            if stale && durable::remove_file(&self.internal_dir(CONTROL_DIR).join(&name)).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Removes every request that can no longer be obeyed: its job is not in
    /// `running/` under the request's attempt (the attempt ended, or the job
    /// is gone), plus files whose names are not requests at all. A request
    /// is only ever written after its attempt was seen running, and an
    /// attempt never runs again once it left `running/`, so nothing live is
    /// lost. Returns how many files were removed.
    pub fn prune_requests(&self) -> usize {
        let dir = self.internal_dir(CONTROL_DIR);
        let Ok(names) = read_names(&dir) else {
            return 0;
        };
        if names.is_empty() {
            return 0;
        }
        // One listing of running/ serves every request.
        let running: std::collections::HashSet<(String, u32)> = self
            .list(State::Running)
            .unwrap_or_default()
            .into_iter()
            .map(|l| (l.entry.job_id, l.entry.attempt))
            .collect();
        let mut n = 0;
        for name in names {
            let live = Request::parse(&name).is_some_and(|r| {
                r.attempt
                    .is_some_and(|a| running.contains(&(r.job_id.clone(), a)))
            });
            if !live && durable::remove_file(&dir.join(&name)).is_ok() {
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        let r = Request::parse("job.v1-abc~12.cancel").unwrap();
        assert_eq!(
            (r.job_id.as_str(), r.attempt, r.what.as_str()),
            ("job.v1-abc", Some(12), "cancel")
        );
        let r = Request::parse("abcdefgh.cancel").unwrap();
        assert_eq!((r.job_id.as_str(), r.attempt), ("abcdefgh", None));
        for bad in [
            "abcdefgh~.cancel",
            "abcdefgh~x.cancel",
            "abcdefgh~1.CANCEL",
            "abcdefgh~1",
            "../etc~1.cancel",
            "abcdefgh~1234567890.cancel",
        ] {
            assert!(Request::parse(bad).is_none(), "{bad}");
        }
    }
}
