//! `orch doctor`: checks that an installation can work before a job finds
//! out the hard way. Exit 1 when any check fails; warnings do not fail, but
//! are counted in the verdict (never "all good" over a warning).
//!
//! With `ENABLE_REAL_CLI=1` it fails when every default job would fail: no
//! usable sandbox (a `SANDBOX_WRAPPER` that is not an executable, bubblewrap
//! absent or without user namespaces), an agent's `ro_paths` entry or the
//! `state_seed_dir` of `AGENTS_CONFIG` that does not exist.

use crate::{CliError, print_json};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Info,
    Warn,
    Fail,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

struct Check {
    name: &'static str,
    level: Level,
    message: String,
}

pub fn doctor(as_json: &bool) -> Result<u8, CliError> {
    let mut checks = Vec::new();
    let mut add = |name, level, message: String| {
        checks.push(Check {
            name,
            level,
            message,
        })
    };

    let env = match contracts::env::EnvSource::load() {
        Ok(e) => Some(e),
        Err(e) => {
            add("config", Level::Fail, e.to_string());
            None
        }
    };
    let paths = env
        .as_ref()
        .and_then(|env| match contracts::config::Paths::resolve(env) {
            Ok(p) => Some(p),
            Err(e) => {
                add("config", Level::Fail, e.to_string());
                None
            }
        });
    if let Some(env) = &env {
        // Every variable of the registry must parse.
        match contracts::config::check_all(env) {
            Ok(()) => add(
                "config",
                Level::Ok,
                "every orch environment variable that is set parses".into(),
            ),
            Err(errs) => {
                for e in errs {
                    add("config", Level::Fail, e.to_string());
                }
            }
        }
    }
    if let (Some(env), Some(paths)) = (&env, &paths) {
        for (what, dir) in [
            ("queue", &paths.queue_root),
            ("artifacts", &paths.artifacts_root),
            ("workspaces", &paths.workspaces_root),
        ] {
            if !dir.is_absolute() {
                add(
                    "dirs",
                    Level::Fail,
                    format!("{what} dir {} is not an absolute path", dir.display()),
                );
            }
            match probe_writable(dir) {
                Ok(()) => add(
                    "dirs",
                    Level::Ok,
                    format!("{what} dir {} is writable", dir.display()),
                ),
                Err(e) => add(
                    "dirs",
                    Level::Fail,
                    format!("{what} dir {}: {e}", dir.display()),
                ),
            }
        }
        match free_bytes(&paths.queue_root) {
            Some(free) if free < 256 << 20 => add(
                "disk",
                Level::Fail,
                format!(
                    "only {} MiB free under {}",
                    free >> 20,
                    paths.queue_root.display()
                ),
            ),
            Some(free) if free < 2 << 30 => add(
                "disk",
                Level::Warn,
                format!(
                    "{} MiB free under {}",
                    free >> 20,
                    paths.queue_root.display()
                ),
            ),
            Some(free) => add("disk", Level::Ok, format!("{} GiB free", free >> 30)),
            None => add("disk", Level::Warn, "could not read free space".into()),
        }
        if let Ok(queue) = fsqueue::Queue::open(&paths.queue_root) {
            let lease = env
                .get_u64_range(&contracts::env::RUNNER_LEASE_SEC, 1, 3600)
                .unwrap_or(30);
            let now = SystemTime::now();
            let stale: Vec<String> = queue
                .list(fsqueue::State::Running)
                .unwrap_or_default()
                .into_iter()
                .filter(|l| {
                    std::fs::metadata(&l.path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| now.duration_since(m).ok())
                        .is_some_and(|age| age > Duration::from_secs(lease))
                })
                .map(|l| l.entry.job_id)
                .collect();
            if stale.is_empty() {
                add("leases", Level::Ok, "no expired leases".into());
            } else {
                add(
                    "leases",
                    Level::Warn,
                    format!(
                        "{} running job(s) with expired leases ({}); `orch recover` reaps them",
                        stale.len(),
                        stale.join(", ")
                    ),
                );
            }
            let corrupt = std::fs::read_dir(queue.internal_dir("corrupt"))
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| !e.file_name().to_string_lossy().ends_with(".reason"))
                        .count()
                })
                .unwrap_or(0);
            if corrupt == 0 {
                add("corrupt", Level::Ok, "no quarantined queue files".into());
            } else {
                add(
                    "corrupt",
                    Level::Warn,
                    format!(
                        "{corrupt} quarantined file(s) in {} (each has a .reason)",
                        queue.internal_dir("corrupt").display()
                    ),
                );
            }
            let runners = fsqueue::lease::runners(&queue);
            let alive = runners
                .iter()
                .filter(|r| r.1 == fsqueue::lease::Liveness::Alive)
                .count();
            add(
                "runners",
                if alive > 0 { Level::Ok } else { Level::Info },
                format!("{alive} live runner(s) on this host"),
            );
        }
        let real = env
            .get_bool(&contracts::env::ENABLE_REAL_CLI)
            .unwrap_or(false);
        if real {
            real_mode_checks(env, &mut add);
            for bin in ["claude", "codex", "opencode"] {
                match which(bin) {
                    Some(p) => add(
                        "real_cli",
                        Level::Ok,
                        format!("{bin} found at {}", p.display()),
                    ),
                    None => add(
                        "real_cli",
                        Level::Warn,
                        format!("{bin} not found on PATH; jobs using it fail preflight"),
                    ),
                }
            }
        } else {
            add(
                "real_cli",
                Level::Info,
                "simulation mode (set ENABLE_REAL_CLI=1 to run real agent CLIs)".into(),
            );
        }
        if real && nix::unistd::geteuid().is_root() {
            add(
                "privileges",
                Level::Warn,
                "RUNNING AS ROOT with real agents: agents run as SANDBOX_UID inside the sandbox, but orch's host-side code (workspaces, patches, artifacts) runs as root; run the runner as an unprivileged user (see docs/SECURITY.md)".into(),
            );
        }
        let wrapper = env.get_str(&contracts::env::SANDBOX_WRAPPER).ok().flatten();
        // In real mode the sandbox was judged above, as a runner would.
        if !real {
            match (which("bwrap"), wrapper) {
                (_, Some(w)) => add(
                    "sandbox",
                    Level::Info,
                    format!("SANDBOX_WRAPPER={w} (used only with real CLIs)"),
                ),
                (Some(p), None) => add(
                    "sandbox",
                    Level::Ok,
                    format!("bubblewrap found at {}", p.display()),
                ),
                (None, None) => add(
                    "sandbox",
                    Level::Info,
                    "bubblewrap not installed (needed only for real CLIs with SANDBOX=1)".into(),
                ),
            }
        }
    }

    let failed = checks.iter().any(|c| c.level == Level::Fail);
    if *as_json {
        print_json(&json!({
            "ok": !failed,
            "checks": checks.iter().map(|c| json!({"name": c.name, "status": c.level.as_str(), "message": c.message})).collect::<Vec<_>>(),
        }));
    } else {
        for c in &checks {
            println!("{:<5} {:<10} {}", c.level.as_str(), c.name, c.message);
        }
        let warnings = checks.iter().filter(|c| c.level == Level::Warn).count();
        if failed {
            println!("doctor: problems found");
        } else if warnings > 0 {
            println!(
                "doctor: usable, with {warnings} warning{}",
                if warnings == 1 { "" } else { "s" }
            );
        } else {
            println!("doctor: all good");
        }
    }
    Ok(if failed { 1 } else { 0 })
}

