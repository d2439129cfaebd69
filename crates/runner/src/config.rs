//! The runner's configuration, resolved once at start-up: command-line flag,
//! then environment (and `.env`), then default. An invalid value is a
//! start-up error that names the variable; nothing falls back silently.

use crate::prompt::InputLimits;
use clap::Parser;
use contracts::env as ev;
use std::path::PathBuf;
use std::time::Duration;

/// Claims jobs from the file queue and runs their steps with agent CLIs
/// (simulated unless ENABLE_REAL_CLI=1).
///
/// Every option can also be set through the environment variable named in
/// its description (see docs/CONFIGURATION.md); flags win over the
/// environment, which wins over a `.env` file in the working directory.
#[derive(Debug, Parser)]
#[command(name = "orch-runner", version, about, long_about = None)]
pub struct Args {
    /// Runner id, used in claim names and heartbeats [default: <host>-<pid>-<random>]
    // The text is --help's; rustdoc would read <host> as an HTML tag.
    #[allow(rustdoc::invalid_html_tags)]
    #[arg(long = "id", value_name = "NAME")]
    pub id: Option<String>,
    /// Jobs run at once by this process [env: RUNNER_CONCURRENCY, default 2]
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u64>,
    /// Process until no due job is pending and nothing is running, then exit 0 (deferred jobs stay)
    #[arg(long)]
    pub drain: bool,
    /// Queue root [env: QUEUE_ROOT, default var/queue]
    #[arg(long, value_name = "DIR")]
    pub queue_root: Option<PathBuf>,
    /// Artifacts root [env: ARTIFACTS_ROOT, default artifacts]
    #[arg(long, value_name = "DIR")]
    pub artifacts_root: Option<PathBuf>,
    /// Workspaces root [env: WORKSPACES_ROOT, default workspaces]
    #[arg(long, value_name = "DIR")]
    pub workspaces_root: Option<PathBuf>,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub queue_root: PathBuf,
    pub artifacts_root: PathBuf,
    pub workspaces_root: PathBuf,
    /// `WORKSPACE_MAX_BYTES`, `WORKSPACE_MAX_FILES`.
    pub workspace_limits: workers::WorkspaceLimits,
    pub metrics_dir: PathBuf,
    pub runner_id: String,
    pub concurrency: usize,
    pub lease: Duration,
    pub max_reclaims: u32,
    pub max_goto: u32,
    pub shutdown_grace: Duration,
    pub sim_step_ms: u64,
    pub drain: bool,
    pub input_limits: InputLimits,
    pub prompts_dir: Option<PathBuf>,
    pub project_aliases: Vec<(String, PathBuf)>,
    /// `SECRETS_POLICY=fail`: a step whose artifacts held a secret fails.
    pub secrets_fail: bool,
    /// Values of `SENSITIVE_ENV_VARS` (name, value), redacted from artifacts.
    pub sensitive_env: Vec<(String, String)>,
    /// `CALLBACK_SECRET`: key of the callbacks' `X-Orch-Signature-256`.
    pub callback_secret: Option<String>,
    /// `CALLBACK_ALLOW_PRIVATE=1`: callbacks may reach loopback, link-local
    /// and private addresses.
    pub callback_allow_private: bool,
    /// The budget gate's limits, estimates and ledger path.
    pub budget: artifacts::budget::BudgetConfig,
    /// The resolved environment, for the parts (agents, sandbox) configured
    /// by the workers crate.
    pub env: ev::EnvSource,
}

