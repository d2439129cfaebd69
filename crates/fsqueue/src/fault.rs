//! Fault injection for tests of the real binaries: slow barriers, failing
//! barriers, failing renames. The knobs are environment variables read once
//! per process, and only by builds with debug assertions (the test builds);
//! a release build never reads them, so production cannot be slowed or
//! broken by a stray variable.
//!
//! - `ORCH_FAULT_BARRIER_DELAY_MS=N`: every durable barrier (data or name,
//!   either sync mode) sleeps N ms before it flushes, as when a large build
//!   on the same filesystem makes `syncfs` crawl.
//! - `ORCH_FAULT_FSYNC_FAIL=N:ERRNO`: the Nth barrier of the process (1 is
//!   the first) fails with `ERRNO` (a number, e.g. 5 for EIO).
//! - `ORCH_FAULT_RENAME_FAIL=N:ERRNO`: the Nth publishing rename of the
//!   process fails with `ERRNO` (28 for ENOSPC).

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
struct Faults {
    barrier_delay: Option<Duration>,
    fsync_fail: Option<(u64, i32)>,
    rename_fail: Option<(u64, i32)>,
}

fn parse_nth(v: &str) -> Option<(u64, i32)> {
    let (n, errno) = v.split_once(':')?;
    Some((n.trim().parse().ok()?, errno.trim().parse().ok()?))
}

fn faults() -> &'static Faults {
    static F: OnceLock<Faults> = OnceLock::new();
    F.get_or_init(|| {
        if !cfg!(debug_assertions) {
            return Faults::default();
        }
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let f = Faults {
            barrier_delay: get("ORCH_FAULT_BARRIER_DELAY_MS")
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis),
            fsync_fail: get("ORCH_FAULT_FSYNC_FAIL").as_deref().and_then(parse_nth),
            rename_fail: get("ORCH_FAULT_RENAME_FAIL").as_deref().and_then(parse_nth),
        };
        if f.barrier_delay.is_some() || f.fsync_fail.is_some() || f.rename_fail.is_some() {
            tracing::warn!(faults = ?f, "fault injection active (test build)");
        }
        f
    })
}

/// Called at the start of every durable barrier.
pub(crate) fn barrier() -> io::Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    let f = faults();
    if let Some(d) = f.barrier_delay {
        std::thread::sleep(d);
    }
    if let Some((nth, errno)) = f.fsync_fail {
        let n = N.fetch_add(1, Ordering::Relaxed) + 1;
        if n == nth {
            return Err(io::Error::from_raw_os_error(errno));
        }
    }
    Ok(())
}

/// Called before every publishing rename.
pub(crate) fn rename() -> io::Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    if let Some((nth, errno)) = faults().rename_fail {
        let n = N.fetch_add(1, Ordering::Relaxed) + 1;
        if n == nth {
            return Err(io::Error::from_raw_os_error(errno));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn nth_spec_parses() {
        assert_eq!(super::parse_nth("3:5"), Some((3, 5)));
        assert_eq!(super::parse_nth("x:5"), None);
        assert_eq!(super::parse_nth("3"), None);
    }
}
