//! Every environment variable orch reads, declared once with its default and
//! documentation, plus the typed readers every binary uses to turn them into
//! configuration. `docs/CONFIGURATION.md` is generated from [`ALL`] by
//! [`markdown_table`] and a test fails when the two differ.
//!
//! Values come from an [`EnvSource`]: the process environment merged with an
//! optional `.env` file that never overrides the real environment. An invalid
//! value is a [`ConfigError`] naming the variable, the value (cut short, or
//! hidden for secrets) and what was expected — never a silent fallback.
//! Clap flags that override a variable should read their fallback through an
//! `EnvSource` too, so the `.env` file is honoured everywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One environment variable.
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    pub name: &'static str,
    /// Default as documented ("" = unset).
    pub default: &'static str,
    /// Which processes read it.
    pub used_by: &'static str,
    pub doc: &'static str,
    /// The value is a credential: errors and logs never show it.
    pub secret: bool,
}

macro_rules! env_vars {
    ($( $konst:ident = ($default:literal, $used:literal, $doc:literal $(, $secret:ident)?); )*) => {
        $(
            #[doc = $doc]
            pub const $konst: EnvVar = EnvVar {
                name: stringify!($konst),
                default: $default,
                used_by: $used,
                doc: $doc,
                secret: env_vars!(@secret $($secret)?),
            };
        )*
        /// All variables, in documentation order.
        pub const ALL: &[EnvVar] = &[ $( $konst ),* ];
    };
    (@secret secret) => { true };
    (@secret) => { false };
}

