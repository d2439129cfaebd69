//! `orch-gateway`: the HTTP face of orch. It takes jobs in (`POST /webhook`
//! with a bearer token, `POST /webhook/github` with GitHub's HMAC
//! signature), lets operators read and move them (`/jobs`), and reports on
//! the whole system (`/health`, `/metrics`). It shares nothing with the
//! other processes but the queue directory, the artifacts tree and
//! `var/metrics/*.prom`: an accepted job is a durable file in `pending/`
//! (or `awaiting_approval/`) and nothing else.
//!
//! Module map: `config` (flags + environment → [`Config`]), `server` (accept
//! loop, connection limits, timeouts, graceful shutdown), `app` (router,
//! metrics and audit per request), `intake` (the two intake routes),
//! `dedup` (delivery records), `jobs` (job API), `schedules` (read-only
//! `GET /schedules`), `status` (health and metrics), `auth`, `ratelimit`, `github`, `promtext`, `crypto`, `http`.
//! The API is documented in `docs/API.md` and `crates/gateway/openapi.json`.

mod app;
pub mod auth;
pub mod batch;
pub mod config;
pub mod crypto;
pub mod dedup;
pub mod github;
mod http;
mod intake;
mod jobs;
mod leftovers;
pub mod promtext;
pub mod ratelimit;
mod schedules;
mod server;
mod status;

pub use config::{Args, Config};

use app::App;
use contracts::NormalizeOptions;
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the queue at {path}: {source}")]
    Queue {
        path: std::path::PathBuf,
        #[source]
        source: fsqueue::QueueError,
    },
    #[error("cannot prepare {path}: {source}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: fsqueue::durable::DurableError,
    },
    #[error(
        "cannot listen on {addr}: {source}\nhint: is another process using the port? set GATEWAY_BIND or --bind"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls are
/// no-ops). Durations ending in `_seconds` become real histograms.
pub fn install_metrics() {
    if PROMETHEUS.get().is_some() {
        return;
    }
    let buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let builder = metrics_exporter_prometheus::PrometheusBuilder::new();
    let builder = match builder.set_buckets_for_metric(
        metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
        &buckets,
    ) {
        Ok(b) => b,
        Err(_) => metrics_exporter_prometheus::PrometheusBuilder::new(),
    };
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_ok() {
        let _ = PROMETHEUS.set(handle);
    }
}

/// Runs the gateway until `shutdown` resolves, then finishes in-flight
/// requests (up to `config.shutdown_grace`) and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let queue = fsqueue::Queue::open(&config.queue_root).map_err(|source| Error::Queue {
        path: config.queue_root.clone(),
        source,
    })?;
    let deliveries = dedup::Deliveries::open(&config.queue_root).map_err(|source| Error::Dir {
        path: config.queue_root.join(dedup::DELIVERIES_DIR),
        source,
    })?;
    warn_about_config(&config);
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|source| Error::Bind {
            addr: config.bind,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.bind,
        source,
    })?;
    let normalize_opts = NormalizeOptions {
        default_artifact_handoff: config.default_artifact_handoff,
        known_agents: config.known_agents.clone(),
        project_ids: config.project_ids.clone(),
        extra_metadata: Default::default(),
        prompts_dir: config.prompts_dir.clone(),
    };
    let intake = batch::Batcher::start(queue.clone()).map_err(|source| Error::Dir {
        path: config.queue_root.clone(),
        source: fsqueue::durable::DurableError::new(
            "start the intake writer",
            &config.queue_root,
            source,
        ),
    })?;
    let app = Arc::new(App {
        intake,
        store: artifacts::ArtifactStore::new(&config.artifacts_root),
        client_limits: ratelimit::Limiter::new(config.rate_window, config.rate_max),
        token_limits: ratelimit::Limiter::new(config.rate_window, config.rate_max),
        queue,
        deliveries,
        normalize_opts,
        status: Default::default(),
        summaries: Default::default(),
        prometheus: PROMETHEUS.get().cloned(),
        cfg: config,
    });
    let maintenance = tokio::spawn(maintain(app.clone()));
    let watchdog = tokio::spawn(watchdog(app.clone()));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        queue = %app.cfg.queue_root.display(),
        "listening on http://{local}"
    );
    fsqueue::notify::ready();
    server::serve(listener, app, shutdown).await;
    maintenance.abort();
    watchdog.abort();
    tracing::info!("gateway stopped");
    Ok(())
}

