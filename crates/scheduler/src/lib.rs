//! `orch-scheduler`: the housekeeping process. For now it reaps expired
//! leases (so abandoned jobs come back even when every runner is down or
//! busy); cron schedules and retention build on the same loop.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub queue_root: PathBuf,
    pub artifacts_root: PathBuf,
    pub lease: Duration,
    pub max_reclaims: u32,
}

impl Config {
    pub fn resolve(env: &contracts::env::EnvSource) -> Result<Self, contracts::env::ConfigError> {
        let paths = contracts::config::Paths::resolve(env)?;
        Ok(Self {
            queue_root: paths.queue_root,
            artifacts_root: paths.artifacts_root,
            lease: Duration::from_secs(env.get_u64_range(
                &contracts::env::RUNNER_LEASE_SEC,
                1,
                3600,
            )?),
            max_reclaims: env.get_u64_range(&contracts::env::RUNNER_MAX_RECLAIMS, 0, 100)? as u32,
        })
    }
}

/// Runs until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let queue = fsqueue::Queue::open(&cfg.queue_root).map_err(|e| e.to_string())?;
    let store = artifacts::ArtifactStore::new(&cfg.artifacts_root);
    let reaper = fsqueue::Reaper::new(queue, cfg.lease, cfg.max_reclaims);
    let every = (cfg.lease / 3).clamp(Duration::from_millis(500), Duration::from_secs(10));
    tracing::info!(
        reap_every_ms = every.as_millis() as u64,
        "scheduler started"
    );
    tokio::pin!(shutdown);
    // Ticks at least as often as systemd's watchdog wants a ping.
    let every = fsqueue::notify::watchdog_interval().map_or(every, |w| every.min(w));
    let mut tick = tokio::time::interval(every);
    fsqueue::notify::ready();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        fsqueue::notify::watchdog();
        let r = reaper.clone();
        match tokio::task::spawn_blocking(move || r.reap()).await {
            Ok(Ok(outcomes)) => {
                for o in outcomes {
                    artifacts::control::record_reaped(&reaper.queue, &store, &o);
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "reap pass failed"),
            Err(e) => tracing::warn!(error = %e, "reap task failed"),
        }
    }
    tracing::info!("scheduler stopped");
    Ok(())
}
