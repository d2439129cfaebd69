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
//! - `ORCH_FAULT_CRASH_AT=POINT[:N]`: the process kills itself with
//!   `SIGKILL` the Nth time (default 1) it reaches the named crash point
//!   ([`point`]; every name is listed in [`POINTS`]), as a power cut or an
//!   OOM kill at that instant would. Nothing after the point runs: no
//!   destructor, no flush, no clean-up.
//! - `ORCH_FAULT_RECORD=FILE`: every operation of the durable layer
//!   (temp file written, file or directory synced, `syncfs`, rename, link,
//!   unlink, mkdir) is appended to `FILE` as one line, in order, by every
//!   process that has the variable (see [`Op`]). A power-loss simulator
//!   replays prefixes of the log, dropping what was not made durable.

use std::io::{self, Write};
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
struct Faults {
    barrier_delay: Option<Duration>,
    fsync_fail: Option<(u64, i32)>,
    rename_fail: Option<(u64, i32)>,
    crash_at: Option<(String, u64)>,
    record: Option<std::fs::File>,
}

/// Every crash point, by the name `ORCH_FAULT_CRASH_AT` takes. The
/// reliability tests crash at each one in turn; [`point`] refuses (in test
/// builds) a name missing here.
pub const POINTS: &[&str] = &[
    // The durable layer: one file replaced (`write_file`).
    "durable.write.temp_written",
    "durable.write.data_synced",
    "durable.write.renamed",
    "durable.write.names_synced",
    // New files published together (`write_files_new_after`: enqueue).
    "durable.new.data_synced",
    "durable.new.renamed_one",
    "durable.new.names_synced",
    // A multi-file, multi-phase publish (`Txn`: artifacts).
    "durable.txn.data_synced",
    "durable.txn.renamed_one",
    "durable.txn.phase_synced",
    // Moves (`move_noreplace`/`move_replace`: queue transitions).
    "durable.move.renamed",
    "durable.move.synced",
    // Unlinks (`remove_file`).
    "durable.remove.unlinked",
    // The queue protocol.
    "queue.enqueue.reserved",
    "queue.enqueue.published",
    "queue.enqueue_many.published",
    "queue.claim.renamed",
    "queue.claim.synced",
    "queue.renew.touched",
    "queue.reap.found",
    "queue.reap.moved",
    "queue.transition.moved",
    "queue.control.requested",
    "queue.recover.begun",
    // The runner.
    "runner.heartbeat.written",
    "runner.step.begun",
    "runner.step.published",
    "runner.job.final_artifacts",
    "runner.job.moved",
    "runner.callback.staged",
    "runner.callback.delivered",
    "runner.callback.settled",
    // The gateway's delivery records.
    "gateway.dedup.creating",
    "gateway.dedup.committing",
    // Retention.
    "scheduler.retention.removing",
    "scheduler.retention.forgetting",
];

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
            crash_at: get("ORCH_FAULT_CRASH_AT").as_deref().and_then(parse_point),
            record: get("ORCH_FAULT_RECORD").and_then(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .ok()
            }),
        };
        if f.barrier_delay.is_some()
            || f.fsync_fail.is_some()
            || f.rename_fail.is_some()
            || f.crash_at.is_some()
            || f.record.is_some()
        {
            tracing::warn!(faults = ?f, "fault injection active (test build)");
        }
        f
    })
}

/// `POINT[:N]` (N defaults to 1). An unknown point, or N = 0, is reported
/// on stderr and ignored.
fn parse_point(v: &str) -> Option<(String, u64)> {
    let (name, n) = match v.split_once(':') {
        Some((name, n)) => (name, n.trim().parse().ok()?),
        None => (v, 1),
    };
    let name = name.trim();
    if !POINTS.contains(&name) || n == 0 {
        eprintln!("ORCH_FAULT_CRASH_AT={v}: not a crash point (see fsqueue::fault::POINTS)");
        return None;
    }
    Some((name.to_owned(), n))
}