env_vars! {
    // Paths.
    QUEUE_ROOT = ("var/queue", "all", "Root of the file queue; `pending/`, `running/`, `done/`, `failed/`, `awaiting_approval/` and internal directories live below it.");
    ARTIFACTS_ROOT = ("artifacts", "all", "Root of the artifacts tree; each job writes `<job_id>/job.json`, `state.json`, `result.json`, `steps/...` below it.");
    WORKSPACES_ROOT = ("workspaces", "runner, scheduler, orch", "Root of per-job workspaces; `<job_id>/work` is the agents' working directory.");
    WORKSPACE_MAX_BYTES = ("2147483648", "runner", "Cap on the bytes of regular files a job's workspace copy (or clone) of its `workdir` may hold; past it the job fails with an error naming this variable (2 GiB).");
    WORKSPACE_MAX_FILES = ("100000", "runner", "Cap on the entries (files, directories, links) of a job's workspace copy (or clone); past it the job fails with an error naming this variable.");
    STATE_DB_PATH = ("var/state.db", "runner, gateway, orch", "SQLite database of the budget ledger (WAL mode), created by the first real agent attempt; keep it on a local filesystem of the runners' host, never on NFS (see docs/BUDGET.md).");
    SCHEDULES_DIR = ("schedules", "scheduler, gateway, orch", "Directory of schedule files (`*.json`, format of `examples/schedules/nightly.json`), reread on change; a bad file is reported (log, metric, `orch schedules`) and skipped while the others keep firing.");
    PROMPTS_DIR = ("", "all", "Directory of operator-edited prompts: `01_plan.md`, `02_implement.md`, `03_review.md` replace the embedded default-pipeline templates (`{goal}` is substituted) and `roles/<role>.md` replaces the system prompt of a role; unset uses the embedded ones.");
    METRICS_DIR = ("var/metrics", "all", "Directory where processes without HTTP publish Prometheus text files, served by the gateway's `/metrics`.");
    FSYNC_MODE = ("syncfs", "all", "How durable writes reach the disk. `syncfs`: concurrent writes of a process share one `syncfs(2)` of the filesystem per barrier (group commit). `file`: one `fsync` per file and directory; choose it when the queue and artifacts share a filesystem with write-heavy work (better: put `WORKSPACES_ROOT` on another filesystem).");
    // Runner.
    RUNNER_CONCURRENCY = ("2", "runner", "Jobs one runner process runs at once.");
    RUNNER_LEASE_SEC = ("30", "runner, scheduler, orch", "Lifetime of a claim's lease. The owner renews it every quarter of it on a thread of its own and gives the job up when its last successful renewal is older than three quarters; a claim not renewed for a lease and a quarter is reaped.");
    RUNNER_MAX_RECLAIMS = ("3", "runner, scheduler, orch", "Times an expired job is put back to `pending/` before it is failed as a poison job.");
    RUNNER_MAX_GOTO = ("5", "runner", "Total `on_failure: goto:` jumps allowed per job before it fails with a clear error.");
    RUNNER_SHUTDOWN_GRACE_SEC = ("30", "runner", "On SIGTERM/SIGINT, how long running steps may finish before their agents are stopped and their jobs released to `pending/`.");
    RUNNER_MAX_IDLE_SEC = ("0", "runner", "Kill an agent that printed nothing for this long (status `timeout`); 0 turns the watchdog off, since some agents are silent until done.");
    RUNNER_POLL_INTERVAL_SEC = ("", "runner", "Accepted for MVP compatibility and ignored: superseded by change notifications (inotify) plus periodic rescans.");
    RUNNER_RECLAIM_AFTER_SEC = ("", "runner", "Accepted for MVP compatibility and ignored: superseded by leases (`RUNNER_LEASE_SEC`).");
    SIMULATION_STEP_MS = ("200", "runner", "Duration of every simulated step in milliseconds; 0 means no sleep (benchmarks).");
    // Gateway.
    GATEWAY_BIND = ("127.0.0.1:8080", "gateway", "Address and port the HTTP gateway listens on.");
    GATEWAY_HEADER_TIMEOUT_MS = ("10000", "gateway", "Time a client has to send a request's headers (50 to 3600000 ms); a slower client is cut off. The `--header-timeout-ms` flag overrides it.");
    GATEWAY_BODY_TIMEOUT_MS = ("30000", "gateway", "Time a client has to send a request's body once the headers are in (50 to 3600000 ms); a slower client gets 408. The `--body-timeout-ms` flag overrides it.");
    GATEWAY_MAX_CONNECTIONS = ("1024", "gateway", "Connections served at once (1 to 1000000); past it, a small overflow lane answers only `/health` and `/metrics`, and further connections are closed. The `--max-connections` flag overrides it.");
    GATEWAY_MAX_CONNECTIONS_PER_CLIENT = ("128", "gateway", "Connections one client address (an IPv6 /64) may hold open at once (1 to 1000000); more are closed on arrival. Addresses in `TRUSTED_PROXIES` are exempt.");
    WEBHOOK_TOKEN = ("", "gateway", "Single bearer token with every scope (submit, read, admin); compared in constant time, never logged.", secret);
    WEBHOOK_TOKENS = ("", "gateway", "Scoped tokens, MVP format `token=proj1|proj2,token2=*`: each token may submit for the listed projects (`*` = all).", secret);
    WEBHOOK_RATE_LIMIT_WINDOW_SEC = ("60", "gateway", "Length of the rate-limit window, per token and per client address.");
    WEBHOOK_RATE_LIMIT_MAX_REQUESTS = ("30", "gateway", "Requests allowed per window; more get 429 with `Retry-After`.");
    MAX_WEBHOOK_BODY_BYTES = ("262144", "gateway", "Largest accepted `POST /webhook` body; larger ones get 413 without being buffered.");
    GITHUB_WEBHOOK_SECRET = ("", "gateway", "Secret for the `X-Hub-Signature-256` HMAC of `POST /webhook/github`; unset disables that route.", secret);
    TRUSTED_PROXIES = ("", "gateway", "Comma-separated proxy addresses or CIDRs whose `X-Forwarded-For` is believed; empty trusts none.");
    DEDUP_WINDOW_SEC = ("604800", "gateway, scheduler", "How long delivery ids (`X-GitHub-Delivery`, `Idempotency-Key`) and terminal queue files are kept for deduplication (at least 7 days).");
    // Jobs.
    DEFAULT_ARTIFACT_HANDOFF = ("manual", "gateway, scheduler, orch", "`artifact_handoff` of jobs that do not set one: `manual`, `patch_first` or `workspace_first`.");
    PROJECT_ALIASES = ("", "all", "Configured projects, `id=/abs/path,...`; a job's `project_id` must name one, and webhook jobs get their workspace from it.");
    CALLBACK_SECRET = ("", "runner", "Key of the `X-Orch-Signature-256` HMAC on callback POSTs; unset sends them unsigned.", secret);
    CALLBACK_ALLOW_PRIVATE = ("0", "runner, gateway", "Allow `callback_url` to reach loopback, link-local and private addresses (1/0).");
    // Real CLIs and sandbox.
    ENABLE_REAL_CLI = ("0", "runner, orch", "Run the real agent CLIs (1) instead of the built-in simulation (0).");
    AGENTS_CONFIG = ("", "runner, gateway, scheduler, orch", "JSON file declaring custom agents (name, argv template, output format); unset means only the built-in agents.");
    SANDBOX = ("1", "runner, orch", "Run real agents inside the sandbox (built-in bubblewrap profile or `SANDBOX_WRAPPER`); when required but unavailable, jobs are refused.");
    SANDBOX_WRAPPER = ("", "runner, orch", "Executable that wraps every agent command instead of the built-in bubblewrap profile.");
    SANDBOX_WRAPPER_ARGS = ("", "runner", "Arguments passed to `SANDBOX_WRAPPER` before the agent command (split on whitespace).");
    SANDBOX_UID = ("65534", "runner, orch", "Unprivileged uid and gid agents run as inside the built-in sandbox; a root runner starts bubblewrap as this uid (through `setpriv`) and hands it the job's workspace and state directory. Never 0.");
    SANDBOX_MEMORY_MB = ("16384", "runner", "Memory of one step, in MiB: the step's cgroup memory limit when cgroups are in use, and always the largest address space of one agent process (RLIMIT_AS, at this operator value when a cgroup holds the step); agents' and jobs' `limits.memory_mb` can only lower it.");
    SANDBOX_MAX_PROCESSES = ("4096", "runner", "Processes of one step (the cgroup's `pids.max`) when cgroups are in use, and always the process limit of the sandbox uid (RLIMIT_NPROC, host-wide for that uid; at this operator value when a cgroup holds the step); `limits.processes` can only lower it.");
    SANDBOX_CGROUP = ("auto", "runner", "Per-step cgroups (memory, processes, CPU for the whole step): `auto` uses them when the runner can create them (cgroup v2 with `memory`+`pids` delegated, else cgroup v1) and otherwise runs with rlimits only (logged once at start); `require` refuses to start without them; `off` never uses them.");
    SANDBOX_CGROUP_ROOT = ("", "runner", "Cgroup path (as in `/proc/self/cgroup`, e.g. `/orch`) under which step cgroups are created, in each hierarchy; unset = the runner's own cgroup.");
    SANDBOX_CPU_PERCENT = ("0", "runner", "CPU bandwidth of one step's cgroup, in percent of one core (`cpu.max` / `cpu.cfs_quota_us`; 150 = one and a half cores); 0 = no quota. Needs cgroups.");
    SANDBOX_CPU_SEC = ("0", "runner", "CPU seconds one agent process may use (RLIMIT_CPU); 0 = no limit. `limits.cpu_sec` can only lower it.");
    SANDBOX_TMP_MB = ("1024", "runner", "Size of the sandbox's private `/tmp` (a tmpfs in host memory), in MiB; `limits.tmp_mb` can only lower it.");
    SANDBOX_WORKSPACE_MB = ("10240", "runner", "Bytes a job's workspace may hold while an agent runs, in MiB, checked every 2 s; beyond it the step is stopped with `resource_limit`. `limits.workspace_mb` can only lower it.");
    SANDBOX_CLEAR_ENV = ("0", "runner", "Give agents only `ENV_ALLOWLIST` variables, without the default `PATH`, `HOME` and `TMPDIR` (1/0).");
    ALLOWED_BINARIES = ("opencode,codex,claude,git", "runner, orch", "Comma-separated executables the real-CLI executor may start; a job's `policy.allowed_binaries` can only narrow it.");
    MIN_BINARY_VERSIONS = ("", "runner, orch", "Minimum versions checked by preflight (`bin --version`), e.g. `codex=0.40.0,claude=1.0.0`.");
    NETWORK_POLICY = ("deny", "runner", "Network access sandboxed agents may have: `deny`, or `allow` (then only jobs whose `policy.network` is also `allow` get it, sharing the host's network namespace); the stricter of the two wins.");
    ENV_ALLOWLIST = ("", "runner", "Comma-separated environment variables passed to agents (e.g. API keys).");
    SENSITIVE_ENV_VARS = ("", "runner", "Comma-separated variables whose values (8+ characters) are redacted from every artifact.");
    MAX_INPUT_ARTIFACTS_FILES = ("10", "runner", "Input artifacts included in a step's prompt; the rest are marked `[truncated:file_limit]`.");
    MAX_INPUT_ARTIFACT_CHARS = ("12000", "runner", "Characters kept from one input artifact.");
    MAX_INPUT_ARTIFACTS_CHARS = ("40000", "runner", "Characters kept from all input artifacts of a step together (`[truncated:total_limit]`).");
    MAX_SUBPROCESS_OUTPUT_CHARS = ("2000000", "runner", "Characters kept per output stream of an agent process, then a truncation marker.");
    NON_GIT_WORKDIR_STATUS = ("needs_human", "runner", "Status of a step that needs a git workspace but has none: `needs_human` or `failed`.");
    SECRETS_POLICY = ("fail", "runner", "When a step's artifacts contain secrets (always redacted): `fail` the step or only `redact`.");
    // Budget.
    MAX_DAILY_API_CALLS = ("0", "runner, gateway, orch", "Real agent attempts (agent CLI runs) allowed per UTC day across every runner sharing `STATE_DB_PATH`; each is reserved before it starts, so the limit is never overshot; 0 = no limit. Simulated steps are not counted.");
    MAX_DAILY_COST_USD = ("0", "runner, gateway, orch", "Agent cost in USD allowed per UTC day (0 = no limit, up to 1e9). An attempt starts only if spent + reserved + its estimate fits; it settles with the cost the agent reported. See docs/BUDGET.md for how far concurrent attempts can overshoot.");
    BUDGET_PROJECT_LIMITS = ("", "runner, gateway, orch", "Per-project daily limits on top of the global ones, `project=CALLS/USD,...` (e.g. `web=100/5.00,docs=0/2.5`; 0 = no limit for that part).");
    BUDGET_ESTIMATE_USD = ("0.10", "runner, gateway, orch", "Cost reserved for one attempt of an agent without its own estimate, until its real cost is known; charged in full when the agent reports no cost.");
    BUDGET_AGENT_ESTIMATES = ("", "runner, gateway, orch", "Per-agent cost estimates in USD, `agent=USD,...` (e.g. `claude=0.50,codex=0.20`), overriding `BUDGET_ESTIMATE_USD`.");
    BUDGET_EXCEEDED_ACTION = ("fail", "runner, gateway, orch", "What an over-budget attempt does: `fail` (the job fails with error `budget_exceeded`, never retried) or `defer` (the job goes back to `pending/` and is not claimed before the next UTC day).");
    // Retention.
    RETENTION_INTERVAL_SEC = ("300", "scheduler", "Seconds between retention sweeps; 0 turns retention off.");
    ARTIFACTS_TTL_SEC = ("604800", "scheduler", "Age after which artifacts of terminal jobs are deleted (7 days).");
    WORKSPACES_TTL_SEC = ("172800", "scheduler", "Age after which workspaces of terminal jobs are deleted (2 days).");
    // Schedules.
    SCHEDULER_TEST_CLOCK = ("", "scheduler", "For tests only, never in production: `FAKE_START,REAL_START,SPEED` (two RFC 3339 instants and a speed from 1 to 3600) makes the scheduler's schedule clock read FAKE_START at the real instant REAL_START and run SPEED times as fast, so schedules can be tested without waiting for real minutes.");
    // Logging.
    NOTIFY_SOCKET = ("", "gateway, runner, scheduler", "Set by systemd for `Type=notify` units (never by hand): where the service reports `READY=1`, `STOPPING=1` and watchdog pings. Unset outside systemd.");
    WATCHDOG_USEC = ("", "gateway, runner, scheduler", "Set by systemd from `WatchdogSec=`: the service pings from its working loop (the runner from its lease heartbeat) at least twice per period.");
    WATCHDOG_PID = ("", "gateway, runner, scheduler", "Set by systemd: the process `WATCHDOG_USEC` is meant for; another process ignores it.");
    LOG_LEVEL = ("info", "all", "Log level (`error`, `warn`, `info`, `debug`, `trace`); `RUST_LOG` overrides it with full filter syntax.");
    LOG_JSON = ("0", "all", "Log JSON lines (1) instead of the human format (0).");
    // Tests.
    ORCH_TEST_CLOCK_FILE = ("", "runner, gateway, orch", "For tests only: a file holding the current time as Unix seconds, read on every use instead of the system clock for calendar decisions (the budget's UTC day, deferred jobs' not-before time); leases and timeouts keep the real clock. Never set it in production.");
    // Fault injection (tests).
    ORCH_FAULT_BARRIER_DELAY_MS = ("", "all (debug builds only)", "Test seam, ignored by release builds: every durable barrier sleeps this many milliseconds first (a disk made slow by other work).");
    ORCH_FAULT_FSYNC_FAIL = ("", "all (debug builds only)", "Test seam, ignored by release builds: `N:ERRNO` makes the Nth durable barrier of the process fail with that errno (e.g. `3:5` for EIO).");
    ORCH_FAULT_RENAME_FAIL = ("", "all (debug builds only)", "Test seam, ignored by release builds: `N:ERRNO` makes the Nth publishing rename of the process fail with that errno (e.g. `2:28` for ENOSPC).");
    ORCH_FAULT_CRASH_AT = ("", "all (debug builds only)", "Test seam, ignored by release builds: `POINT[:N]` makes the process kill itself (SIGKILL) the Nth time (default 1) it reaches the named crash point (the list is `fsqueue::fault::POINTS`, e.g. `durable.move.renamed:2`).");
    ORCH_FAULT_RECORD = ("", "all (debug builds only)", "Test seam, ignored by release builds: a file to which every process appends each durable-layer operation (temp file written, fsync, syncfs, rename, unlink, mkdir) in order, for the power-loss simulator.");
}

