//! The gateway's configuration, resolved once at start-up into a plain
//! [`Config`]: command-line flag, then environment (and `.env`, through
//! `contracts::env`), then default. Every value is checked here, so an
//! invalid one is a start-up error naming the variable or flag — the server
//! itself never parses configuration.

use crate::auth::{TokenSet, parse_tokens};
use crate::github::GithubMapping;
use crate::ratelimit::TrustedProxies;
use contracts::ArtifactHandoff;
use contracts::env::{self as ev, ConfigError, EnvSource};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The body limit of `POST /webhook/github` (GitHub's own maximum payload).
pub const GITHUB_BODY_LIMIT: usize = 25 * 1024 * 1024;

/// HTTP intake, job API, health and metrics of orch.
///
/// Every option can also be set through the environment variable named in
/// its description (see docs/CONFIGURATION.md); flags win over the
/// environment, which wins over a `.env` file in the working directory.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(name = "orch-gateway", version, about, long_about = None)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port [env: GATEWAY_BIND, default 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// Queue root [env: QUEUE_ROOT, default var/queue]
    #[arg(long, value_name = "DIR")]
    pub queue_root: Option<PathBuf>,
    /// Artifacts root [env: ARTIFACTS_ROOT, default artifacts]
    #[arg(long, value_name = "DIR")]
    pub artifacts_root: Option<PathBuf>,
    /// Directory of `*.prom` files served by /metrics [env: METRICS_DIR, default var/metrics]
    #[arg(long, value_name = "DIR")]
    pub metrics_dir: Option<PathBuf>,
    /// JSON file mapping GitHub events to jobs (see docs/API.md); unset uses the defaults
    #[arg(long, value_name = "FILE")]
    pub github_config: Option<PathBuf>,
    /// Time a client has to send a request's headers [env: GATEWAY_HEADER_TIMEOUT_MS, default 10000]
    #[arg(long, value_name = "MS")]
    pub header_timeout_ms: Option<u64>,
    /// Time a client has to send a request's body [env: GATEWAY_BODY_TIMEOUT_MS, default 30000]
    #[arg(long, value_name = "MS")]
    pub body_timeout_ms: Option<u64>,
    /// Connections served at once; past it only /health and /metrics are answered [env: GATEWAY_MAX_CONNECTIONS, default 1024]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u64>,
    /// More log output: each -v raises LOG_LEVEL one step; RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Everything the gateway needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub queue_root: PathBuf,
    pub artifacts_root: PathBuf,
    pub metrics_dir: PathBuf,
    /// `SCHEDULES_DIR`, shown read-only by `GET /schedules`.
    pub schedules_dir: PathBuf,
    pub tokens: TokenSet,
    pub rate_window: Duration,
    pub rate_max: u64,
    pub body_limit: usize,
    pub github_body_limit: usize,
    pub github_secret: Option<Vec<u8>>,
    pub github: GithubMapping,
    pub trusted_proxies: TrustedProxies,
    pub dedup_window: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    /// Connections one client address may hold open at once.
    pub max_connections_per_client: usize,
    /// How long in-flight requests may finish after SIGTERM.
    pub shutdown_grace: Duration,
    pub default_artifact_handoff: Option<ArtifactHandoff>,
    pub project_ids: Vec<String>,
    pub known_agents: Vec<String>,
    pub prompts_dir: Option<PathBuf>,
    /// The budget limits and ledger path, for `/health` and `/metrics`.
    pub budget: artifacts::budget::BudgetConfig,
    /// Started by `orch dev` (`ORCH_DEV=1`): the dev token is expected.
    pub dev_mode: bool,
}

fn invalid(var: &'static str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: format!("{:?}", value.chars().take(60).collect::<String>()),
        expected: expected.to_owned(),
    }
}

fn path_of(
    flag: &Option<PathBuf>,
    env: &EnvSource,
    var: &ev::EnvVar,
) -> Result<PathBuf, ConfigError> {
    let p = match flag {
        Some(p) => p.clone(),
        None => PathBuf::from(env.get_str(var)?.unwrap_or_default()),
    };
    // Absolute from start-up on, like every orch process's roots.
    if p.as_os_str().is_empty() {
        return Ok(p);
    }
    std::path::absolute(&p).map_err(|e| ConfigError::Invalid {
        var: var.name,
        value: format!("{:?}", p.display().to_string()),
        expected: format!("a path that can be made absolute ({e})"),
    })
}

/// A duration in milliseconds from its flag, else from its variable.
fn ms_setting(
    flag_value: Option<u64>,
    flag: &'static str,
    env: &EnvSource,
    var: &contracts::env::EnvVar,
) -> Result<Duration, ConfigError> {
    const RANGE: std::ops::RangeInclusive<u64> = 50..=3_600_000;
    match flag_value {
        None => Ok(Duration::from_millis(env.get_u64_range(
            var,
            *RANGE.start(),
            *RANGE.end(),
        )?)),
        Some(ms) if RANGE.contains(&ms) => Ok(Duration::from_millis(ms)),
        Some(ms) => Err(invalid(
            flag,
            &ms.to_string(),
            "milliseconds from 50 to 3600000",
        )),
    }
}