/// A crash point: with `ORCH_FAULT_CRASH_AT` naming it, the process dies
/// here (`SIGKILL` to itself) the Nth time it passes. A no-op otherwise,
/// and always in release builds.
pub fn point(name: &'static str) {
    if !cfg!(debug_assertions) {
        return;
    }
    debug_assert!(
        POINTS.contains(&name),
        "crash point {name} is not in POINTS"
    );
    let Some((at, nth)) = &faults().crash_at else {
        return;
    };
    if at != name {
        return;
    }
    static N: AtomicU64 = AtomicU64::new(0);
    if N.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        record(Op::Crash(name));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; should it somehow not be delivered,
        // abort rather than go on past the point.
        std::process::abort();
    }
}

/// One operation of the durable layer, as recorded by `ORCH_FAULT_RECORD`
/// (one tab-separated line each: the op's name, then its fields; paths are
/// absolute, data is hex).
#[derive(Debug)]
pub enum Op<'a> {
    /// A file created (or truncated) and written with `data`, not synced.
    Write(&'a Path, &'a [u8]),
    /// An empty file created (or linked to an empty file), not synced.
    Create(&'a Path),
    /// `from` renamed to `to` (replacing or not: it succeeded).
    Rename(&'a Path, &'a Path),
    /// A name removed.
    Unlink(&'a Path),
    /// A directory created.
    Mkdir(&'a Path),
    /// A file's data made durable (`fsync` of the file).
    Fsync(&'a Path),
    /// A directory's entries made durable (`fsync` of the directory).
    FsyncDir(&'a Path),
    /// Everything on the filesystem made durable (`syncfs`).
    Syncfs,
    /// The process crashed at a point (not a filesystem operation).
    Crash(&'a str),
}

/// True when operations are being recorded (skip building the record
/// otherwise).
pub fn recording() -> bool {
    cfg!(debug_assertions) && faults().record.is_some()
}

/// Appends `op` to the `ORCH_FAULT_RECORD` log (no-op when not recording).
pub fn record(op: Op<'_>) {
    if !recording() {
        return;
    }
    fn abs(p: &Path) -> String {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        p.to_string_lossy().into_owned()
    }
    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }
    let line = match op {
        Op::Write(p, d) => format!("write\t{}\t{}", abs(p), hex(d)),
        Op::Create(p) => format!("create\t{}", abs(p)),
        Op::Rename(a, b) => format!("rename\t{}\t{}", abs(a), abs(b)),
        Op::Unlink(p) => format!("unlink\t{}", abs(p)),
        Op::Mkdir(p) => format!("mkdir\t{}", abs(p)),
        Op::Fsync(p) => format!("fsync\t{}", abs(p)),
        Op::FsyncDir(p) => format!("fsyncdir\t{}", abs(p)),
        Op::Syncfs => "syncfs".to_owned(),
        Op::Crash(name) => format!("crash\t{name}"),
    };
    if let Some(mut f) = faults().record.as_ref() {
        // One write per line on an O_APPEND file: lines of concurrent
        // processes never interleave.
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// Records the data barrier of an open file (its path from `/proc`).
pub(crate) fn record_fsync(f: &std::fs::File) {
    if !recording() {
        return;
    }
    use std::os::fd::AsRawFd;
    if let Ok(p) = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())) {
        record(Op::Fsync(&p));
    }
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

    #[test]
    fn crash_point_spec_parses_and_points_are_unique() {
        assert_eq!(
            super::parse_point("queue.claim.renamed:3"),
            Some(("queue.claim.renamed".into(), 3))
        );
        assert_eq!(
            super::parse_point("durable.move.synced"),
            Some(("durable.move.synced".into(), 1))
        );
        assert_eq!(super::parse_point("no.such.point"), None);
        assert_eq!(super::parse_point("durable.move.synced:0"), None);
        assert_eq!(super::parse_point("durable.move.synced:x"), None);
        let mut names: Vec<&str> = super::POINTS.to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), super::POINTS.len(), "duplicate crash point");
        assert!(super::POINTS.len() >= 30);
    }
}
