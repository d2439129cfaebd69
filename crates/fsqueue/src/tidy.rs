//! Housekeeping of what crashed processes leave behind, run by the
//! scheduler's sweep (and `orch recover`):
//!
//! * **dead runners' files**: `runners/<id>.lock`, `runners/<id>.json` (the
//!   heartbeat) and `<metrics_dir>/runner-<id>.prom`, once the runner is
//!   provably dead (nobody holds its lock), its heartbeat is older than the
//!   lease, and no claim in `running/` names it (those keep the lock file,
//!   whose free lock lets a reaper take them back at once). Without them the
//!   runner leaves `/health` and `/metrics`. A heartbeat or metrics file with
//!   no lock file at all is removed once it is older than [`ORPHAN_AGE`];
//! * **orphan temp files** (`.orch-tmp-*`, left by a crash mid-write) older
//!   than [`crate::recover::STALE_TEMP_AGE`] anywhere under the given roots;
//! * **orphan quarantine reasons**: `corrupt/<name>.reason` whose `<name>`
//!   never arrived (a process killed between writing the reason and moving
//!   the file, or a quarantine that found the file gone), older than the
//!   same age.
//!
//! Nothing here follows a symlink.

use crate::durable;
use crate::name::is_valid_runner_id;
use crate::queue::{Queue, RUNNERS_DIR, State};
use nix::fcntl::{Flock, FlockArg};
use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A heartbeat or metrics file with no lock file beside it is removed once
/// it is this old (a live runner rewrites both every third of its lease,
/// and leases are at most an hour).
pub const ORPHAN_AGE: Duration = Duration::from_secs(2 * 3600);

fn age(path: &Path, now: SystemTime) -> Option<Duration> {
    let m = std::fs::symlink_metadata(path).ok()?.modified().ok()?;
    Some(now.duration_since(m).unwrap_or(Duration::ZERO))
}

fn metrics_file(metrics_dir: &Path, id: &str) -> std::path::PathBuf {
    metrics_dir.join(format!("runner-{id}.prom"))
}

/// Removes the files of dead runners (see the module comment). `lease`: a
/// heartbeat younger than this keeps its runner's files. Returns the ids
/// whose files were removed.
pub fn prune_dead_runners(
    queue: &Queue,
    metrics_dir: Option<&Path>,
    lease: Duration,
) -> Vec<String> {
    let dir = queue.internal_dir(RUNNERS_DIR);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let now = SystemTime::now();
    let mut locks = HashSet::new();
    let mut docs = Vec::new();
    for ent in rd.flatten() {
        let Ok(name) = ent.file_name().into_string() else {
            continue;
        };
        if let Some(id) = name.strip_suffix(".lock").filter(|i| is_valid_runner_id(i)) {
            locks.insert(id.to_owned());
        } else if let Some(id) = name.strip_suffix(".json").filter(|i| is_valid_runner_id(i)) {
            docs.push(id.to_owned());
        }
    }
    let owners: HashSet<String> = queue
        .list(State::Running)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|l| l.entry.runner)
        .collect();
    let mut out = Vec::new();
    for id in &locks {
        if owners.contains(id) {
            continue;
        }
        let heartbeat = dir.join(format!("{id}.json"));
        if age(&heartbeat, now).is_some_and(|a| a < lease) {
            continue;
        }
        let lock_path = dir.join(format!("{id}.lock"));
        let Ok(file) = File::open(&lock_path) else {
            continue;
        };
        // Held while the files go: a runner starting with this id meanwhile
        // waits, then locks a fresh lock file (it checks the inode).
        let Ok(_held) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue; // alive
        };
        let _ = durable::remove_file(&heartbeat);
        if let Some(m) = metrics_dir {
            let _ = durable::remove_file(&metrics_file(m, id));
        }
        if durable::remove_file(&lock_path).is_ok() {
            tracing::info!(runner_id = %id, "removed the files of a dead runner");
            out.push(id.clone());
        }
    }
    // Heartbeats without a lock file (a runner of an older version, or a
    // lock removed by hand).
    for id in docs.iter().filter(|id| !locks.contains(*id)) {
        let p = dir.join(format!("{id}.json"));
        if age(&p, now).is_some_and(|a| a > ORPHAN_AGE) && durable::remove_file(&p).is_ok() {
            out.push(id.clone());
        }
    }
    // Metrics files of runners that have no lock file any more.
    if let Some(m) = metrics_dir
        && let Ok(rd) = std::fs::read_dir(m)
    {
        for ent in rd.flatten() {
            let Ok(name) = ent.file_name().into_string() else {
                continue;
            };
            let Some(id) = name
                .strip_prefix("runner-")
                .and_then(|n| n.strip_suffix(".prom"))
                .filter(|i| is_valid_runner_id(i))
            else {
                continue;
            };
            if !locks.contains(id)
                && age(&ent.path(), now).is_some_and(|a| a > ORPHAN_AGE)
                && durable::remove_file(&ent.path()).is_ok()
            {
                out.push(id.to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Removes temp files (`.orch-tmp-*`) older than `max_age` under each root,
/// at most `depth` levels down, never following symlinks. Returns how many
/// were removed.
pub fn remove_orphan_temps(roots: &[(&Path, usize)], max_age: Duration) -> usize {
    let now = SystemTime::now();
    let mut n = 0;
    for (root, depth) in roots {
        walk(root, *depth, &mut |path, name| {
            if durable::is_temp_name(name)
                && age(path, now).is_some_and(|a| a >= max_age)
                && durable::remove_file(path).is_ok()
            {
                n += 1;
            }
        });
    }
    n
}

/// Removes `corrupt/*.reason` files older than `max_age` whose quarantined
/// file is not beside them (see the module comment). Returns how many.
pub fn remove_orphan_reasons(queue: &Queue, max_age: Duration) -> usize {
    let dir = queue.internal_dir(crate::queue::CORRUPT_DIR);
    let now = SystemTime::now();
    let mut n = 0;
    walk(&dir, 1, &mut |path, name| {
        if let Some(quarantined) = name.strip_suffix(".reason")
            && !quarantined.is_empty()
            && std::fs::symlink_metadata(dir.join(quarantined)).is_err()
            && age(path, now).is_some_and(|a| a >= max_age)
            && durable::remove_file(path).is_ok()
        {
            n += 1;
        }
    });
    n
}

/// Calls `f` with every regular file under `dir`, `depth` levels down at
/// most; directory entries' own types are used, so symlinks are never
/// followed.
fn walk(dir: &Path, depth: usize, f: &mut dyn FnMut(&Path, &str)) {
    if depth == 0 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for ent in rd.flatten() {
        let Ok(ft) = ent.file_type() else { continue };
        let path = ent.path();
        if ft.is_dir() {
            walk(&path, depth - 1, f);
        } else if ft.is_file()
            && let Some(name) = ent.file_name().to_str()
        {
            f(&path, name);
        }
    }
}