impl Config {
    /// Resolves flags, environment and defaults.
    pub fn resolve(args: &Args, env: &ev::EnvSource) -> Result<Self, ev::ConfigError> {
        let paths = contracts::config::Paths::resolve(env)?;
        let runner_id = match &args.id {
            Some(id) => {
                if !fsqueue::name::is_valid_runner_id(id) {
                    return Err(ev::ConfigError::Invalid {
                        var: "--id",
                        value: format!("{:?}", id),
                        expected: "1..64 characters of [A-Za-z0-9_-]".into(),
                    });
                }
                id.clone()
            }
            None => default_runner_id(),
        };
        let concurrency = match args.concurrency {
            Some(n) if (1..=256).contains(&n) => n as usize,
            Some(n) => {
                return Err(ev::ConfigError::Invalid {
                    var: "--concurrency",
                    value: format!("{:?}", &n.to_string()),
                    expected: "an integer from 1 to 256".into(),
                });
            }
            None => env.get_u64_range(&ev::RUNNER_CONCURRENCY, 1, 256)? as usize,
        };
        artifacts::budget::install_test_clock(env)?;
        // Superseded knobs are accepted (so MVP environments keep starting)
        // but only validated.
        for var in [&ev::RUNNER_POLL_INTERVAL_SEC, &ev::RUNNER_RECLAIM_AFTER_SEC] {
            if env.get_str(var)?.is_some() {
                env.get_u64_range(var, 0, 86_400 * 7)?;
                tracing::warn!(
                    var = var.name,
                    "superseded: orch wakes on notifications and reclaims by lease; the value is ignored"
                );
            }
        }
        Ok(Self {
            // Flags, like the variables, are resolved to absolute paths.
            queue_root: absolute_or(&args.queue_root, paths.queue_root)?,
            artifacts_root: absolute_or(&args.artifacts_root, paths.artifacts_root)?,
            workspaces_root: absolute_or(&args.workspaces_root, paths.workspaces_root)?,
            workspace_limits: workers::WorkspaceLimits {
                max_bytes: env.get_u64_range(&ev::WORKSPACE_MAX_BYTES, 1, u64::MAX)?,
                max_files: env.get_u64_range(&ev::WORKSPACE_MAX_FILES, 1, u64::MAX)?,
            },
            metrics_dir: paths.metrics_dir,
            runner_id,
            concurrency,
            lease: Duration::from_secs(env.get_u64_range(&ev::RUNNER_LEASE_SEC, 1, 3600)?),
            max_reclaims: env.get_u64_range(&ev::RUNNER_MAX_RECLAIMS, 0, 100)? as u32,
            max_goto: env.get_u64_range(&ev::RUNNER_MAX_GOTO, 0, 1000)? as u32,
            shutdown_grace: Duration::from_secs(env.get_u64_range(
                &ev::RUNNER_SHUTDOWN_GRACE_SEC,
                0,
                3600,
            )?),
            sim_step_ms: env.get_u64_range(&ev::SIMULATION_STEP_MS, 0, 3_600_000)?,
            drain: args.drain,
            input_limits: InputLimits {
                max_files: env.get_u64_range(&ev::MAX_INPUT_ARTIFACTS_FILES, 0, 1000)? as usize,
                max_file_chars: env.get_u64_range(&ev::MAX_INPUT_ARTIFACT_CHARS, 0, 10_000_000)?
                    as usize,
                max_total_chars: env.get_u64_range(
                    &ev::MAX_INPUT_ARTIFACTS_CHARS,
                    0,
                    100_000_000,
                )? as usize,
            },
            prompts_dir: contracts::config::path_opt(env, &ev::PROMPTS_DIR)?,
            project_aliases: paths.project_aliases,
            secrets_fail: env.get_enum(&ev::SECRETS_POLICY, &["fail", "redact"])? == "fail",
            sensitive_env: env
                .get_list(&ev::SENSITIVE_ENV_VARS)?
                .into_iter()
                .filter_map(|name| env.raw(&name).map(|v| (name.clone(), v.to_owned())))
                .collect(),
            callback_secret: env.get_str(&ev::CALLBACK_SECRET)?.filter(|s| !s.is_empty()),
            callback_allow_private: env.get_bool(&ev::CALLBACK_ALLOW_PRIVATE)?,
            budget: artifacts::budget::BudgetConfig::resolve(env)?,
            env: env.clone(),
        })
    }
}

/// A path flag made absolute, or the (already absolute) configured path.
fn absolute_or(flag: &Option<PathBuf>, configured: PathBuf) -> Result<PathBuf, ev::ConfigError> {
    match flag {
        None => Ok(configured),
        Some(p) => std::path::absolute(p).map_err(|e| ev::ConfigError::Invalid {
            var: "--path flag",
            value: format!("{:?}", p.display().to_string()),
            expected: format!("a path that can be made absolute ({e})"),
        }),
    }
}

fn default_runner_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "runner".into());
    let host: String = host.chars().take(40).collect();
    // Containers share hostname patterns and often run as PID 1 (and share
    // the host's boot id): a random suffix, drawn once per process, keeps
    // two runners from ever sharing an id by default.
    let suffix: String = contracts::ids::random_hex32().chars().take(8).collect();
    fsqueue::name::sanitize_runner_id(&format!("{host}-{}-{suffix}", std::process::id()))
}

/// Writes this runner's metrics in the Prometheus text format to
/// `<metrics_dir>/runner-<id>.prom` (the textfile-collector convention), for
/// the gateway to serve.
pub fn write_metrics_file(cfg: &Config) {
    let Some(h) = METRICS.get() else { return };
    let text = h.render();
    let path = cfg
        .metrics_dir
        .join(format!("runner-{}.prom", cfg.runner_id));
    if let Err(e) = fsqueue::durable::create_dir_all(&cfg.metrics_dir)
        .map_err(|e| e.source)
        .and_then(|()| crate::storage::write_advisory(&path, text.as_bytes()))
    {
        tracing::debug!(error = %e, "could not write metrics file");
    }
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