fn warn_about_config(cfg: &Config) {
    if cfg.tokens.is_dev_token && !cfg.dev_mode {
        tracing::warn!(
            "WEBHOOK_TOKEN is the well-known dev-token outside `orch dev`: anyone can submit, read and administer jobs; set a random token"
        );
    }
    if cfg.tokens.is_empty() {
        tracing::warn!(
            "neither WEBHOOK_TOKEN nor WEBHOOK_TOKENS is set: POST /webhook and /jobs refuse every request"
        );
    }
    if cfg.github_secret.is_none() {
        tracing::info!("GITHUB_WEBHOOK_SECRET is unset: POST /webhook/github is disabled");
    }
}

/// systemd watchdog pings (when asked for): each one after a round trip
/// through the blocking pool and the queue directory, so a wedged runtime or
/// an unreachable queue stops the pings.
async fn watchdog(app: Arc<App>) {
    let Some(every) = fsqueue::notify::watchdog_interval() else {
        return;
    };
    loop {
        tokio::time::sleep(every / 2).await;
        let a = app.clone();
        let ok = tokio::task::spawn_blocking(move || a.queue.root().is_dir())
            .await
            .unwrap_or(false);
        if ok {
            fsqueue::notify::watchdog();
        } else {
            tracing::warn!("queue directory unreachable; withholding the watchdog ping");
        }
    }
}

/// Background upkeep, never in the way of a request (it holds no lock a
/// request waits for, except a record's finish lock while it finishes
/// that record). At start-up and then every minute: finish the deliveries
/// of dead gateways, found from their indexes (see `dedup`), and remove
/// temporary files dead gateways left in the intake directories. A dead
/// gateway of an older version (no index) costs one background scan of
/// all records. A minute after start-up and then hourly: prune records
/// past the dedup window, in bounded steps.
async fn maintain(app: Arc<App>) {
    let started = std::time::Instant::now();
    let mut last_prune: Option<std::time::Instant> = None;
    loop {
        let a = app.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let r = intake::finish_dead_writers(&a);
            if r.owners > 0 {
                tracing::info!(
                    owners = r.owners,
                    records = r.records,
                    finished = r.finished,
                    left = r.left,
                    "recovered the deliveries of dead gateways"
                );
            }
            if r.unindexed > 0 {
                for (key, rec) in a.deliveries.scan_orphans() {
                    if let Err(e) = intake::resolve(&a, &key) {
                        tracing::warn!(job_id = %rec.job_id, error = %e, "could not finish an interrupted delivery");
                    }
                }
                a.deliveries.prune_unindexed_owners();
            }
            let swept = leftovers::sweep_temp_files(&a.queue);
            if swept > 0 {
                tracing::info!(removed = swept, "removed temporary files of dead writers");
            }
        })
        .await;
        let due = match last_prune {
            None => started.elapsed() >= PRUNE_AFTER,
            Some(t) => t.elapsed() >= Duration::from_secs(3600),
        };
        if due {
            prune(&app).await;
            last_prune = Some(std::time::Instant::now());
        }
        tokio::time::sleep(leftovers::SWEEP_EVERY).await;
    }
}

/// How long a gateway serves before its first prune pass: a gateway that
/// keeps crashing spends nothing on history.
const PRUNE_AFTER: Duration = Duration::from_secs(60);

/// One prune pass over `deliveries/`, a bounded step at a time, each its
/// own blocking task with a pause after it, so requests never queue behind
/// the pass.
async fn prune(app: &Arc<App>) {
    let mut walk: Option<std::fs::ReadDir> = None;
    let (mut removed, mut steps) = (0, 0);
    loop {
        let a = app.clone();
        let Ok((w, step)) = tokio::task::spawn_blocking(move || {
            let mut w = walk;
            let step = a.deliveries.prune_step(&mut w, a.cfg.dedup_window);
            (w, step)
        })
        .await
        else {
            return;
        };
        walk = w;
        removed += step.removed;
        steps += 1;
        if step.done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::info!(removed, steps, "pruned expired delivery records");
}