impl Config {
    /// Resolves flags, environment and defaults. Reads the GitHub mapping
    /// and agents files when they are configured.
    pub fn resolve(args: &Args, env: &EnvSource) -> Result<Self, ConfigError> {
        let bind_text = match &args.bind {
            Some(b) => b.clone(),
            None => env.get_str(&ev::GATEWAY_BIND)?.unwrap_or_default(),
        };
        let bind: SocketAddr = bind_text.parse().map_err(|_| {
            invalid(
                if args.bind.is_some() {
                    "--bind"
                } else {
                    ev::GATEWAY_BIND.name
                },
                &bind_text,
                "an address and port such as 127.0.0.1:8080 or [::1]:0",
            )
        })?;
        let tokens = parse_tokens(
            env.get_str(&ev::WEBHOOK_TOKEN)?.as_deref(),
            env.get_str(&ev::WEBHOOK_TOKENS)?.as_deref(),
        )?;
        let github_secret = env
            .get_str(&ev::GITHUB_WEBHOOK_SECRET)?
            .map(String::into_bytes);
        let github = match &args.github_config {
            Some(p) => GithubMapping::load(p)?,
            None => GithubMapping::default(),
        };
        let default_artifact_handoff = contracts::config::artifact_handoff(env)?;
        let project_ids: Vec<String> = contracts::config::project_aliases(env)?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let known_agents = contracts::config::known_agents(env)?;
        let prompts_dir = env.get_str(&ev::PROMPTS_DIR)?.map(PathBuf::from);
        let max_connections = match args.max_connections {
            None => env.get_u64_range(&ev::GATEWAY_MAX_CONNECTIONS, 1, 1_000_000)? as usize,
            Some(n) if (1..=1_000_000).contains(&n) => n as usize,
            Some(n) => {
                return Err(invalid(
                    "--max-connections",
                    &n.to_string(),
                    "a whole number from 1 to 1000000",
                ));
            }
        };
        Ok(Self {
            bind,
            queue_root: path_of(&args.queue_root, env, &ev::QUEUE_ROOT)?,
            artifacts_root: path_of(&args.artifacts_root, env, &ev::ARTIFACTS_ROOT)?,
            metrics_dir: path_of(&args.metrics_dir, env, &ev::METRICS_DIR)?,
            schedules_dir: path_of(&None, env, &ev::SCHEDULES_DIR)?,
            tokens,
            rate_window: Duration::from_secs(env.get_u64_range(
                &ev::WEBHOOK_RATE_LIMIT_WINDOW_SEC,
                1,
                86_400,
            )?),
            rate_max: env.get_u64_range(&ev::WEBHOOK_RATE_LIMIT_MAX_REQUESTS, 1, 1_000_000_000)?,
            body_limit: env.get_u64_range(&ev::MAX_WEBHOOK_BODY_BYTES, 1024, 64 * 1024 * 1024)?
                as usize,
            github_body_limit: GITHUB_BODY_LIMIT,
            github_secret,
            github,
            trusted_proxies: TrustedProxies::parse(&env.get_list(&ev::TRUSTED_PROXIES)?).map_err(
                |bad| {
                    invalid(
                        ev::TRUSTED_PROXIES.name,
                        &bad,
                        "comma-separated IP addresses or CIDRs such as 10.0.0.0/8",
                    )
                },
            )?,
            dedup_window: Duration::from_secs(env.get_u64_range(
                &ev::DEDUP_WINDOW_SEC,
                604_800,
                10 * 365 * 86_400,
            )?),
            header_timeout: ms_setting(
                args.header_timeout_ms,
                "--header-timeout-ms",
                env,
                &ev::GATEWAY_HEADER_TIMEOUT_MS,
            )?,
            body_timeout: ms_setting(
                args.body_timeout_ms,
                "--body-timeout-ms",
                env,
                &ev::GATEWAY_BODY_TIMEOUT_MS,
            )?,
            max_connections,
            max_connections_per_client: env.get_u64_range(
                &ev::GATEWAY_MAX_CONNECTIONS_PER_CLIENT,
                1,
                1_000_000,
            )? as usize,
            shutdown_grace: Duration::from_secs(10),
            default_artifact_handoff,
            project_ids,
            known_agents,
            prompts_dir,
            budget: {
                artifacts::budget::install_test_clock(env)?;
                artifacts::budget::BudgetConfig::resolve(env)?
            },
            // Not in the contracts registry yet: set only by `orch dev`.
            dev_mode: env.raw("ORCH_DEV").is_some_and(|v| v.trim() == "1"),
        })
    }
}
