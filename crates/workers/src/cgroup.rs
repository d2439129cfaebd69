//! Per-step control groups: the limits that hold for a whole step (all of
//! its processes together), not per process or per host uid as rlimits do.
//!
//! When the runner can create cgroups, each sandboxed step gets its own,
//! `<parent>/orch-<runner pid>-<n>`, with
//! - **memory**: `memory.max` + `memory.swap.max = 0` (v2), or
//!   `memory.limit_in_bytes` + `memory.memsw.limit_in_bytes` (v1): past
//!   it the kernel's OOM killer kills inside the step only, counted in
//!   `memory.events` `oom_kill` (v2) / `memory.oom_control` `oom_kill` (v1);
//! - **processes**: `pids.max` (both), refusals counted in `pids.events`;
//! - **CPU bandwidth**: `cpu.max` (v2) / `cpu.cfs_quota_us` (v1), when
//!   `SANDBOX_CPU_PERCENT` is set.
//!
//! The parent is `SANDBOX_CGROUP_ROOT` (a cgroup path, as in
//! `/proc/self/cgroup`) or the runner's own cgroup, in the unified (v2)
//! hierarchy when it offers the `memory` and `pids` controllers, else in the
//! v1 `memory`, `pids` (and `cpu`) hierarchies. v2 needs the controllers
//! enabled in the parent's `cgroup.subtree_control` (orch enables them; a
//! parent that also holds processes cannot, the kernel's "no internal
//! processes" rule: point `SANDBOX_CGROUP_ROOT` at an empty delegated
//! cgroup then).
//!
//! The agent joins its cgroup **before it execs**: `orch-runner`'s
//! agent-wrapper mode writes its own pid to each `cgroup.procs` and then
//! execs setpriv/bubblewrap, so nothing the agent starts is ever outside.
//! A process without that wrapper (a library user, the test binaries)
//! moves the child right after it started and then every descendant it
//! finds, until a pass finds none outside ([`adopt`]).
//!
//! After the step every process left in the cgroup is killed (this is
//! what catches daemonised leftovers that escaped the process group) and
//! the cgroup removed.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `SANDBOX_CGROUP`: whether steps get cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Never.
    Off,
    /// When the runner can create them; else rlimits only (logged once).
    Auto,
    /// Always: a runner that cannot create cgroups refuses to start.
    Require,
}

/// Which cgroup hierarchy holds the step cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy: one directory per step.
    V2 { parent: PathBuf },
    /// Legacy hierarchies: one directory per controller per step.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: Option<PathBuf>,
    },
}

/// Where step cgroups are created (found once, at start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    pub hierarchy: Hierarchy,
}

/// The limits one step's cgroup gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    pub processes: u64,
    /// Percent of one CPU; 0 = no quota.
    pub cpu_percent: u64,
}

const CFS_PERIOD_US: u64 = 100_000;

/// The mount point of each cgroup hierarchy: (`None` for v2 | Some(v1
/// controller list), mount point, mount root).
fn mounts() -> Vec<(Option<Vec<String>>, PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let (root, point) = (l[3].to_owned(), PathBuf::from(l[4]));
        match r[0] {
            "cgroup2" => out.push((None, point, root)),
            "cgroup" => {
                let ctrls = r[2].split(',').map(str::to_owned).collect();
                out.push((Some(ctrls), point, root));
            }
            _ => {}
        }
    }
    out
}

/// This process's cgroup path per hierarchy, from `/proc/self/cgroup`:
/// (controller list, "" for v2; path).
fn own_paths() -> Vec<(Vec<String>, String)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?;
            let path = it.next()?;
            let ctrls = if ctrls.is_empty() {
                Vec::new()
            } else {
                ctrls.split(',').map(str::to_owned).collect()
            };
            Some((ctrls, path.to_owned()))
        })
        .collect()
}

/// The directory of cgroup `path` (as in `/proc/self/cgroup`) under a
/// hierarchy mounted at `point` whose mount shows cgroup `root`.
fn dir_of(point: &Path, root: &str, path: &str) -> Option<PathBuf> {
    let rel = if root == "/" {
        path
    } else {
        path.strip_prefix(root)?
    };
    Some(point.join(rel.trim_start_matches('/')))
}

