//! `orch dev`: the whole stack in one command — a gateway, a runner and the
//! scheduler as child processes sharing the configured queue, artifacts and
//! workspaces (`./var/queue`, `./artifacts`, `./workspaces` by default), in
//! the configured mode (simulation unless `ENABLE_REAL_CLI=1`). Ctrl-C stops
//! them all gracefully; if one of them dies, the others are stopped too.
//!
//! The banner shows the resolved paths, the mode and the gateway address
//! (`--bind`, else `GATEWAY_BIND`); it never shows the webhook token's
//! value.

use crate::CliError;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const DEV_TOKEN: &str = "dev-token";

pub fn dev(bind: Option<&str>) -> Result<u8, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::failed(format!("cannot locate the orch binary: {e}")))?;
    let dir = exe.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let env = contracts::env::EnvSource::load()?;
    let paths = contracts::config::Paths::resolve(&env)?;
    let bind = match bind {
        Some(b) => b.to_owned(),
        None => env
            .get_str(&contracts::env::GATEWAY_BIND)?
            .unwrap_or_else(|| contracts::env::GATEWAY_BIND.default.to_owned()),
    };
    let bind = bind.as_str();
    let real = env.get_bool(&contracts::env::ENABLE_REAL_CLI)?;
    let sandbox = env.get_bool(&contracts::env::SANDBOX)?;
    let own_token = env
        .get_str(&contracts::env::WEBHOOK_TOKEN)?
        .filter(|t| !t.is_empty());
    let token = own_token.clone().unwrap_or_else(|| DEV_TOKEN.to_owned());
    let mut children: Vec<(&str, Child)> = Vec::new();
    for name in ["orch-gateway", "orch-runner", "orch-scheduler"] {
        let bin = dir.join(name);
        if !bin.is_file() {
            stop_all(&mut children);
            return Err(
                CliError::failed(format!("{} not found next to orch", bin.display()))
                    .hint("build every binary first: cargo build --release (or use `just dev`)"),
            );
        }
        // orch's own sibling binaries, not agents: the executor's allowlist
        // and sandbox are for untrusted tools.
        #[allow(clippy::disallowed_methods)]
        let mut cmd = Command::new(&bin);
        cmd.env("ORCH_DEV", "1").env("WEBHOOK_TOKEN", &token);
        if name == "orch-gateway" {
            cmd.env("GATEWAY_BIND", bind);
        }
        match cmd.spawn() {
            Ok(c) => children.push((name, c)),
            Err(e) => {
                stop_all(&mut children);
                return Err(CliError::failed(format!(
                    "cannot start {}: {e}",
                    bin.display()
                )));
            }
        }
    }
    // Never the token's value: it may be a real credential.
    let (token_note, token_ref) = match own_token {
        Some(_) => ("WEBHOOK_TOKEN (value not shown)", "$WEBHOOK_TOKEN"),
        None => (
            "the development token dev-token (set WEBHOOK_TOKEN to choose one)",
            DEV_TOKEN,
        ),
    };
    let mode = if real {
        format!(
            "real agent CLIs (ENABLE_REAL_CLI=1, SANDBOX={})",
            u8::from(sandbox)
        )
    } else {
        "simulation (ENABLE_REAL_CLI=1 runs the real agent CLIs)".to_owned()
    };
    eprintln!("orch dev: gateway http://{bind}  (token: {token_note})");
    eprintln!(
        "orch dev: queue {}, artifacts {}, workspaces {}",
        paths.queue_root.display(),
        paths.artifacts_root.display(),
        paths.workspaces_root.display()
    );
    eprintln!("orch dev: mode {mode}");
    eprintln!(
        "orch dev: try  curl -H \"Authorization: Bearer {token_ref}\" -H 'Content-Type: application/json' -d '{{\"goal\":\"hello\"}}' http://{bind}/webhook"
    );
    eprintln!("orch dev: Ctrl-C stops everything");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(e.to_string()))?;
    let died = rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let shutdown = fsqueue::signal::shutdown();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return None,
                _ = tick.tick() => {
                    for (name, c) in children.iter_mut() {
                        if let Ok(Some(st)) = c.try_wait() {
                            return Some(format!("{name} exited ({st})"));
                        }
                    }
                }
            }
        }
    });
    if let Some(why) = &died {
        eprintln!("orch dev: {why}; stopping the others");
    } else {
        eprintln!("orch dev: stopping");
    }
    stop_all(&mut children);
    Ok(if died.is_some() { 1 } else { 0 })
}

/// SIGTERM every child, wait for their graceful shutdown, SIGKILL stragglers.
fn stop_all(children: &mut [(&str, Child)]) {
    for (_, c) in children.iter() {
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    for (name, c) in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    eprintln!("orch dev: {name} did not stop in time; killing it");
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}