/// Looks a variable up by name.
pub fn lookup(name: &str) -> Option<&EnvVar> {
    ALL.iter().find(|v| v.name == name)
}

/// How many characters of a bad value an error quotes.
const VALUE_QUOTE_CHARS: usize = 40;

/// A configuration value that cannot be used. Every variant names the
/// variable or file; values of secret variables are never shown.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value} is invalid: expected {expected}")]
    Invalid {
        var: &'static str,
        /// The offending value, quoted and cut short (or `<hidden>`).
        value: String,
        expected: String,
    },
    #[error("{var} is not set: expected {expected}")]
    Missing { var: &'static str, expected: String },
    #[error("{var} is not valid UTF-8: expected {expected}")]
    NotUnicode { var: &'static str, expected: String },
    #[error("{}:{line}: {reason}", file.display())]
    DotEnvSyntax {
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("cannot read {}: {source}", file.display())]
    DotEnvRead {
        file: PathBuf,
        source: std::io::Error,
    },
}

impl ConfigError {
    /// The variable (or file) the error is about.
    pub fn subject(&self) -> String {
        match self {
            Self::Invalid { var, .. }
            | Self::Missing { var, .. }
            | Self::NotUnicode { var, .. } => (*var).to_owned(),
            Self::DotEnvSyntax { file, .. } | Self::DotEnvRead { file, .. } => {
                file.display().to_string()
            }
        }
    }
}

fn shown_value(var: &EnvVar, value: &str) -> String {
    if var.secret {
        return "<hidden>".to_owned();
    }
    let mut cut: String = value.chars().take(VALUE_QUOTE_CHARS).collect();
    if cut.len() < value.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// Where configuration values come from: the process environment, merged
/// with an optional `.env` file whose entries never override the real
/// environment. Built once at start-up; reads never touch the process
/// environment again, so tests can build their own.
#[derive(Debug, Clone, Default)]
pub struct EnvSource {
    vars: BTreeMap<String, String>,
    /// Names set in the process environment to non-UTF-8 values.
    not_unicode: BTreeSet<String>,
}

impl EnvSource {
    /// The process environment only.
    pub fn from_process() -> Self {
        let mut src = Self::default();
        for (k, v) in std::env::vars_os() {
            let Some(k) = k.to_str() else { continue };
            match v.into_string() {
                Ok(v) => {
                    src.vars.insert(k.to_owned(), v);
                }
                Err(_) => {
                    src.not_unicode.insert(k.to_owned());
                }
            }
        }
        src
    }

    /// Exactly these pairs (tests, embedded defaults of `orch dev`).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            not_unicode: BTreeSet::new(),
        }
    }

    /// The process environment plus `./.env` when it exists: what every
    /// binary uses at start-up.
    pub fn load() -> Result<Self, ConfigError> {
        Self::from_process().with_dotenv_file(Path::new(".env"))
    }

    /// Adds the entries of the `.env` file at `path` that are not already
    /// set. A missing file is fine; an unreadable or malformed one is an
    /// error naming the file (and line).
    pub fn with_dotenv_file(self, path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|e| ConfigError::DotEnvSyntax {
                    file: path.to_owned(),
                    line: line_of_byte(e.as_bytes(), e.utf8_error().valid_up_to()),
                    reason: "not valid UTF-8".to_owned(),
                })?;
                self.with_dotenv_str(&text, path)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(self),
            Err(source) => Err(ConfigError::DotEnvRead {
                file: path.to_owned(),
                source,
            }),
        }
    }

    /// Adds the entries of `.env` text (named `file` in errors) that are
    /// not already set. Syntax: `KEY=VALUE` lines, optional `export `
    /// prefix, `#` comment lines and trailing ` #` comments on unquoted
    /// values, values in single quotes (literal) or double quotes (`\n`,
    /// `\t`, `\"`, `\\` escapes). Anything else is an error with its line.
    pub fn with_dotenv_str(mut self, text: &str, file: &Path) -> Result<Self, ConfigError> {
        for (key, value) in parse_dotenv(text, file)? {
            if !self.vars.contains_key(&key) && !self.not_unicode.contains(&key) {
                self.vars.insert(key, value);
            }
        }
        Ok(self)
    }

    /// The raw value of a variable by name, if set (even to "").
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The value of `var`, or its documented default; `None` when neither
    /// is set. An empty value counts as unset (so `KEY=` in a `.env`
    /// template means "default").
    pub fn get_str(&self, var: &EnvVar) -> Result<Option<String>, ConfigError> {
        Ok(self.value(var, "a UTF-8 string")?.map(str::to_owned))
    }

    fn value<'a>(&'a self, var: &EnvVar, expected: &str) -> Result<Option<&'a str>, ConfigError> {
        if self.not_unicode.contains(var.name) {
            return Err(ConfigError::NotUnicode {
                var: var.name,
                expected: expected.to_owned(),
            });
        }
        Ok(match self.vars.get(var.name).map(|v| v.trim()) {
            Some(v) if !v.is_empty() => Some(v),
            _ if !var.default.is_empty() => Some(var.default),
            _ => None,
        })
    }

    fn required<'a>(&'a self, var: &EnvVar, expected: &str) -> Result<&'a str, ConfigError> {
        self.value(var, expected)?
            .ok_or_else(|| ConfigError::Missing {
                var: var.name,
                expected: expected.to_owned(),
            })
    }

    /// A boolean: `1/0`, `true/false`, `yes/no`, `on/off` in any case.
    pub fn get_bool(&self, var: &EnvVar) -> Result<bool, ConfigError> {
        const EXPECTED: &str = "1/0, true/false, yes/no or on/off";
        let v = self.required(var, EXPECTED)?;
        match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(invalid(var, v, EXPECTED.to_owned())),
        }
    }

    /// A whole number in `min..=max`.
    pub fn get_u64_range(&self, var: &EnvVar, min: u64, max: u64) -> Result<u64, ConfigError> {
        let expected = format!("a whole number from {min} to {max}");
        let v = self.required(var, &expected)?;
        match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(invalid(var, v, expected)),
        }
    }

    /// A finite number in `min..=max`.
    pub fn get_f64_range(&self, var: &EnvVar, min: f64, max: f64) -> Result<f64, ConfigError> {
        let expected = format!("a number from {min} to {max}");
        let v = self.required(var, &expected)?;
        match v.parse::<f64>() {
            Ok(n) if n.is_finite() && n >= min && n <= max => Ok(n),
            _ => Err(invalid(var, v, expected)),
        }
    }

    /// One of `allowed` (compared case-insensitively), returned in its
    /// canonical spelling.
    pub fn get_enum(
        &self,
        var: &EnvVar,
        allowed: &[&'static str],
    ) -> Result<&'static str, ConfigError> {
        let expected = format!("one of {}", allowed.join(", "));
        let v = self.required(var, &expected)?;
        allowed
            .iter()
            .copied()
            .find(|a| a.eq_ignore_ascii_case(v))
            .ok_or_else(|| invalid(var, v, expected))
    }

    /// A comma-separated list with surrounding spaces and empty entries
    /// dropped; empty when unset.
    pub fn get_list(&self, var: &EnvVar) -> Result<Vec<String>, ConfigError> {
        Ok(self
            .value(var, "a comma-separated list")?
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }
}