fn writable_dir(d: &Path) -> Result<(), String> {
    if !d.is_dir() {
        return Err(format!("{} does not exist", d.display()));
    }
    nix::unistd::access(d, nix::unistd::AccessFlags::W_OK)
        .map_err(|e| format!("{} is not writable: {e}", d.display()))
}

impl Cgroups {
    /// Finds where step cgroups can be created: under `root` (a cgroup
    /// path) or this process's own cgroup; v2 first, then v1. `Err` says
    /// why none can (for the log line and `orch doctor`).
    pub fn detect(root: Option<&str>) -> Result<Self, String> {
        let mounts = mounts();
        let own = own_paths();
        let v2_err = match Self::detect_v2(&mounts, &own, root) {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        match Self::detect_v1(&mounts, &own, root) {
            Ok(c) => Ok(c),
            Err(v1_err) => Err(format!("cgroup v2: {v2_err}; cgroup v1: {v1_err}")),
        }
    }

    fn detect_v2(
        mounts: &[(Option<Vec<String>>, PathBuf, String)],
        own: &[(Vec<String>, String)],
        root: Option<&str>,
    ) -> Result<Self, String> {
        let (_, point, mroot) = mounts
            .iter()
            .find(|(c, _, _)| c.is_none())
            .ok_or("not mounted")?;
        let path = match root {
            Some(r) => r.to_owned(),
            None => own
                .iter()
                .find(|(c, _)| c.is_empty())
                .map(|(_, p)| p.clone())
                .ok_or("this process is in no v2 cgroup")?,
        };
        let parent = dir_of(point, mroot, &path)
            .ok_or_else(|| format!("cgroup {path} is outside the mount at {}", point.display()))?;
        writable_dir(&parent)?;
        let have = std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
        for c in ["memory", "pids"] {
            if !have.split_whitespace().any(|h| h == c) {
                return Err(format!(
                    "the {c} controller is not delegated to {} (cgroup.controllers: {:?})",
                    parent.display(),
                    have.trim()
                ));
            }
        }
        let enabled =
            std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        let want: Vec<&str> = ["memory", "pids", "cpu"]
            .into_iter()
            .filter(|c| have.split_whitespace().any(|h| h == *c))
            .filter(|c| !enabled.split_whitespace().any(|h| h == *c))
            .collect();
        if !want.is_empty() {
            let line = want
                .iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" ");
            std::fs::write(parent.join("cgroup.subtree_control"), line).map_err(|e| {
                format!(
                    "cannot enable controllers in {}/cgroup.subtree_control: {e} (a cgroup that holds processes cannot delegate; hint: set SANDBOX_CGROUP_ROOT to an empty delegated cgroup)",
                    parent.display()
                )
            })?;
        }
        Ok(Self {
            hierarchy: Hierarchy::V2 { parent },
        })
    }

    fn detect_v1(
        mounts: &[(Option<Vec<String>>, PathBuf, String)],
        own: &[(Vec<String>, String)],
        root: Option<&str>,
    ) -> Result<Self, String> {
        let find = |ctrl: &str| -> Result<PathBuf, String> {
            let (_, point, mroot) = mounts
                .iter()
                .find(|(c, _, _)| c.as_ref().is_some_and(|c| c.iter().any(|x| x == ctrl)))
                .ok_or_else(|| format!("no {ctrl} hierarchy is mounted"))?;
            let path = match root {
                Some(r) => r.to_owned(),
                None => own
                    .iter()
                    .find(|(c, _)| c.iter().any(|x| x == ctrl))
                    .map(|(_, p)| p.clone())
                    .ok_or_else(|| format!("this process is in no {ctrl} cgroup"))?,
            };
            let d = dir_of(point, mroot, &path).ok_or_else(|| {
                format!("cgroup {path} is outside the mount at {}", point.display())
            })?;
            writable_dir(&d)?;
            Ok(d)
        };
        Ok(Self {
            hierarchy: Hierarchy::V1 {
                memory: find("memory")?,
                pids: find("pids")?,
                cpu: find("cpu").ok(),
            },
        })
    }

