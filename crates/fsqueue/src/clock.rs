//! The wall clock orch decides calendar questions with: which UTC day a
//! budget charge belongs to, and whether a deferred job is due.
//!
//! It is the system clock, except in tests: a binary started with
//! `ORCH_TEST_CLOCK_FILE` installs that file with [`set_test_clock_file`],
//! and [`now`] then reads the time from it on every call (Unix seconds, one
//! number), so a test can move a whole set of processes past midnight
//! without waiting for one. Leases and timeouts never use this clock: they
//! are durations, measured by the kernel.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static TEST_CLOCK: OnceLock<PathBuf> = OnceLock::new();

/// Reads the time from `path` from now on (tests only; once per process).
/// The file must hold Unix seconds now, so a typo fails at start-up rather
/// than silently running on the real clock.
pub fn set_test_clock_file(path: &Path) -> Result<(), String> {
    read_clock_file(path)?;
    TEST_CLOCK
        .set(path.to_owned())
        .map_err(|_| "the test clock is already installed".to_owned())
}

/// Whether a test clock is installed.
pub fn test_clock_installed() -> bool {
    TEST_CLOCK.get().is_some()
}

fn read_clock_file(path: &Path) -> Result<SystemTime, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secs: u64 = text.trim().parse().map_err(|_| {
        format!(
            "{}: expected Unix seconds, found {:?}",
            path.display(),
            text.trim().chars().take(40).collect::<String>()
        )
    })?;
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .ok_or_else(|| format!("{}: {secs} is out of range", path.display()))
}

/// The current time: the test clock when one is installed, else the system
/// clock. A test clock file that became unreadable falls back to the system
/// clock with a warning.
pub fn now() -> SystemTime {
    if let Some(p) = TEST_CLOCK.get() {
        match read_clock_file(p) {
            Ok(t) => return t,
            Err(e) => tracing::warn!(error = %e, "test clock unreadable; using the system clock"),
        }
    }
    SystemTime::now()
}

/// [`now`] in whole Unix seconds.
pub fn now_unix() -> u64 {
    now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The first second of the next UTC day after `unix_secs`.
pub fn next_utc_midnight(unix_secs: u64) -> u64 {
    (unix_secs / 86_400 + 1) * 86_400
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_midnight() {
        // 2026-01-01T00:00:00Z = 1767225600.
        assert_eq!(next_utc_midnight(1_767_225_599), 1_767_225_600);
        assert_eq!(next_utc_midnight(1_767_225_600), 1_767_312_000);
    }

    #[test]
    fn bad_clock_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("now");
        assert!(set_test_clock_file(&f).is_err());
        for bad in ["", "soon", "-5", "1.5", "99999999999999999999999"] {
            std::fs::write(&f, bad).unwrap();
            assert!(read_clock_file(&f).is_err(), "{bad:?}");
        }
        std::fs::write(&f, "1767225600\n").unwrap();
        assert_eq!(
            read_clock_file(&f).unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_767_225_600)
        );
    }
}