fn invalid(var: &EnvVar, value: &str, expected: String) -> ConfigError {
    ConfigError::Invalid {
        var: var.name,
        value: shown_value(var, value),
        expected,
    }
}

fn line_of_byte(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Parses `.env` text into ordered pairs; see [`EnvSource::with_dotenv_str`].
pub fn parse_dotenv(text: &str, file: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let err = |reason: &str| ConfigError::DotEnvSyntax {
            file: file.to_owned(),
            line: i + 1,
            reason: reason.to_owned(),
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((key, rest)) = line.split_once('=') else {
            return Err(err("expected KEY=VALUE"));
        };
        let key = key.trim_end();
        let key_ok = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !key_ok {
            return Err(err(
                "the name must be letters, digits and '_', not starting with a digit",
            ));
        }
        let rest = rest.trim_start();
        let (value, after) = match rest.chars().next() {
            Some(q @ ('\'' | '"')) => {
                let body = &rest[1..];
                let mut value = String::new();
                let mut chars = body.char_indices();
                let mut end = None;
                while let Some((j, c)) = chars.next() {
                    match c {
                        c if c == q => {
                            end = Some(j + 1);
                            break;
                        }
                        '\\' if q == '"' => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, 't')) => value.push('\t'),
                            Some((_, 'r')) => value.push('\r'),
                            Some((_, c @ ('"' | '\\' | '$'))) => value.push(c),
                            Some((_, c)) => {
                                value.push('\\');
                                value.push(c);
                            }
                            None => break,
                        },
                        c => value.push(c),
                    }
                }
                let Some(end) = end else {
                    return Err(err("unterminated quoted value (values cannot span lines)"));
                };
                (value, body[end..].trim())
            }
            _ => {
                // Unquoted: a '#' after whitespace starts a comment.
                let cut = rest
                    .char_indices()
                    .find(|&(j, c)| c == '#' && rest[..j].ends_with(char::is_whitespace))
                    .map_or(rest.len(), |(j, _)| j);
                (rest[..cut].trim_end().to_owned(), "")
            }
        };
        if !after.is_empty() && !after.starts_with('#') {
            return Err(err("unexpected text after the closing quote"));
        }
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// The header paragraph of `docs/CONFIGURATION.md`.
const DOC_HEADER: &str = "\
<!-- Generated by crates/contracts (env::markdown_table). Do not edit: change the registry in
crates/contracts/src/env.rs and run `UPDATE_DOCS=1 cargo test -p contracts configuration_doc_is_current`. -->