    /// "cgroup v2" or "cgroup v1", for logs and `result.json`.
    pub fn kind(&self) -> &'static str {
        match self.hierarchy {
            Hierarchy::V2 { .. } => "cgroup v2",
            Hierarchy::V1 { .. } => "cgroup v1",
        }
    }

    /// One line for logs and `orch doctor`.
    pub fn describe(&self) -> String {
        match &self.hierarchy {
            Hierarchy::V2 { parent } => format!("cgroup v2 under {}", parent.display()),
            Hierarchy::V1 { memory, pids, cpu } => format!(
                "cgroup v1 under {}, {}{}",
                memory.display(),
                pids.display(),
                cpu.as_ref()
                    .map(|c| format!(", {}", c.display()))
                    .unwrap_or_default()
            ),
        }
    }

    /// Removes step cgroups left by runners that are gone (a runner
    /// killed mid-step cannot remove its own): every `orch-<pid>-<n>`
    /// whose runner pid no longer exists is emptied and removed. Returns
    /// how many it removed.
    pub fn sweep_stale(&self) -> usize {
        let parents: Vec<&PathBuf> = match &self.hierarchy {
            Hierarchy::V2 { parent } => vec![parent],
            Hierarchy::V1 { memory, pids, cpu } => {
                let mut v = vec![memory, pids];
                v.extend(cpu.iter());
                v
            }
        };
        let mut removed = 0;
        for parent in parents {
            let Ok(entries) = std::fs::read_dir(parent) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = name
                    .strip_prefix("orch-")
                    .and_then(|r| r.split('-').next())
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if Path::new(&format!("/proc/{pid}")).exists() {
                    continue;
                }
                let mut cg = StepCgroup {
                    v2: matches!(self.hierarchy, Hierarchy::V2 { .. }),
                    dirs: vec![e.path()],
                    removed: false,
                };
                if cg.teardown().is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Creates a fresh cgroup for one step with `limits`. A failure
    /// removes what was created.
    pub fn create(&self, limits: CgroupLimits) -> io::Result<StepCgroup> {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "orch-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut cg = StepCgroup {
            v2: matches!(self.hierarchy, Hierarchy::V2 { .. }),
            dirs: Vec::new(),
            removed: false,
        };
        let parents: Vec<&PathBuf> = match &self.hierarchy {
            Hierarchy::V2 { parent } => vec![parent],
            Hierarchy::V1 { memory, pids, cpu } => {
                let mut v = vec![memory, pids];
                v.extend(cpu.iter());
                v
            }
        };
        for p in parents {
            let d = p.join(&name);
            std::fs::create_dir(&d)?;
            cg.dirs.push(d);
        }
        cg.apply(limits)?;
        Ok(cg)
    }
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}/{file}: {e}", dir.display())))
}

/// A counter `key N` in a flat-keyed cgroup file (0 when absent).
fn counter(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

fn number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// What a step's cgroup saw: the kernel's own accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Processes the OOM killer killed in the step.
    pub oom_kills: u64,
    /// Forks refused at `pids.max`.
    pub pids_refused: u64,
    /// Highest memory use (`memory.peak` / `memory.max_usage_in_bytes`).
    pub memory_peak_bytes: Option<u64>,
}

impl Usage {
    /// The limit the step ran into, if any: memory first (the OOM killer
    /// killed something), then processes.
    pub fn hit(&self) -> Option<&'static str> {
        if self.oom_kills > 0 {
            Some("memory")
        } else if self.pids_refused > 0 {
            Some("processes")
        } else {
            None
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "oom_kills": self.oom_kills,
            "pids_refused": self.pids_refused,
            "memory_peak_bytes": self.memory_peak_bytes,
        })
    }
}

/// One step's cgroup. Dropping it kills what is left inside and removes it.
#[derive(Debug)]
pub struct StepCgroup {
    v2: bool,
    /// v2: one directory; v1: memory, pids[, cpu].
    dirs: Vec<PathBuf>,
    removed: bool,
}

