//! Queue file names. The name carries everything the protocol needs, so that
//! every state change is a single atomic rename and no file content is ever
//! rewritten in place:
//!
//! ```text
//! {prio}-{seq}-{job_id}~{attempt}.{reaps}.json              pending, awaiting_approval, done, failed
//! {prio}-{seq}-{job_id}~{attempt}.{reaps}+{not_before}.json pending, deferred
//! {prio}-{seq}-{job_id}~{attempt}.{reaps}@{runner}.json     running
//! ```
//!
//! * `prio` is one digit, `0` first; `seq` is a 19-digit enqueue time in
//!   nanoseconds. Plain byte order of names is therefore FIFO within a
//!   priority — mtime is never consulted (it survives renames and lies).
//! * `attempt` is the number of claims so far. A claim increments it, so the
//!   running name is unique per claim and works as a fencing token: a runner
//!   that lost its lease holds a name that no longer exists and can no longer
//!   move the job.
//! * `reaps` counts how many times an expired lease sent the job back; past
//!   `RUNNER_MAX_RECLAIMS` the job is failed instead (a poison job never loops).
//! * `runner` is the claiming runner's id (`[A-Za-z0-9_-]{1,64}`).
//! * `not_before` (Unix seconds) marks a pending job that must not be
//!   claimed before that time (a job deferred by the budget gate until the
//!   UTC day rolls over). Claimers skip it without reading the file; a
//!   claim, and every move out of `pending/`, drops it.

use std::fmt;

/// The part of a name that never changes while a job lives: `{prio}-{seq}-{job_id}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub prio: u8,
    pub seq: u64,
    pub job_id: String,
    pub attempt: u32,
    pub reaps: u32,
    pub runner: Option<String>,
    /// Not to be claimed before this time (Unix seconds); pending only.
    pub not_before: Option<u64>,
}

/// Largest `not_before` accepted in a name (12 digits: year 33658).
const MAX_NOT_BEFORE: u64 = 999_999_999_999;

/// Largest attempt or reap count in a name (9 digits, what `parse`
/// reads); counts stop there rather than make a name nobody can parse.
const MAX_COUNT: u32 = 999_999_999;

pub const DEFAULT_PRIO: u8 = 5;

impl Entry {
    pub fn new(prio: u8, seq: u64, job_id: &str) -> Self {
        Self {
            prio: prio.min(9),
            seq,
            job_id: job_id.to_owned(),
            attempt: 0,
            reaps: 0,
            runner: None,
            not_before: None,
        }
    }

    /// `{prio}-{seq}-{job_id}`: stable over the job's whole life.
    pub fn key(&self) -> String {
        format!("{}-{:019}-{}", self.prio, self.seq, self.job_id)
    }

    pub fn file_name(&self) -> String {
        let mut name = format!(
            "{}~{}.{}",
            self.key(),
            self.attempt.min(MAX_COUNT),
            self.reaps.min(MAX_COUNT)
        );
        if let Some(t) = self.not_before {
            name.push_str(&format!("+{}", t.min(MAX_NOT_BEFORE)));
        }
        if let Some(r) = &self.runner {
            name.push('@');
            name.push_str(r);
        }
        name.push_str(".json");
        name
    }

    /// The same entry, claimed by `runner`: attempt + 1.
    pub fn claimed_by(&self, runner: &str) -> Self {
        Self {
            attempt: self.attempt.saturating_add(1).min(MAX_COUNT),
            runner: Some(runner.to_owned()),
            not_before: None,
            ..self.clone()
        }
    }

    /// The same entry without an owner (for moves out of `running/`, and
    /// operator transitions); a not-before mark is dropped too.
    pub fn unowned(&self) -> Self {
        Self {
            runner: None,
            not_before: None,
            ..self.clone()
        }
    }

    /// The same entry without an owner, for `pending/`, not to be claimed
    /// before `unix_secs`.
    pub fn deferred_until(&self, unix_secs: u64) -> Self {
        Self {
            not_before: Some(unix_secs.min(MAX_NOT_BEFORE)),
            ..self.unowned()
        }
    }

    /// Whether the entry may be claimed at `now_unix_secs`.
    pub fn is_due(&self, now_unix_secs: u64) -> bool {
        self.not_before.is_none_or(|t| t <= now_unix_secs)
    }

    /// Parses a queue file name. Returns `None` for anything that is not
    /// exactly of the documented shape (temp files, stray files, hostile names).
    pub fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(".json")?;
        let (main, runner) = match stem.rsplit_once('@') {
            Some((m, r)) if is_valid_runner_id(r) => (m, Some(r.to_owned())),
            Some(_) => return None,
            None => (stem, None),
        };
        let (main, not_before) = match main.rsplit_once('+') {
            Some((m, t)) => {
                if t.is_empty() || t.len() > 12 || !t.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (m, Some(t.parse().ok()?))
            }
            None => (main, None),
        };
        let (key, counters) = main.rsplit_once('~')?;
        let (attempt, reaps) = counters.split_once('.')?;
        let attempt = parse_num(attempt)?;
        let reaps = parse_num(reaps)?;
        let mut parts = key.splitn(3, '-');
        let prio = parts.next()?;
        let seq = parts.next()?;
        let job_id = parts.next()?;
        if prio.len() != 1 || seq.len() != 19 || !is_valid_job_id(job_id) {
            return None;
        }
        Some(Self {
            prio: prio.parse().ok()?,
            seq: seq.parse().ok()?,
            job_id: job_id.to_owned(),
            attempt,
            reaps,
            runner,
            not_before,
        })
    }
}

