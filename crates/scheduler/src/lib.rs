//! `orch-scheduler`: fires cron schedules (`schedules`: each slot's job
//! enqueued exactly once, however many schedulers share the queue), reaps
//! expired leases (so abandoned jobs come back even when every runner is
//! down or busy), applies retention (`retention`) and housekeeping
//! (`housekeeping`: dead runners' files, stale operator requests, orphan
//! temp files). Its metrics go to `METRICS_DIR/scheduler-<host>-<pid>.prom`
//! for the gateway's `/metrics`.

pub mod clock;
pub mod housekeeping;
pub mod retention;
pub mod schedules;

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
    pub schedules_dir: PathBuf,
    /// How schedule payloads become jobs (as for `orch submit`).
    pub normalize: contracts::NormalizeOptions,
    /// `SCHEDULER_TEST_CLOCK`, else the system clock.
    pub clock: clock::Clock,
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
        let clock = match env.get_str(&ev::SCHEDULER_TEST_CLOCK)? {
            None => clock::Clock::system(),
            Some(v) => {
                clock::Clock::parse(&v).map_err(|why| contracts::env::ConfigError::Invalid {
                    var: ev::SCHEDULER_TEST_CLOCK.name,
                    value: format!("{:?}", v.chars().take(80).collect::<String>()),
                    expected: why,
                })?
            }
        };
        let normalize = contracts::NormalizeOptions {
            default_artifact_handoff: contracts::config::artifact_handoff(env)?,
            known_agents: contracts::config::known_agents(env)?,
            project_ids: paths
                .project_aliases
                .iter()
                .map(|(id, _)| id.clone())
                .collect(),
            extra_metadata: Default::default(),
            prompts_dir: contracts::config::path_opt(env, &ev::PROMPTS_DIR)?,
        };
        Ok(Self {
            schedules_dir: paths.schedules_dir,
            normalize,
            clock,
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
    tokio::pin!(shutdown);
    // Polled once first so its signal handlers are in place before any
    // work: a SIGTERM during start-up or the first schedule pass must stop
    // the loop cleanly, not kill the process.
    tokio::select! {
        biased;
        _ = &mut shutdown => return Ok(()),
        _ = std::future::ready(()) => {}
    }
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
    let engine = std::sync::Arc::new(std::sync::Mutex::new(schedules::Engine::new(
        cfg.schedules_dir.clone(),
        queue.clone(),
        cfg.normalize.clone(),
    )));
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let watch = schedules::spawn_watch(cfg.schedules_dir.clone(), changed.clone());
    let metrics_file = metrics_file(&cfg.metrics_dir);
    let reaper = fsqueue::Reaper::new(queue, cfg.lease, cfg.max_reclaims);
    let every = (cfg.lease / 3).clamp(Duration::from_millis(500), Duration::from_secs(10));
    tracing::info!(
        reap_every_ms = every.as_millis() as u64,
        retention_every_sec = cfg.retention_every.map(|d| d.as_secs()),
        schedules_dir = %cfg.schedules_dir.display(),
        "scheduler started"
    );
    // Ticks at least as often as systemd's watchdog wants a ping.
    let every = fsqueue::notify::watchdog_interval().map_or(every, |w| every.min(w));
    let mut next_tick = tokio::time::Instant::now();
    let mut rescan = true;
    let mut next_sweep = cfg.retention_every.map(|_| tokio::time::Instant::now());
    // Housekeeping keeps the retention cadence, and runs every five minutes
    // with retention off.
    let tidy_every = cfg.retention_every.unwrap_or(Duration::from_secs(300));
    let mut next_tidy = tokio::time::Instant::now();
    fsqueue::notify::ready();
    loop {
        // Schedules: rescan when the directory changed (and every tick),
        // then fire what is due.
        let now = cfg.clock.now();
        let eng = engine.clone();
        let due = tokio::task::spawn_blocking(move || {
            let mut e = eng.lock().unwrap_or_else(|p| p.into_inner());
            if rescan {
                e.rescan(now);
            }
            e.fire_due(now);
            e.next_due()
        })
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "schedule pass failed");
            None
        });
        rescan = false;
        write_metrics(&metrics_file);
        let until_tick = next_tick.saturating_duration_since(tokio::time::Instant::now());
        let wait = due.map_or(until_tick, |t| cfg.clock.real_wait(t).min(until_tick));
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(wait) => {}
            _ = changed.notified() => {
                // Let an editor finish writing before reading.
                tokio::time::sleep(Duration::from_millis(50)).await;
                rescan = true;
                continue;
            }
        }
        if tokio::time::Instant::now() < next_tick {
            continue;
        }
        next_tick = tokio::time::Instant::now() + every;
        rescan = true;
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
                    orphan_reasons = t.reasons,
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
    watch.abort();
    if let Some(p) = &metrics_file {
        let _ = fsqueue::durable::remove_file(p);
    }
    tracing::info!("scheduler stopped");
    Ok(())
}

static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// Installs the process-wide metrics recorder (once).
pub fn install_metrics() {
    if METRICS.get().is_some() {
        return;
    }
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_ok() {
        let _ = METRICS.set(handle);
    }
}

/// `<metrics_dir>/scheduler-<host>-<pid>.prom` (two schedulers on one host
/// must not overwrite each other's counters); removed on a clean stop.
fn metrics_file(dir: &std::path::Path) -> Option<PathBuf> {
    METRICS.get()?;
    if let Err(e) = fsqueue::durable::create_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create the metrics directory");
        return None;
    }
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into());
    let id = fsqueue::name::sanitize_runner_id(&format!("{host}-{}", std::process::id()));
    Some(dir.join(format!("scheduler-{id}.prom")))
}

/// Publishes the recorder's current text (only when it changed).
fn write_metrics(path: &Option<PathBuf>) {
    static LAST: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
    let (Some(path), Some(h)) = (path, METRICS.get()) else {
        return;
    };
    let text = h.render();
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if *last == text {
        return;
    }
    match fsqueue::durable::write_file(path, text.as_bytes()) {
        Ok(()) => *last = text,
        Err(e) => tracing::debug!(error = %e, "could not write the metrics file"),
    }
}