impl StepCgroup {
    fn apply(&self, l: CgroupLimits) -> io::Result<()> {
        let mem = l.memory_bytes.to_string();
        let pids = l.processes.max(1).to_string();
        if self.v2 {
            let d = &self.dirs[0];
            write(d, "memory.max", &mem)?;
            // No swap: a step over its memory is killed, not swapped out.
            if d.join("memory.swap.max").exists() {
                write(d, "memory.swap.max", "0")?;
            }
            write(d, "pids.max", &pids)?;
            if l.cpu_percent > 0 && d.join("cpu.max").exists() {
                let quota = CFS_PERIOD_US * l.cpu_percent / 100;
                write(d, "cpu.max", &format!("{quota} {CFS_PERIOD_US}"))?;
            }
        } else {
            let m = &self.dirs[0];
            write(m, "memory.limit_in_bytes", &mem)?;
            if m.join("memory.memsw.limit_in_bytes").exists() {
                write(m, "memory.memsw.limit_in_bytes", &mem)?;
            }
            write(&self.dirs[1], "pids.max", &pids)?;
            if let Some(c) = self.dirs.get(2)
                && l.cpu_percent > 0
            {
                write(c, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
                write(
                    c,
                    "cpu.cfs_quota_us",
                    &(CFS_PERIOD_US * l.cpu_percent / 100).to_string(),
                )?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The step's directory in the memory hierarchy (its name, for logs).
    pub fn path(&self) -> &Path {
        &self.dirs[0]
    }

    /// The kernel's accounting so far.
    pub fn usage(&self) -> Usage {
        self.counters().usage()
    }

    /// A handle that reads the accounting while the step runs (for the
    /// runner's watchdog), without owning the cgroup.
    pub fn counters(&self) -> Counters {
        Counters {
            v2: self.v2,
            dirs: self.dirs.clone(),
        }
    }
}

/// Reads a step cgroup's accounting ([`StepCgroup::counters`]).
#[derive(Debug, Clone)]
pub struct Counters {
    v2: bool,
    dirs: Vec<PathBuf>,
}

impl Counters {
    /// The kernel's accounting so far (zeros once the cgroup is gone).
    pub fn usage(&self) -> Usage {
        let d = &self.dirs[0];
        if self.v2 {
            Usage {
                oom_kills: counter(&d.join("memory.events"), "oom_kill"),
                pids_refused: counter(&d.join("pids.events"), "max"),
                memory_peak_bytes: number(&d.join("memory.peak")),
            }
        } else {
            Usage {
                oom_kills: counter(&d.join("memory.oom_control"), "oom_kill"),
                pids_refused: counter(&self.dirs[1].join("pids.events"), "max"),
                memory_peak_bytes: number(&d.join("memory.max_usage_in_bytes")),
            }
        }
    }
}

impl StepCgroup {
    /// Pids in the cgroup (in any of its v1 directories).
    fn pids(&self) -> std::collections::BTreeSet<i32> {
        self.dirs
            .iter()
            .flat_map(|d| {
                std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect()
    }

    /// Kills every process left in the cgroup and removes it. Blocking
    /// (a few short sleeps while the kernel reaps): call it off the async
    /// runtime. Returns how many processes it killed.
    pub fn kill_and_remove(mut self) -> io::Result<usize> {
        self.teardown()
    }

    fn teardown(&mut self) -> io::Result<usize> {
        if self.removed {
            return Ok(0);
        }
        self.removed = true;
        let mut killed = std::collections::BTreeSet::new();
        if self.dirs.is_empty() {
            return Ok(0);
        }
        let mut last = None;
        // A process forking while we kill is still inside (children join
        // their parent's cgroup), and pids.max bounds how many there are:
        // repeat until the cgroup is empty and removable.
        for _ in 0..200 {
            if self.v2 && self.dirs[0].join("cgroup.kill").exists() {
                let _ = std::fs::write(self.dirs[0].join("cgroup.kill"), "1");
            }
            for pid in self.pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                killed.insert(pid);
            }
            // Children before parents: v1 cpu, pids, then memory.
            let mut left = Vec::new();
            for d in self.dirs.iter().rev() {
                match std::fs::remove_dir(d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        last = Some(io::Error::new(
                            e.kind(),
                            format!("cannot remove {}: {e}", d.display()),
                        ));
                        left.push(d.clone());
                    }
                }
            }
            if left.is_empty() {
                return Ok(killed.len());
            }
            left.reverse();
            self.dirs = left;
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(last.unwrap_or_else(|| io::Error::other("cgroup not removed")))
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(error = %e, "step cgroup left behind");
        }
    }
}

/// Writes `pid` into each of `procs` (joins the cgroup).
pub fn enter(procs: &[PathBuf], pid: u32) -> io::Result<()> {
    for p in procs {
        std::fs::write(p, pid.to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
    }
    Ok(())
}

/// The parent pid of `pid`, from `/proc/<pid>/stat` (`None` once gone).
fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// Moves `pid` and every descendant of it into the cgroup, for a child
/// started without the agent wrapper: `pid` first, then passes over
/// `/proc` moving each descendant still outside, until a pass moves
/// nothing (a process forked by one already moved is born inside).
pub fn adopt(procs: &[PathBuf], pid: u32) -> io::Result<()> {
    match enter(procs, pid) {
        // Already gone (a program that exits at once): nothing to move.
        Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => return Ok(()),
        r => r?,
    }
    let inside = |p: i32| -> bool {
        let Some(first) = procs.first() else {
            return true;
        };
        std::fs::read_to_string(first)
            .unwrap_or_default()
            .lines()
            .any(|l| l.trim() == p.to_string())
    };
    for _ in 0..100 {
        let mut moved = false;
        let all: Vec<i32> = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let root = i32::try_from(pid).unwrap_or(i32::MAX);
        for p in all {
            // Descendant of `pid`?
            let mut cur = p;
            let mut desc = false;
            for _ in 0..64 {
                match ppid(cur) {
                    Some(pp) if pp == root => {
                        desc = true;
                        break;
                    }
                    Some(pp) if pp > 1 => cur = pp,
                    _ => break,
                }
            }
            if desc && !inside(p) {
                let _ = enter(procs, u32::try_from(p).unwrap_or(0));
                moved = true;
            }
        }
        if !moved {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_counters_are_read_by_key() {
        let d = tempfile::tempdir().expect("tmp");
        let f = d.path().join("memory.events");
        std::fs::write(&f, "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\n").expect("write");
        assert_eq!(counter(&f, "oom_kill"), 2);
        assert_eq!(counter(&f, "oom"), 3);
        assert_eq!(counter(&f, "max"), 12);
        assert_eq!(counter(&f, "absent"), 0);
        assert_eq!(counter(&d.path().join("missing"), "oom_kill"), 0);
    }

    #[test]
    fn cgroup_paths_map_into_their_mount() {
        let p = Path::new("/sys/fs/cgroup/memory");
        assert_eq!(
            dir_of(p, "/", "/process_api/x"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/x"))
        );
        // A container's mount shows its own cgroup as the root.
        assert_eq!(
            dir_of(p, "/docker/abc", "/docker/abc/orch"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/orch"))
        );
        assert_eq!(dir_of(p, "/docker/abc", "/elsewhere"), None);
    }

    #[test]
    fn usage_names_memory_before_processes() {
        let u = |oom_kills, pids_refused| Usage {
            oom_kills,
            pids_refused,
            memory_peak_bytes: None,
        };
        assert_eq!(u(0, 0).hit(), None);
        assert_eq!(u(0, 4).hit(), Some("processes"));
        assert_eq!(u(1, 4).hit(), Some("memory"));
    }

    #[test]
    fn parent_pids_are_read_from_proc_stat() {
        // This process's parent, read through the same parser.
        let me = i32::try_from(std::process::id()).expect("pid");
        assert_eq!(
            ppid(me),
            Some(nix::unistd::getppid().as_raw()),
            "the stat parser disagrees with getppid"
        );
        assert_eq!(ppid(i32::MAX), None);
    }
}