fn parse_num(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// The job id rule of the contracts (repeated here because fsqueue depends
/// on nothing of ours): `[A-Za-z0-9._-]{8,64}`, not hidden, no `..`.
pub fn is_valid_job_id(s: &str) -> bool {
    (8..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        && !s.starts_with('.')
        && !s.contains("..")
}

/// Runner ids appear in file names: `[A-Za-z0-9_-]{1,64}`.
pub fn is_valid_runner_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Turns an arbitrary string (a host name, say) into a valid runner id.
pub fn sanitize_runner_id(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if out.is_empty() {
        out.push_str("runner");
    }
    out
}

/// A strictly increasing enqueue sequence for this process: wall-clock
/// nanoseconds, bumped past the previous value when the clock stalls or
/// steps back. Across processes, ties are broken by the job id in the name.
pub fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let e = Entry::new(
            5,
            1_732_233_552_123_456_789,
            "0123456789abcdef0123456789abcdef",
        );
        let n = e.file_name();
        assert_eq!(
            n,
            "5-1732233552123456789-0123456789abcdef0123456789abcdef~0.0.json"
        );
        assert_eq!(Entry::parse(&n), Some(e.clone()));
        let c = e.claimed_by("runner-1");
        assert_eq!(
            c.file_name(),
            "5-1732233552123456789-0123456789abcdef0123456789abcdef~1.0@runner-1.json"
        );
        assert_eq!(Entry::parse(&c.file_name()), Some(c.clone()));
        assert_eq!(c.unowned().attempt, 1);
    }

    #[test]
    fn not_before_roundtrips_and_is_dropped_by_claims_and_moves() {
        let e = Entry::new(5, 1_732_233_552_123_456_789, "job-aaaaaaaa").claimed_by("r1");
        let d = e.deferred_until(1_767_225_600);
        assert_eq!(
            d.file_name(),
            "5-1732233552123456789-job-aaaaaaaa~1.0+1767225600.json"
        );
        assert_eq!(Entry::parse(&d.file_name()), Some(d.clone()));
        assert!(!d.is_due(1_767_225_599));
        assert!(d.is_due(1_767_225_600));
        assert!(e.is_due(0));
        let c = d.claimed_by("r2");
        assert_eq!(c.not_before, None);
        assert_eq!(c.attempt, 2);
        assert_eq!(d.unowned().not_before, None);
        // Huge values are clamped, never a name that fails to parse.
        let far = e.deferred_until(u64::MAX);
        assert_eq!(Entry::parse(&far.file_name()), Some(far));
        let mut last = Entry::new(5, 1, "job-aaaaaaaa");
        last.attempt = 999_999_999;
        let again = last.claimed_by("r3");
        assert_eq!(Entry::parse(&again.file_name()), Some(again));
        last.reaps = u32::MAX;
        assert!(Entry::parse(&last.file_name()).is_some());
    }

    #[test]
    fn fifo_by_name() {
        let a = Entry::new(5, 9, "job-aaaaaaaa").file_name();
        let b = Entry::new(5, 10, "job-aaaaaaaa").file_name();
        let hi = Entry::new(1, 99, "job-zzzzzzzz").file_name();
        assert!(a < b);
        assert!(hi < a);
        let s1 = next_seq();
        let s2 = next_seq();
        assert!(s2 > s1);
    }

    #[test]
    fn rejects_hostile_names() {
        for n in [
            "",
            ".orch-tmp-1-2-x",
            "5-1732233552123456789-../../etc~0.0.json",
            "5-1732233552123456789-abcdefgh~0.0@../x.json",
            "5-1732233552123456789-abcdefgh~x.0.json",
            "5-17322-abcdefgh~0.0.json",
            "55-1732233552123456789-abcdefgh~0.0.json",
            "5-1732233552123456789-abcdefgh~0.0",
            "5-1732233552123456789-abcdefgh~99999999999.0.json",
            "5-1732233552123456789-abcdefgh.json",
            "5-1732233552123456789-abcdefgh~0.0+.json",
            "5-1732233552123456789-abcdefgh~0.0+12x.json",
            "5-1732233552123456789-abcdefgh~0.0+-5.json",
            "5-1732233552123456789-abcdefgh~0.0+9999999999999.json",
            "5-1732233552123456789-abcdefgh+5~0.0.json",
        ] {
            assert_eq!(Entry::parse(n), None, "{n:?}");
        }
        assert_eq!(sanitize_runner_id("host.example.com"), "host_example_com");
    }
}