# Configuration

orch is configured by environment variables. Names are kept from the Python MVP where it had them,
so an MVP deployment moves over unchanged. Values may also come from a `.env` file in the working
directory (`KEY=VALUE` lines, `#` comments, optional `export`, single or double quotes); the file
never overrides the real environment. Command-line flags override both. An empty value means the
default. An invalid value is a start-up error naming the variable and what it expects — never a
silent fallback. Booleans accept `1/0`, `true/false`, `yes/no`, `on/off`. Secret values are never
logged or shown in errors. `RUST_LOG` (standard `tracing` filter syntax) overrides `LOG_LEVEL`.

Used by: `gateway` = `orch-gateway`, `runner` = `orch-runner`, `scheduler` = `orch-scheduler`,
`orch` = the CLI, `all` = every binary.
";

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// All variables as one Markdown document (header paragraph and table):
/// the content of `docs/CONFIGURATION.md`.
pub fn markdown_table() -> String {
    let mut out = String::from(DOC_HEADER);
    out.push_str("\n| name | default | used by | description |\n|---|---|---|---|\n");
    for v in ALL {
        let default = if v.default.is_empty() {
            "*(unset)*".to_owned()
        } else {
            format!("`{}`", v.default)
        };
        let secret = if v.secret { " *Secret.*" } else { "" };
        out.push_str(&format!(
            "| `{}` | {} | {} | {}{} |\n",
            v.name,
            cell(&default),
            cell(v.used_by),
            cell(v.doc),
            secret
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_match_constants() {
        let mut seen = BTreeSet::new();
        for v in ALL {
            assert!(seen.insert(v.name), "{} twice", v.name);
            assert!(
                v.name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit())
            );
            assert!(v.doc.ends_with('.'), "{}: doc is not a sentence", v.name);
        }
        assert_eq!(QUEUE_ROOT.name, "QUEUE_ROOT");
        assert!(lookup("WEBHOOK_TOKEN").is_some_and(|v| v.secret));
    }

    #[test]
    fn defaults_parse_with_their_readers() {
        let src = EnvSource::default();
        for v in [
            &SANDBOX,
            &ENABLE_REAL_CLI,
            &LOG_JSON,
            &SANDBOX_CLEAR_ENV,
            &CALLBACK_ALLOW_PRIVATE,
        ] {
            src.get_bool(v).unwrap_or_else(|e| panic!("{e}"));
        }
        for v in [
            &RUNNER_CONCURRENCY,
            &RUNNER_LEASE_SEC,
            &RUNNER_MAX_RECLAIMS,
            &RUNNER_MAX_GOTO,
            &RUNNER_SHUTDOWN_GRACE_SEC,
            &RUNNER_MAX_IDLE_SEC,
            &SIMULATION_STEP_MS,
            &GATEWAY_HEADER_TIMEOUT_MS,
            &GATEWAY_BODY_TIMEOUT_MS,
            &GATEWAY_MAX_CONNECTIONS,
            &GATEWAY_MAX_CONNECTIONS_PER_CLIENT,
            &WEBHOOK_RATE_LIMIT_WINDOW_SEC,
            &WEBHOOK_RATE_LIMIT_MAX_REQUESTS,
            &MAX_WEBHOOK_BODY_BYTES,
            &MAX_INPUT_ARTIFACTS_FILES,
            &MAX_INPUT_ARTIFACT_CHARS,
            &MAX_INPUT_ARTIFACTS_CHARS,
            &MAX_SUBPROCESS_OUTPUT_CHARS,
            &MAX_DAILY_API_CALLS,
            &RETENTION_INTERVAL_SEC,
            &ARTIFACTS_TTL_SEC,
            &WORKSPACES_TTL_SEC,
            &DEDUP_WINDOW_SEC,
            &WORKSPACE_MAX_BYTES,
            &WORKSPACE_MAX_FILES,
        ] {
            src.get_u64_range(v, 0, u64::MAX)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for v in [&MAX_DAILY_COST_USD, &BUDGET_ESTIMATE_USD] {
            src.get_f64_range(v, 0.0, f64::MAX)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(
            src.get_enum(&NETWORK_POLICY, &["deny", "allow"]).ok(),
            Some("deny")
        );
    }
}
