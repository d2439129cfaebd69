//! `orch doctor`: checks that an installation can work before a job finds
//! out the hard way. Exit 1 when any check fails; warnings do not fail.

use crate::{CliError, print_json};
use serde_json::json;
use std::path::Path;
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
        let sandbox = env.get_bool(&contracts::env::SANDBOX).unwrap_or(true);
        if real {
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
        match (which("bwrap"), wrapper) {
            (_, Some(w)) => add("sandbox", Level::Ok, format!("SANDBOX_WRAPPER={w}")),
            (Some(p), None) => add("sandbox", Level::Ok, format!("bubblewrap found at {}", p.display())),
            (None, None) if real && sandbox => add("sandbox", Level::Fail, "SANDBOX=1 with real CLIs needs bubblewrap (apt-get install bubblewrap) or SANDBOX_WRAPPER".into()),
            (None, None) => add("sandbox", Level::Info, "bubblewrap not installed (needed only for real CLIs with SANDBOX=1)".into()),
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
        println!(
            "{}",
            if failed {
                "doctor: problems found"
            } else {
                "doctor: all good"
            }
        );
    }
    Ok(if failed { 1 } else { 0 })
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