/// What a runner would say about real mode: a sandbox is usable (every
/// job's `policy.sandbox` defaults to true, so without one every default
/// job fails preflight), and every path the agents' sandboxes mount exists.
fn real_mode_checks(
    env: &contracts::env::EnvSource,
    add: &mut impl FnMut(&'static str, Level, String),
) {
    match env.get_str(&contracts::env::SANDBOX_WRAPPER).ok().flatten() {
        Some(w) => {
            let found = if Path::new(&w).is_absolute() {
                Some(PathBuf::from(&w)).filter(|p| is_executable(p))
            } else {
                which(&w)
            };
            match found {
                Some(p) => add(
                    "sandbox",
                    Level::Ok,
                    format!("SANDBOX_WRAPPER {}", p.display()),
                ),
                None => add(
                    "sandbox",
                    Level::Fail,
                    format!(
                        "SANDBOX_WRAPPER={w:?} is not an executable file, so every sandboxed job (policy.sandbox defaults to true) fails"
                    ),
                ),
            }
        }
        None => match which("bwrap") {
            None => add(
                "sandbox",
                Level::Fail,
                "bubblewrap is not installed (apt-get install bubblewrap) and SANDBOX_WRAPPER is not set, so every sandboxed job (policy.sandbox defaults to true) fails".into(),
            ),
            Some(p) => match userns_problem() {
                Some(why) => add("sandbox", Level::Fail, format!("bubblewrap at {} cannot create a sandbox: {why}", p.display())),
                None => add("sandbox", Level::Ok, format!("bubblewrap found at {}", p.display())),
            },
        },
    }
    let config = match contracts::config::path_opt(env, &contracts::env::AGENTS_CONFIG) {
        Ok(Some(p)) => p,
        Ok(None) => return,
        Err(e) => {
            add("agents", Level::Fail, e.to_string());
            return;
        }
    };
    let doc: Option<serde_json::Value> = std::fs::read(&config)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(doc) = doc else {
        add(
            "agents",
            Level::Fail,
            format!(
                "AGENTS_CONFIG {} is not a readable JSON file",
                config.display()
            ),
        );
        return;
    };
    let agents = match &doc {
        serde_json::Value::Array(a) => a.as_slice(),
        other => other
            .get("agents")
            .and_then(serde_json::Value::as_array)
            .map_or(&[][..], Vec::as_slice),
    };
    let mut missing = 0;
    for agent in agents {
        let name = agent
            .get("name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?");
        let paths = agent.get("ro_paths").and_then(serde_json::Value::as_array);
        for p in paths
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
        {
            if !Path::new(p).is_absolute() || !Path::new(p).exists() {
                missing += 1;
                add(
                    "agents",
                    Level::Fail,
                    format!(
                        "agent {name}: ro_paths entry {p} is not an existing absolute path (its sandbox could not mount it)"
                    ),
                );
            }
        }
    }
    if let Some(seed) = doc
        .get("state_seed_dir")
        .and_then(serde_json::Value::as_str)
        && !Path::new(seed).is_dir()
    {
        missing += 1;
        add(
            "agents",
            Level::Fail,
            format!("state_seed_dir {seed} is not a directory"),
        );
    }
    if missing == 0 {
        add(
            "agents",
            Level::Ok,
            format!("every path of AGENTS_CONFIG {} exists", config.display()),
        );
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Why unprivileged user namespaces (which bubblewrap needs) are off, if
/// the kernel says so.
fn userns_problem() -> Option<String> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    if read("/proc/sys/user/max_user_namespaces") == Some(0) {
        return Some("user.max_user_namespaces is 0".into());
    }
    if read("/proc/sys/kernel/unprivileged_userns_clone") == Some(0)
        && !nix::unistd::geteuid().is_root()
    {
        return Some("kernel.unprivileged_userns_clone is 0".into());
    }
    None
}

fn probe_writable(dir: &Path) -> Result<(), String> {
    fsqueue::durable::create_dir_all(dir).map_err(|e| e.to_string())?;
    let probe = dir.join(format!(".orch-doctor-{}", std::process::id()));
    fsqueue::durable::write_file(&probe, b"probe").map_err(|e| e.to_string())?;
    fsqueue::durable::remove_file(&probe).map_err(|e| e.to_string())
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

pub(crate) fn which(bin: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}
