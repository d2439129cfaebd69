//! `orch-scheduler`: the housekeeping process. It reaps expired leases (so
//! abandoned jobs come back even when every runner is down or busy) and
//! applies retention (`retention`) and housekeeping (`housekeeping`: dead
//! runners' files, stale operator requests, orphan temp files); cron
//! schedules will build on the same loop.

pub mod housekeeping;
pub mod retention;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub queue_root: PathBuf,
    pub artifacts_root: PathBuf,
    pub workspaces_root: PathBuf,
    pub metrics_dir: PathBuf,
    pub lease: Duration,
    pub max_reclaims: u32,
    /// `RETENTION_INTERVAL_SEC`; `None` turns retention off.
    pub retention_every: Option<Duration>,
    pub artifacts_ttl: Duration,
    pub workspaces_ttl: Duration,
    pub dedup_window: Duration,
}

impl Config {
    pub fn resolve(env: &contracts::env::EnvSource) -> Result<Self, contracts::env::ConfigError> {
        use contracts::env as ev;
        let paths = contracts::config::Paths::resolve(env)?;
        const TEN_YEARS: u64 = 10 * 365 * 86_400;
        let secs = |v: &contracts::env::EnvVar, min: u64, max: u64| {
            env.get_u64_range(v, min, max).map(Duration::from_secs)
        };
        let every = secs(&ev::RETENTION_INTERVAL_SEC, 0, 7 * 86_400)?;
        Ok(Self {
            queue_root: paths.queue_root,
            artifacts_root: paths.artifacts_root,
            workspaces_root: paths.workspaces_root,
            metrics_dir: paths.metrics_dir,
            retention_every: (!every.is_zero()).then_some(every),
            artifacts_ttl: secs(&ev::ARTIFACTS_TTL_SEC, 1, TEN_YEARS)?,
            workspaces_ttl: secs(&ev::WORKSPACES_TTL_SEC, 1, TEN_YEARS)?,
            dedup_window: secs(&ev::DEDUP_WINDOW_SEC, 604_800, TEN_YEARS)?,
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
    let retention = retention::Retention {
        queue: queue.clone(),
        store: store.clone(),
        workspaces_root: cfg.workspaces_root.clone(),
        artifacts_ttl: cfg.artifacts_ttl,
        workspaces_ttl: cfg.workspaces_ttl,
        queue_ttl: cfg.dedup_window,
    };
    let housekeeping = housekeeping::Housekeeping {
        queue: queue.clone(),
        artifacts_root: cfg.artifacts_root.clone(),
        metrics_dir: cfg.metrics_dir.clone(),
        lease: cfg.lease,
    };
    let reaper = fsqueue::Reaper::new(queue, cfg.lease, cfg.max_reclaims);
    let every = (cfg.lease / 3).clamp(Duration::from_millis(500), Duration::from_secs(10));
    tracing::info!(
        reap_every_ms = every.as_millis() as u64,
        retention_every_sec = cfg.retention_every.map(|d| d.as_secs()),
        "scheduler started"
    );
    tokio::pin!(shutdown);
    // Ticks at least as often as systemd's watchdog wants a ping.
    let every = fsqueue::notify::watchdog_interval().map_or(every, |w| every.min(w));
    let mut tick = tokio::time::interval(every);
    let mut next_sweep = cfg.retention_every.map(|_| tokio::time::Instant::now());
    // Housekeeping keeps the retention cadence, and runs every five minutes
    // with retention off.
    let tidy_every = cfg.retention_every.unwrap_or(Duration::from_secs(300));
    let mut next_tidy = tokio::time::Instant::now();
    fsqueue::notify::ready();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        fsqueue::notify::watchdog();
        if let (Some(at), Some(period)) = (next_sweep, cfg.retention_every)
            && tokio::time::Instant::now() >= at
        {
            next_sweep = Some(at + period);
            let r = retention.clone();
            match tokio::task::spawn_blocking(move || r.sweep(std::time::SystemTime::now())).await {
                Ok(s) if s != retention::Swept::default() => tracing::info!(
                    workspaces = s.workspaces,
                    artifacts = s.artifacts,
                    queue_files = s.queue_files,
                    "retention sweep"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
            }
        }
        if tokio::time::Instant::now() >= next_tidy {
            next_tidy = tokio::time::Instant::now() + tidy_every;
            let h = housekeeping.clone();
            match tokio::task::spawn_blocking(move || h.run()).await {
                Ok(t) if t != housekeeping::Tidied::default() => tracing::info!(
                    dead_runners = ?t.dead_runners,
                    requests = t.requests,
                    temp_files = t.temps,
                    "housekeeping"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
            }
        }
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
