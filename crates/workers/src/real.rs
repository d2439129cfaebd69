//! Real agent CLIs (`ENABLE_REAL_CLI=1`): the configuration resolved once
//! at start-up ([`RealConfig`]), the per-job preflight (allowlist, binaries
//! present, `MIN_BINARY_VERSIONS`, sandbox), and [`RealAgent`], the worker
//! that runs one CLI through the executor — inside the sandbox — and
//! normalises its output into a [`StepOutcome`].
//!
//! Every job gets its own agent state (SPEC §6): `CLAUDE_CONFIG_DIR`,
//! `CODEX_HOME`, `XDG_CONFIG_HOME`, `XDG_DATA_HOME`, `XDG_CACHE_HOME`,
//! `XDG_STATE_HOME` point into the job's state directory, because
//! concurrent agents sharing one user config corrupt it. An operator can
//! seed every job's state from a directory (`state_seed_dir` in the agents
//! config; see docs/REAL_CLI_INTEGRATION.md) to provide credentials.

use crate::agents::{self, AgentSpec, AgentsConfigError, PromptMode, READ_ONLY_TOOLS};
use crate::confine;
use crate::exec::{self, ExecError, ExecPolicy, ExecSpec, ExitKind};
use crate::output::{self, FailureClass, Parsed};
use crate::sandbox::{self, Mounts, Sandbox};
use crate::worker::{StepOutcome, StepRequest, Worker, WorkerFuture};
use contracts::env::{self as ev, ConfigError, EnvSource};
use contracts::{ErrorInfo, Job, NetworkPolicy, Status};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long `<bin> --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(20);
/// How much of stderr goes into the step's logs.
const STDERR_IN_LOGS: usize = 4000;

/// Why real mode cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RealConfigError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Agents(#[from] AgentsConfigError),
    #[error("SANDBOX=1 but no sandbox is usable: {0}")]
    SandboxUnavailable(String),
    #[error(
        "SANDBOX_CGROUP=require but the runner cannot create step cgroups: {0}; hint: delegate a cgroup v2 subtree with memory and pids (SANDBOX_CGROUP_ROOT), or run the runner as root on cgroup v1"
    )]
    CgroupUnavailable(String),
}

/// A dotted version, compared numerically (`1.10.0 > 1.9.3`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub Vec<u64>);

impl Version {
    /// The first version-looking token (`\d+(\.\d+)*`) in `text`.
    pub fn find(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                    i += 1;
                }
                let tok = text[start..i].trim_end_matches('.');
                if let Some(v) = Self::parse(tok) {
                    return Some(v);
                }
            }
            i += 1;
        }
        None
    }

    pub fn parse(s: &str) -> Option<Self> {
        let parts: Option<Vec<u64>> = s.split('.').map(|p| p.parse().ok()).collect();
        let mut parts = parts.filter(|p| !p.is_empty())?;
        while parts.len() > 1 && parts.last() == Some(&0) {
            parts.pop();
        }
        Some(Self(parts))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s: Vec<String> = self.0.iter().map(u64::to_string).collect();
        f.write_str(&s.join("."))
    }
}

/// Real-mode configuration, resolved once at start-up.
#[derive(Debug)]
pub struct RealConfig {
    pub exec: ExecPolicy,
    /// `SANDBOX=1`: every real agent runs sandboxed.
    pub sandbox_required: bool,
    /// The usable sandbox, if any (`SANDBOX_WRAPPER`, else bubblewrap).
    pub sandbox: Option<Sandbox>,
    /// Why no sandbox is usable (for messages).
    pub sandbox_problem: Option<String>,
    /// `NETWORK_POLICY=allow`.
    pub network_allow: bool,
    /// `MIN_BINARY_VERSIONS`, by binary name.
    pub min_versions: BTreeMap<String, Version>,
    /// `NON_GIT_WORKDIR_STATUS`.
    pub non_git_status: Status,
    pub agents: Vec<AgentSpec>,
    /// Copied into each job's state directory before its first agent.
    pub state_seed_dir: Option<PathBuf>,
    /// Where per-step cgroups are created (`SANDBOX_CGROUP`), when the
    /// built-in sandbox is in use and the runner can create them.
    pub cgroups: Option<crate::cgroup::Cgroups>,
    /// Why steps get no cgroup (for the step's logs).
    pub cgroup_problem: Option<String>,
    /// `SANDBOX_CGROUP=require`: a step whose cgroup cannot be created
    /// fails instead of running on rlimits only.
    pub cgroup_required: bool,
    /// `SANDBOX_CPU_PERCENT`.
    pub cpu_percent: u64,
    /// `RUNNER_MAX_IDLE_SEC`: stop an agent that printed nothing for this
    /// long (status `timeout`, error code `idle_timeout`); `None` = off.
    pub max_idle: Option<Duration>,
    /// Versions already checked, by (path, mtime, size): a binary that did
    /// not change is not run again for every job.
    versions: Mutex<HashMap<(PathBuf, i64, u64), Version>>,
}

impl RealConfig {
    /// Reads `ALLOWED_BINARIES`, `ENV_ALLOWLIST`, `SANDBOX*`,
    /// `NETWORK_POLICY`, `MIN_BINARY_VERSIONS`, `NON_GIT_WORKDIR_STATUS`,
    /// `MAX_SUBPROCESS_OUTPUT_CHARS` and `AGENTS_CONFIG`. Refuses to start
    /// when `SANDBOX=1` and no sandbox works.
    pub fn from_env(src: &EnvSource) -> Result<Self, RealConfigError> {
        let exec = ExecPolicy::from_env(src)?;
        let sandbox_required = src.get_bool(&ev::SANDBOX)?;
        let (sandbox, sandbox_problem) = match src.get_str(&ev::SANDBOX_WRAPPER)? {
            Some(w) => {
                let program = if Path::new(&w).is_absolute() {
                    // An absolute wrapper must exist, or every sandboxed
                    // step would fail to start.
                    Some(PathBuf::from(&w)).filter(|p| p.is_file())
                } else {
                    exec::find_on_path(&w, &exec.search_path)
                };
                match program {
                    Some(program) => {
                        let args = src
                            .get_str(&ev::SANDBOX_WRAPPER_ARGS)?
                            .map(|a| a.split_whitespace().map(str::to_owned).collect())
                            .unwrap_or_default();
                        (Some(Sandbox::Wrapper { program, args }), None)
                    }
                    None => (
                        None,
                        Some(format!(
                            "SANDBOX_WRAPPER={w:?} is not an executable file (an absolute path, or a name on PATH)"
                        )),
                    ),
                }
            }
            None => match sandbox::probe(&exec.search_path) {
                Ok(()) => {
                    let uid = src.get_u64_range(&ev::SANDBOX_UID, 1, u64::from(u32::MAX - 1))?;
                    let mb = |v: &ev::EnvVar| src.get_u64_range(v, 1, 1 << 30).map(|m| m << 20);
                    let limits = sandbox::Limits {
                        address_space: mb(&ev::SANDBOX_MEMORY_MB)?,
                        processes: src.get_u64_range(&ev::SANDBOX_MAX_PROCESSES, 1, 1 << 22)?,
                        cpu_seconds: src.get_u64_range(&ev::SANDBOX_CPU_SEC, 0, 1 << 31)?,
                        tmp_size: mb(&ev::SANDBOX_TMP_MB)?,
                        workspace_size: mb(&ev::SANDBOX_WORKSPACE_MB)?,
                        ..sandbox::Limits::default()
                    };
                    let uid = u32::try_from(uid).unwrap_or(sandbox::DEFAULT_UID);
                    match Sandbox::builtin_with(&exec.search_path, uid, limits) {
                        Ok(s) => (Some(s), None),
                        Err(e) => (None, Some(e)),
                    }
                }
                Err(e) => (None, Some(e)),
            },
        };
        if nix::unistd::geteuid().is_root() && src.get_bool(&ev::ENABLE_REAL_CLI)? {
            tracing::warn!(
                "the runner runs as root with real agents: agents are started as SANDBOX_UID inside the sandbox, but orch's own host-side code runs as root; run the runner as an unprivileged user"
            );
        }
        if sandbox_required && sandbox.is_none() {
            return Err(RealConfigError::SandboxUnavailable(
                sandbox_problem.unwrap_or_default(),
            ));
        }
        let (cgroups, cgroup_problem) = cgroups_from_env(src, sandbox.as_ref())?;
        let cpu_percent = src.get_u64_range(&ev::SANDBOX_CPU_PERCENT, 0, 100_000)?;
        let network_allow = src.get_enum(&ev::NETWORK_POLICY, &["deny", "allow"])? == "allow";
        let mut min_versions = BTreeMap::new();
        for item in src.get_list(&ev::MIN_BINARY_VERSIONS)? {
            let parsed = item
                .split_once('=')
                .and_then(|(b, v)| Some((b.trim().to_owned(), Version::parse(v.trim())?)));
            match parsed {
                Some((b, v)) if !b.is_empty() => {
                    min_versions.insert(b, v);
                }
                _ => {
                    return Err(ConfigError::Invalid {
                        var: ev::MIN_BINARY_VERSIONS.name,
                        value: format!("{item:?}"),
                        expected: "comma-separated bin=1.2.3 pairs".into(),
                    }
                    .into());
                }
            }
        }
        let non_git_status =
            match src.get_enum(&ev::NON_GIT_WORKDIR_STATUS, &["needs_human", "failed"])? {
                "failed" => Status::Failed,
                _ => Status::NeedsHuman,
            };
        let config_path = contracts::config::path_opt(src, &ev::AGENTS_CONFIG)?;
        let file = agents::load_file(config_path.as_deref())?;
        let max_idle = match src.get_u64_range(&ev::RUNNER_MAX_IDLE_SEC, 0, 86_400)? {
            0 => None,
            s => Some(Duration::from_secs(s)),
        };
        Ok(Self {
            exec,
            sandbox_required,
            sandbox,
            sandbox_problem,
            network_allow,
            min_versions,
            non_git_status,
            agents: file.agents,
            state_seed_dir: file.state_seed_dir,
            max_idle,
            cgroups,
            cgroup_problem,
            cgroup_required: src.get_enum(&ev::SANDBOX_CGROUP, &["auto", "off", "require"])?
                == "require",
            cpu_percent,
            versions: Mutex::new(HashMap::new()),
        })
    }

    pub fn agent(&self, name: &str) -> Option<&AgentSpec> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// Whether a job's agents run sandboxed: `SANDBOX=1`, or the job asks
    /// for it. A job can make the sandbox stricter, never switch it off.
    pub fn sandboxed(&self, job_sandbox: bool) -> bool {
        self.sandbox_required || job_sandbox
    }

    /// Checks, before anything runs, that every agent of `job` can run:
    /// known agent, each binary allowed (ALLOWED_BINARIES ∩ the job's
    /// `allowed_binaries`), installed, at least its `MIN_BINARY_VERSIONS`,
    /// and a sandbox when one is needed. Every problem is listed in
    /// `error.details.problems`; the error code is `preflight`.
    pub async fn preflight(&self, job: &Job) -> Result<(), ErrorInfo> {
        let mut problems: Vec<String> = Vec::new();
        let mut binaries: BTreeSet<String> = BTreeSet::new();
        for step in &job.steps {
            match self.agent(&step.agent) {
                Some(a) => binaries.extend(a.binaries.iter().cloned()),
                None => problems.push(format!(
                    "step {}: agent {:?} is not configured (known: {})",
                    step.step_id,
                    step.agent,
                    self.agents
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        if self.sandboxed(job.policy.sandbox) && self.sandbox.is_none() {
            problems.push(format!(
                "the job needs a sandbox (policy.sandbox is true) but none is usable: {}",
                self.sandbox_problem.as_deref().unwrap_or("unknown reason")
            ));
        }
        for bin in &binaries {
            match self.exec.resolve(bin, &job.policy.allowed_binaries) {
                Err(e) => problems.push(e.to_string()),
                Ok(path) => {
                    if let Err(p) = self.check_version(bin, &path).await {
                        problems.push(p);
                    }
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let mut e = ErrorInfo::new(
            "preflight",
            format!("preflight failed: {}", problems.join("; ")),
        );
        e.details.insert("problems".into(), json!(problems));
        Err(e)
    }

    async fn check_version(&self, bin: &str, path: &Path) -> Result<(), String> {
        let name = Path::new(bin)
            .file_name()
            .map_or_else(|| bin.to_owned(), |n| n.to_string_lossy().into_owned());
        let Some(min) = self
            .min_versions
            .get(bin)
            .or_else(|| self.min_versions.get(&name))
        else {
            return Ok(());
        };
        let key = std::fs::metadata(path).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (path.to_path_buf(), m.mtime(), m.size())
        });
        let cached = key
            .as_ref()
            .and_then(|k| self.versions.lock().ok().and_then(|c| c.get(k).cloned()));
        let found = match cached {
            Some(v) => v,
            None => {
                let mut spec = ExecSpec::new(path, std::env::temp_dir()).arg("--version");
                spec.env = self.exec.child_env(&[]);
                spec.timeout = Some(VERSION_TIMEOUT);
                spec.max_output_chars = 64 * 1024;
                spec.kill_grace = Duration::from_secs(1);
                let out = exec::run(&spec, CancellationToken::new())
                    .await
                    .map_err(|e| format!("{bin} --version: {e}"))?;
                let text = format!(
                    "{}\n{}",
                    String::from_utf8_lossy(&out.stdout.bytes),
                    String::from_utf8_lossy(&out.stderr.bytes)
                );
                if !out.exit.success() {
                    return Err(format!(
                        "{} --version failed ({}); cannot check MIN_BINARY_VERSIONS {bin}={min}",
                        path.display(),
                        out.exit
                    ));
                }
                let Some(v) = Version::find(&text) else {
                    return Err(format!(
                        "{} --version printed no version number; cannot check MIN_BINARY_VERSIONS {bin}={min}",
                        path.display()
                    ));
                };
                if let (Some(k), Ok(mut c)) = (key, self.versions.lock()) {
                    c.insert(k, v.clone());
                }
                v
            }
        };
        if found < *min {
            return Err(format!(
                "{} is version {found}, older than MIN_BINARY_VERSIONS {bin}={min}; hint: upgrade it",
                path.display()
            ));
        }
        Ok(())
    }
}

/// The per-job state directories and the variables pointing at them. The
/// state directory is agent-writable: each directory is created without
/// following links ([`confine::mkdirs_beneath`]).
fn state_env(
    state_dir: &Path,
    sandboxed: bool,
) -> Result<Vec<(String, String)>, confine::ConfineError> {
    let dirs = [
        ("CLAUDE_CONFIG_DIR", "claude"),
        ("CODEX_HOME", "codex"),
        ("XDG_CONFIG_HOME", "xdg/config"),
        ("XDG_DATA_HOME", "xdg/data"),
        ("XDG_CACHE_HOME", "xdg/cache"),
        ("XDG_STATE_HOME", "xdg/state"),
        ("ORCH_AGENT_HOME", "home"),
    ];
    let mut env = Vec::new();
    for (var, rel) in dirs {
        confine::mkdirs_beneath(state_dir, Path::new(rel), 0o700)?;
        let value = state_dir.join(rel).display().to_string();
        if var == "ORCH_AGENT_HOME" {
            // The runner's home is not mounted in the sandbox; the agent
            // gets a private one.
            if sandboxed {
                env.push(("HOME".to_owned(), value));
            }
            continue;
        }
        env.push((var.to_owned(), value));
    }
    if sandboxed {
        env.push(("TMPDIR".to_owned(), "/tmp".to_owned()));
    }
    Ok(env)
}

/// Copies the operator's seed directory into a job's state directory once
/// (regular files and directories only; links are skipped so a seed cannot
/// point the agent elsewhere). Files get mode 0600. The state directory is
/// agent-writable, so every write is confined ([`confine::write_beneath`]):
/// a link planted at a seed path or at the `.orch-seeded` marker is a
/// violation, never a write through it.
fn seed_state(seed: &Path, state_dir: &Path) -> Result<(), confine::ConfineError> {
    let marker = Path::new(".orch-seeded");
    match confine::kind_beneath(state_dir, marker)? {
        Some(k) if k == nix::sys::stat::SFlag::S_IFREG => return Ok(()),
        Some(_) => {
            return Err(confine::ConfineError::Violation(confine::Violation {
                path: state_dir.join(marker),
                what: "is not a regular file".into(),
            }));
        }
        None => {}
    }
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| confine::ConfineError::Io { op, path, source }
    };
    for entry in walkdir::WalkDir::new(seed).follow_links(false).min_depth(1) {
        let entry = entry.map_err(|e| io("walk", seed)(std::io::Error::other(e)))?;
        let Ok(rel) = entry.path().strip_prefix(seed) else {
            continue;
        };
        let ft = entry.file_type();
        if ft.is_dir() {
            confine::mkdirs_beneath(state_dir, rel, 0o700)?;
        } else if ft.is_file() {
            let data = std::fs::read(entry.path()).map_err(io("read", entry.path()))?;
            confine::write_beneath(state_dir, rel, &data, 0o600)?;
        }
    }
    confine::write_beneath(state_dir, marker, b"", 0o600)
}

/// `SANDBOX_CGROUP` and `SANDBOX_CGROUP_ROOT`: where step cgroups go, or
/// why there are none (logged once here, and in every step's logs).
/// Cgroups hold the built-in profile's limits; a `SANDBOX_WRAPPER` is
/// responsible for its own.
fn cgroups_from_env(
    src: &EnvSource,
    sandbox: Option<&Sandbox>,
) -> Result<(Option<crate::cgroup::Cgroups>, Option<String>), RealConfigError> {
    use crate::cgroup::{Cgroups, Mode};
    let mode = match src.get_enum(&ev::SANDBOX_CGROUP, &["auto", "off", "require"])? {
        "off" => Mode::Off,
        "require" => Mode::Require,
        _ => Mode::Auto,
    };
    let root = src.get_str(&ev::SANDBOX_CGROUP_ROOT)?;
    if let Some(r) = &root
        && !r.starts_with('/')
    {
        return Err(ConfigError::Invalid {
            var: ev::SANDBOX_CGROUP_ROOT.name,
            value: format!("{r:?}"),
            expected: "a cgroup path starting with / (as in /proc/self/cgroup)".into(),
        }
        .into());
    }
    let found = match (mode, sandbox) {
        (Mode::Off, _) => Err("SANDBOX_CGROUP=off".to_owned()),
        (_, Some(Sandbox::Bubblewrap { .. })) => Cgroups::detect(root.as_deref()),
        (_, _) => Err("only the built-in sandbox profile runs steps in cgroups".to_owned()),
    };
    match found {
        Ok(c) => {
            let stale = c.sweep_stale();
            if stale > 0 {
                tracing::info!(
                    removed = stale,
                    "removed step cgroups left by runners that are gone"
                );
            }
            tracing::info!(cgroups = %c.describe(), "per-step cgroups hold memory and processes");
            Ok((Some(c), None))
        }
        Err(e) if mode == Mode::Require => Err(RealConfigError::CgroupUnavailable(e)),
        Err(e) => {
            if mode == Mode::Auto {
                tracing::warn!(
                    reason = %e,
                    "no per-step cgroups: memory holds per process (RLIMIT_AS) and processes per host uid (RLIMIT_NPROC); see docs/SECURITY.md"
                );
            }
            Ok((None, Some(e)))
        }
    }
}

/// The outcome of a step refused for what its agent planted.
/// A host-side write into the agent's state directory failed: a planted
/// link or file is a `sandbox_violation`, anything else a `state_dir` error.
fn state_dir_failure(
    e: confine::ConfineError,
    what: &str,
    logs: &str,
    elapsed: Duration,
) -> StepOutcome {
    match e {
        confine::ConfineError::Violation(v) => violation_outcome(&[v.to_string()], logs, elapsed),
        e => failure_outcome(
            Status::Failed,
            ErrorInfo::new("state_dir", format!("{what}: {e}")),
            logs,
            elapsed,
        ),
    }
}

/// A failed step before or without the agent's own result: the error, the
/// logs so far with its summary appended, and the elapsed time.
fn failure_outcome(status: Status, e: ErrorInfo, logs: &str, elapsed: Duration) -> StepOutcome {
    let mut o = StepOutcome::failure(status, e);
    o.logs = format!("{logs}[real] {}\n", o.summary);
    o.metrics = base_metrics(elapsed);
    o
}

fn violation_outcome(found: &[String], logs: &str, elapsed: Duration) -> StepOutcome {
    let mut e = ErrorInfo::new(
        confine::SANDBOX_VIOLATION,
        format!(
            "the agent planted what orch refuses to act on: {}",
            found.join("; ")
        ),
    );
    e.details.insert("refused".into(), json!(found));
    let mut o = StepOutcome::failure(Status::Failed, e);
    let mut logs = logs.to_owned();
    for f in found {
        let _ = writeln!(logs, "[real] refused: {f}");
    }
    o.logs = format!("{logs}[real] {}\n", o.summary);
    o.metrics = base_metrics(elapsed);
    o
}

const ROOT_WARNING: &str = "[real] WARNING: the runner runs as root. The agent runs as SANDBOX_UID \
inside the sandbox, but orch's host-side code (workspace, patches, artifacts) runs as root; \
run the runner as an unprivileged user.\n";

/// Gives the sandbox uid the job's workspace and state directory (a root
/// runner starts agents as that uid), never following links. Every
/// ancestor must be searchable by others, or bubblewrap (running as the
/// uid) could not bind them.
fn hand_over(work: &Path, state: &Path, uid: u32) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // The job's directory and the workspaces root are orch's own (created
    // 0750): make them traversable by others (o+x, not listable), so the
    // sandbox uid can reach the two directories it is given. Directories
    // above the workspaces root are the operator's: only a hint below.
    let me = nix::unistd::geteuid().as_raw();
    for own in work.ancestors().skip(1).take(2) {
        if let Ok(m) = std::fs::symlink_metadata(own)
            && m.is_dir()
            && m.uid() == me
            && m.mode() & 0o001 == 0
        {
            std::fs::set_permissions(
                own,
                std::fs::Permissions::from_mode(m.mode() & 0o7777 | 0o001),
            )
            .map_err(|e| format!("cannot make {} traversable: {e}", own.display()))?;
        }
    }
    for dir in [work, state] {
        for anc in dir.ancestors().skip(1) {
            if let Ok(m) = std::fs::metadata(anc)
                && m.mode() & 0o001 == 0
                && m.uid() != uid
            {
                return Err(format!(
                    "{} is not searchable by SANDBOX_UID {uid}, so the sandbox cannot reach {}; hint: chmod o+x {} (or place WORKSPACES_ROOT where others can traverse)",
                    anc.display(),
                    dir.display(),
                    anc.display()
                ));
            }
        }
        confine::chown_tree(dir, uid)
            .map_err(|e| format!("cannot hand {} to uid {uid}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Bytes of disk a tree uses (allocated blocks, so sparse files count what
/// they really take), links not followed.
fn disk_usage(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks().saturating_mul(512))
        .sum()
}

/// How often the workspace-size watchdog measures the workspace.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Measures `work` every [`WATCH_INTERVAL`] until `stop` fires; when it
/// holds more than `limit` bytes, records the size in `over` and fires
/// `stop` (which stops the agent's process group).
async fn watch_workspace(
    work: PathBuf,
    limit: u64,
    stop: CancellationToken,
    over: Arc<std::sync::atomic::AtomicU64>,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
        let w = work.clone();
        let used = tokio::task::spawn_blocking(move || disk_usage(&w))
            .await
            .unwrap_or(0);
        if used > limit {
            over.store(used, std::sync::atomic::Ordering::SeqCst);
            stop.cancel();
            return;
        }
    }
}

/// A step's limits for its logs and `result.json`, with what enforces each:
/// the cgroup for memory and processes when there is one (the rlimits then
/// stay at the operator's values as a backstop), else the rlimits.
fn limits_json(
    l: &sandbox::Limits,
    operator: Option<&sandbox::Limits>,
    cgroup: Option<&str>,
    cpu_percent: u64,
) -> Value {
    let mut v = l.to_json();
    let by = match cgroup {
        Some(kind) => {
            let op = operator.copied().unwrap_or(*l);
            v["rlimit_as_bytes"] = json!(op.address_space);
            v["rlimit_nproc"] = json!(op.processes);
            v["cpu_percent"] = json!(cpu_percent);
            json!({
                "memory": format!("{kind} (step)"),
                "processes": format!("{kind} (step)"),
                "cpu_percent": if cpu_percent > 0 { json!(format!("{kind} (step)")) } else { Value::Null },
                "cpu_seconds": "RLIMIT_CPU (process)",
                "tmp": "tmpfs size (step)",
                "workspace": "watchdog (job workspace)",
            })
        }
        None => json!({
            "memory": "RLIMIT_AS (process)",
            "processes": "RLIMIT_NPROC (host uid)",
            "cpu_seconds": "RLIMIT_CPU (process)",
            "tmp": "tmpfs size (step)",
            "workspace": "watchdog (job workspace)",
        }),
    };
    v["enforced_by"] = by;
    v
}

/// How often the step's cgroup is checked for OOM kills.
const OOM_WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Fires `stop` once the kernel's OOM killer killed a process of the step.
async fn watch_oom(counters: crate::cgroup::Counters, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(OOM_WATCH_INTERVAL) => {}
        }
        let c = counters.clone();
        let u = tokio::task::spawn_blocking(move || c.usage())
            .await
            .unwrap_or_default();
        if u.oom_kills > 0 {
            stop.cancel();
            return;
        }
    }
}

/// Which resource limit a failed agent ran into, from its exit signal or
/// the error messages the limits cause (ENOSPC, ENOMEM, EAGAIN on fork).
fn resource_hit(exit: ExitKind, stderr: &str) -> Option<(&'static str, &'static str)> {
    match exit {
        ExitKind::Signaled(24) => return Some(("cpu", "it used up its CPU time (SIGXCPU)")),
        ExitKind::Signaled(25) => {
            return Some(("file_size", "it wrote a file over the size limit (SIGXFSZ)"));
        }
        _ => {}
    }
    let has = |needles: &[&str]| needles.iter().any(|n| stderr.contains(n));
    if has(&["File size limit exceeded"]) {
        return Some(("file_size", "it wrote a file over the size limit"));
    }
    if has(&["No space left on device"]) {
        return Some((
            "tmp_size",
            "it filled its /tmp (or the disk): no space left on device",
        ));
    }
    if has(&[
        "Cannot allocate memory",
        "MemoryError",
        "out of memory",
        "std::bad_alloc",
        "heap out of memory",
    ]) {
        return Some(("memory", "it ran out of memory"));
    }
    if has(&[
        "fork: retry",
        "Cannot fork",
        "can't fork",
        "fork: Resource temporarily unavailable",
        "BlockingIOError: [Errno 11]",
    ]) {
        return Some(("processes", "it could not start more processes"));
    }
    None
}

/// What [`RealAgent::prepare`] decided: the program, the sandbox, the
/// environment and argv, the prompt on stdin (or `None`: in a file) and
/// the step's limits.
struct Prepared<'c> {
    program: PathBuf,
    sandbox: Option<&'c Sandbox>,
    env_extra: Vec<(String, String)>,
    argv: Vec<String>,
    stdin: Option<Vec<u8>>,
    limits: Option<sandbox::Limits>,
}

/// What [`supervise`] saw: the run, the workspace size when the watchdog
/// stopped it (0 = it did not), the cgroup's accounting.
struct Supervised {
    ran: Result<exec::ExecOutput, ExecError>,
    over: u64,
    usage: Option<crate::cgroup::Usage>,
}

/// Phase 4: runs the command under its watchdogs — the workspace size
/// (the workspace is on the host's disk, outside every rlimit but the
/// per-file one) and the cgroup's OOM kills — then reads the cgroup's
/// accounting, kills whatever is left in it and removes it.
async fn supervise(
    exec_spec: &ExecSpec,
    workdir: &Path,
    limits: Option<&sandbox::Limits>,
    cgroup: Option<crate::cgroup::StepCgroup>,
    cancel: &CancellationToken,
    logs: &mut String,
) -> Supervised {
    let stop = cancel.child_token();
    let over = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watchdog = limits.map(|l| {
        tokio::spawn(watch_workspace(
            workdir.to_path_buf(),
            l.workspace_size,
            stop.clone(),
            over.clone(),
        ))
    });
    // The OOM killer acts inside the step at once; the step is stopped
    // when it did (the agent would otherwise go on, maimed).
    let oom_watch = cgroup
        .as_ref()
        .map(|cg| tokio::spawn(watch_oom(cg.counters(), stop.clone())));
    let ran = exec::run(exec_spec, stop.clone()).await;
    if let Some(w) = oom_watch {
        w.abort();
    }
    stop.cancel();
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    // The kernel's accounting, then nothing of the step survives it:
    // every process left in its cgroup is killed and the cgroup removed.
    let usage = cgroup.as_ref().map(crate::cgroup::StepCgroup::usage);
    if let Some(cg) = cgroup {
        match tokio::task::spawn_blocking(move || cg.kill_and_remove()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                let _ = writeln!(logs, "[real] cgroup: killed {n} leftover process(es)");
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "step cgroup not removed");
                let _ = writeln!(logs, "[real] cgroup: not removed: {e}");
            }
            Err(_) => {}
        }
    }
    if let Some(u) = &usage {
        let _ = writeln!(logs, "[real] cgroup usage: {}", u.to_json());
    }
    Supervised {
        ran,
        over: over.load(std::sync::atomic::Ordering::SeqCst),
        usage,
    }
}

/// Phase 5: which limit, if any, the step ran into, and why: the
/// workspace (the watchdog's figure, or one last measurement), the
/// cgroup's OOM kills or refused forks, or what the agent's exit and
/// stderr say (SIGXCPU, ENOSPC, ...).
async fn limit_outcome(
    l: &sandbox::Limits,
    workdir: &Path,
    over: u64,
    usage: Option<&crate::cgroup::Usage>,
    out: &exec::ExecOutput,
    cancel: &CancellationToken,
) -> Option<(&'static str, String)> {
    let mut used = over;
    if used == 0 && !cancel.is_cancelled() {
        let work = workdir.to_path_buf();
        used = tokio::task::spawn_blocking(move || disk_usage(&work))
            .await
            .unwrap_or(0);
        if used <= l.workspace_size {
            used = 0;
        }
    }
    if used > 0 {
        return Some((
            "workspace_size",
            format!(
                "the workspace grew to {used} bytes, over its limit of {} bytes",
                l.workspace_size
            ),
        ));
    }
    // An OOM kill disrupted the step whatever its exit says; refused forks
    // count when the agent failed.
    if let Some(u) = usage
        && let Some(kind) = u.hit().filter(|k| *k == "memory" || !out.exit.success())
    {
        return Some((
            kind,
            if kind == "memory" {
                format!(
                    "the kernel killed {} process(es) at the step's cgroup memory limit of {} bytes",
                    u.oom_kills, l.address_space
                )
            } else {
                format!(
                    "the step's cgroup refused {} fork(s) at its limit of {} processes",
                    u.pids_refused, l.processes
                )
            },
        ));
    }
    if !out.exit.success() && !cancel.is_cancelled() {
        return resource_hit(out.exit, &String::from_utf8_lossy(&out.stderr.bytes))
            .map(|(k, why)| (k, why.to_owned()));
    }
    None
}

/// A real agent CLI.
#[derive(Debug, Clone)]
pub struct RealAgent {
    spec: AgentSpec,
    cfg: Arc<RealConfig>,
}

impl RealAgent {
    pub fn new(spec: AgentSpec, cfg: Arc<RealConfig>) -> Self {
        Self { spec, cfg }
    }

    /// One attempt of one step, in named phases: [`Self::prepare`] (state
    /// directories, the command's values, limits, hand-over),
    /// [`Self::create_cgroup`], [`Self::build_command`] (sandbox and cgroup
    /// wrapped around the agent), [`supervise`] (run it under the watchdogs,
    /// then clean up its cgroup), [`limit_outcome`], and [`Self::collect`]
    /// (post-step checks, output parsing, metrics). Each phase that can end
    /// the step returns its outcome as `Err`.
    async fn execute(&self, req: &StepRequest, cancel: CancellationToken) -> StepOutcome {
        let t0 = Instant::now();
        let mut logs = format!(
            "[real] agent={} role={} job={} step={} attempt={}\n",
            self.spec.name, req.step.role, req.job_id, req.step.step_id, req.attempt
        );
        match self.attempt(req, &cancel, t0, &mut logs).await {
            Ok(o) => o,
            Err(o) => *o,
        }
    }

    async fn attempt(
        &self,
        req: &StepRequest,
        cancel: &CancellationToken,
        t0: Instant,
        logs: &mut String,
    ) -> Result<StepOutcome, Box<StepOutcome>> {
        let prepared = self.prepare(req, t0, logs)?;
        let cgroup = self.create_cgroup(prepared.limits.as_ref(), t0, logs)?;
        let cgroup_kind = cgroup
            .as_ref()
            .and(self.cfg.cgroups.as_ref())
            .map(crate::cgroup::Cgroups::kind);
        let operator = prepared.sandbox.and_then(Sandbox::limits);
        let cpu_percent = self.cfg.cpu_percent;
        let limits_json =
            |l: &sandbox::Limits| limits_json(l, operator.as_ref(), cgroup_kind, cpu_percent);
        let exec_spec = self.build_command(req, &prepared, cgroup.as_ref(), logs);
        if let Some(l) = &prepared.limits {
            let _ = writeln!(logs, "[real] limits: {}", limits_json(l));
        }
        let run = supervise(
            &exec_spec,
            &req.workdir,
            prepared.limits.as_ref(),
            cgroup,
            cancel,
            logs,
        )
        .await;
        let out = match run.ran {
            Ok(o) => o,
            Err(e) => {
                return Err(Box::new(failure_outcome(
                    Status::Failed,
                    ErrorInfo::new(e.code(), e.to_string()),
                    logs,
                    t0.elapsed(),
                )));
            }
        };
        if let Some(l) = &prepared.limits
            && let Some((kind, why)) =
                limit_outcome(l, &req.workdir, run.over, run.usage.as_ref(), &out, cancel).await
        {
            let _ = writeln!(logs, "[real] refused: resource limit {kind}: {why}");
            tracing::warn!(job_id = %req.job_id, step_id = %req.step.step_id, limit = kind, "resource limit hit");
            let mut e = ErrorInfo::new(
                "resource_limit",
                format!("{} was stopped: {why} (limit {kind})", self.spec.name),
            );
            e.details.insert("limit".into(), json!(kind));
            e.details.insert("limits".into(), limits_json(l));
            if let Some(u) = &run.usage {
                e.details.insert("cgroup".into(), u.to_json());
            }
            let mut o = StepOutcome::failure(Status::Failed, e);
            o.logs = format!("{logs}[real] {}\n", o.summary);
            o.metrics = base_metrics(t0.elapsed());
            o.metrics.insert("limits".into(), limits_json(l));
            o.raw_stdout = Some(out.stdout.bytes);
            o.raw_stderr = Some(out.stderr.bytes);
            return Err(Box::new(o));
        }
        let mut outcome = self.collect(req, out, t0, logs)?;
        outcome
            .metrics
            .insert("sandboxed".into(), json!(prepared.sandbox.is_some()));
        if let Some(l) = &prepared.limits {
            outcome.metrics.insert("limits".into(), limits_json(l));
        }
        Ok(outcome)
    }

    /// Phase 1: everything before the command exists — the git check, the
    /// allowlisted program, the sandbox decision, the per-job state
    /// directories (seeded, prompt file written, all confined), the
    /// template values, the step's limits and, under a root runner, the
    /// hand-over of the job's directories to the sandbox uid.
    fn prepare<'c>(
        &'c self,
        req: &StepRequest,
        t0: Instant,
        logs: &mut String,
    ) -> Result<Prepared<'c>, Box<StepOutcome>> {
        let spec = &self.spec;
        let cfg = &self.cfg;
        let step = &req.step;
        let fail = |status: Status, code: &str, msg: String, logs: &str| {
            Box::new(failure_outcome(
                status,
                ErrorInfo::new(code, msg),
                logs,
                t0.elapsed(),
            ))
        };
        if spec.needs_git && !crate::workspace::is_git_workspace(&req.workdir) {
            return Err(fail(
                cfg.non_git_status,
                "non_git_workdir",
                format!(
                    "agent {} needs a git work tree but {} is not one (NON_GIT_WORKDIR_STATUS={})",
                    spec.name,
                    req.workdir.display(),
                    cfg.non_git_status
                ),
                logs,
            ));
        }
        let program = cfg
            .exec
            .resolve(spec.program(), &req.policy.allowed_binaries)
            .map_err(|e| fail(Status::Failed, e.code(), e.to_string(), logs))?;
        let sandboxed = cfg.sandboxed(req.policy.sandbox);
        let sandbox = match (sandboxed, &cfg.sandbox) {
            (false, _) => None,
            (true, Some(s)) => Some(s),
            (true, None) => {
                return Err(fail(
                    Status::Failed,
                    "sandbox_unavailable",
                    format!(
                        "the step must run sandboxed but no sandbox is usable: {}",
                        cfg.sandbox_problem.as_deref().unwrap_or("unknown reason")
                    ),
                    logs,
                ));
            }
        };
        let mut env_extra = state_env(&req.state_dir, sandboxed).map_err(|e| {
            let what = format!("cannot prepare {}", req.state_dir.display());
            Box::new(state_dir_failure(e, &what, logs, t0.elapsed()))
        })?;
        if let Some(seed) = &cfg.state_seed_dir {
            seed_state(seed, &req.state_dir).map_err(|e| {
                let what = format!(
                    "cannot seed {} from {}",
                    req.state_dir.display(),
                    seed.display()
                );
                Box::new(state_dir_failure(e, &what, logs, t0.elapsed()))
            })?;
        }

        // The step's access (contracts::access), not the role's wording.
        let read_only = step.access() == contracts::Access::Read;
        let mut values: BTreeMap<&'static str, String> = BTreeMap::new();
        if let Some(m) = &spec.model {
            values.insert("model", m.clone());
        }
        if let Some(tools) = allowed_tools(step.allowed_tools.as_deref(), read_only, logs) {
            values.insert("allowed_tools", tools);
        }
        values.insert(
            "sandbox_mode",
            if read_only {
                "read-only"
            } else {
                "workspace-write"
            }
            .to_owned(),
        );
        values.insert("workdir", req.workdir.display().to_string());
        values.insert("state_dir", req.state_dir.display().to_string());
        values.insert("role", step.role.clone());
        values.insert("step_id", step.step_id.to_string());
        values.insert("job_id", req.job_id.to_string());
        let mut stdin = Some(req.prompt.clone().into_bytes());
        if spec.prompt == PromptMode::File {
            let rel = PathBuf::from("prompts").join(format!("{}-{}.md", step.step_id, req.attempt));
            let file = req.state_dir.join(&rel);
            confine::write_beneath(&req.state_dir, &rel, req.prompt.as_bytes(), 0o600).map_err(
                |e| {
                    let what = format!("cannot write the prompt file {}", file.display());
                    Box::new(state_dir_failure(e, &what, logs, t0.elapsed()))
                },
            )?;
            values.insert("prompt_file", file.display().to_string());
            stdin = None;
        }
        if nix::unistd::geteuid().is_root() {
            logs.push_str(ROOT_WARNING);
        }
        let limits = sandbox.and_then(Sandbox::limits).map(|l| {
            l.narrowed(&spec.limits)
                .narrowed(&req.policy.limits.unwrap_or_default())
        });
        if let Some(uid) = sandbox.and_then(Sandbox::host_uid) {
            // A root runner starts the agent as `uid`: hand it the job's
            // workspace and state directory (never anything else).
            hand_over(&req.workdir, &req.state_dir, uid)
                .map_err(|msg| fail(Status::Failed, "sandbox_unavailable", msg, logs))?;
        }
        env_extra.sort();
        Ok(Prepared {
            program,
            sandbox,
            env_extra,
            argv: agents::expand(&spec.argv, &values),
            stdin,
            limits,
        })
    }

    /// Phase 2: the step's cgroup (memory and processes for the whole
    /// step), when the step has limits and the runner can create cgroups.
    /// Without one the step runs on rlimits alone (said in its logs),
    /// unless `SANDBOX_CGROUP=require`.
    fn create_cgroup(
        &self,
        limits: Option<&sandbox::Limits>,
        t0: Instant,
        logs: &mut String,
    ) -> Result<Option<crate::cgroup::StepCgroup>, Box<StepOutcome>> {
        let cfg = &self.cfg;
        let Some(l) = limits else {
            return Ok(None);
        };
        let Some(cgs) = &cfg.cgroups else {
            let _ = writeln!(
                logs,
                "[real] cgroup: none ({}); memory holds per process, processes per host uid",
                cfg.cgroup_problem.as_deref().unwrap_or("unavailable")
            );
            return Ok(None);
        };
        match cgs.create(crate::cgroup::CgroupLimits {
            memory_bytes: l.address_space,
            processes: l.processes,
            cpu_percent: cfg.cpu_percent,
        }) {
            Ok(cg) => {
                let _ = writeln!(
                    logs,
                    "[real] cgroup: {} ({})",
                    cg.path().display(),
                    cgs.kind()
                );
                Ok(Some(cg))
            }
            Err(e) if cfg.cgroup_required => Err(Box::new(failure_outcome(
                Status::Failed,
                ErrorInfo::new(
                    "sandbox_setup",
                    format!("cannot create the step's cgroup (SANDBOX_CGROUP=require): {e}"),
                ),
                logs,
                t0.elapsed(),
            ))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a step cgroup; rlimits only");
                let _ = writeln!(
                    logs,
                    "[real] cgroup: none (cannot create one: {e}); memory holds per process, processes per host uid"
                );
                Ok(None)
            }
        }
    }

    /// Phase 3: the command — the agent's argv and cleared environment,
    /// wrapped in the sandbox (network: the stricter of the job's and the
    /// runner's policy) and joined to the step's cgroup.
    fn build_command(
        &self,
        req: &StepRequest,
        p: &Prepared<'_>,
        cgroup: Option<&crate::cgroup::StepCgroup>,
        logs: &mut String,
    ) -> ExecSpec {
        let cfg = &self.cfg;
        let mut exec_spec = ExecSpec::new(p.program.clone(), req.workdir.clone());
        exec_spec.args = p.argv.iter().skip(1).map(Into::into).collect();
        exec_spec.env = cfg.exec.child_env(&p.env_extra);
        exec_spec.stdin = p.stdin.clone();
        exec_spec.timeout = Some(Duration::from_secs(u64::from(req.step.timeout_sec)));
        exec_spec.idle_timeout = cfg.max_idle;
        exec_spec.max_output_chars = cfg.exec.max_output_chars;
        exec_spec.kill_grace = cfg.exec.kill_grace;
        // The stricter of the job's and the runner's policy: a job can make
        // the sandbox stricter, never wider.
        let network = req.policy.network == NetworkPolicy::Allow && cfg.network_allow;
        if let Some(sb) = p.sandbox {
            let mounts = Mounts {
                rw: vec![req.workdir.clone(), req.state_dir.clone()],
                ro: self.spec.ro_paths.clone(),
                network,
                limits: p.limits,
                cgroup: cgroup.is_some(),
            };
            exec_spec = sb.wrap(&exec_spec, &mounts);
            exec_spec.cgroup = cgroup
                .map(crate::cgroup::StepCgroup::procs_files)
                .unwrap_or_default();
            let _ = writeln!(
                logs,
                "[real] sandbox: {} (network {})",
                sb.describe(),
                if network { "allowed" } else { "denied" }
            );
        } else {
            logs.push_str("[real] sandbox: none (SANDBOX=0 and policy.sandbox=false)\n");
        }
        let _ = writeln!(logs, "[real] command: {}", exec_spec.display());
        let names: Vec<&str> = exec_spec.env.iter().map(|(k, _)| k.as_str()).collect();
        let _ = writeln!(logs, "[real] environment: {}", names.join(" "));
        exec_spec
    }

    /// Phase 6: what the agent left and what it said — the post-step checks
    /// (planted links, git configuration, setuid bits: `sandbox_violation`),
    /// then its output parsed and normalised, with cost metrics.
    fn collect(
        &self,
        req: &StepRequest,
        out: exec::ExecOutput,
        t0: Instant,
        logs: &mut String,
    ) -> Result<StepOutcome, Box<StepOutcome>> {
        let spec = &self.spec;
        let _ = writeln!(
            logs,
            "[real] {} after {} ms; stdout {} bytes{}, stderr {} bytes{}",
            out.exit,
            out.duration.as_millis(),
            out.stdout.total_bytes,
            if out.stdout.truncated {
                " (truncated)"
            } else {
                ""
            },
            out.stderr.total_bytes,
            if out.stderr.truncated {
                " (truncated)"
            } else {
                ""
            },
        );
        // What the agent left where orch acts from the host: links in the
        // state paths orch opens, git configuration that runs commands,
        // setuid/setgid files (their bits are cleared).
        let mut refused: Vec<String> = confine::check_state_dir(&req.state_dir)
            .iter()
            .chain(crate::hostgit::check_workspace(&req.workdir).iter())
            .map(ToString::to_string)
            .collect();
        for dir in [&req.workdir, &req.state_dir] {
            for p in confine::strip_setid(dir) {
                refused.push(format!("{}: setuid/setgid bits cleared", p.display()));
            }
        }
        if !refused.is_empty() {
            tracing::warn!(job_id = %req.job_id, step_id = %req.step.step_id, refused = ?refused, "sandbox violation");
            let mut o = violation_outcome(&refused, logs, t0.elapsed());
            o.raw_stdout = Some(out.stdout.bytes);
            o.raw_stderr = Some(out.stderr.bytes);
            return Err(Box::new(o));
        }
        let mut parsed = output::parse(spec.format, &out.stdout.for_parsing());
        if out.stdout.truncated {
            // The middle of the transcript is gone: only a result found in
            // the tail's complete lines is the agent's final word; an older
            // message from the head must not pass for it.
            let tail = output::parse(spec.format, out.stdout.tail_lines());
            parsed.result = tail.result;
            if tail.error.is_some() {
                parsed.error = tail.error;
                parsed.error_kind = tail.error_kind;
            }
            parsed.notes.push(
                "stdout exceeded MAX_SUBPROCESS_OUTPUT_CHARS: the result is read from its tail and token/cost sums may be incomplete"
                    .into(),
            );
        }
        for n in &parsed.notes {
            let _ = writeln!(logs, "[real] note: {n}");
        }
        let stderr_text = String::from_utf8_lossy(&out.stderr.bytes).into_owned();
        if !stderr_text.trim().is_empty() {
            let tail: String = {
                let chars: Vec<char> = stderr_text.chars().collect();
                chars[chars.len().saturating_sub(STDERR_IN_LOGS)..]
                    .iter()
                    .collect()
            };
            let _ = writeln!(
                logs,
                "[real] stderr (last {STDERR_IN_LOGS} characters):\n{tail}"
            );
        }
        let mut outcome = self.normalise(req, &out.exit, &parsed, &out, &stderr_text);
        outcome.logs = format!(
            "{logs}[real] outcome: {} — {}\n",
            outcome.status, outcome.summary
        );
        let mut metrics = base_metrics(t0.elapsed());
        metrics.extend(parsed.metrics());
        if parsed.cost_usd.is_none() {
            let priced = spec.price().and_then(|p| {
                Some(p.cost(
                    parsed.tokens_in?,
                    parsed.tokens_cached_in.unwrap_or(0),
                    parsed.tokens_out.unwrap_or(0),
                ))
            });
            match priced {
                Some(c) => {
                    metrics.insert("cost_usd".into(), json!(c));
                    metrics.insert("cost_source".into(), json!("price_table"));
                }
                None => {
                    metrics.insert("cost_usd".into(), json!(0.0));
                    metrics.insert("cost_source".into(), json!("unknown"));
                }
            }
        } else {
            metrics.insert("cost_source".into(), json!("agent"));
        }
        outcome.metrics = metrics;
        outcome.raw_stdout = Some(out.stdout.bytes);
        outcome.raw_stderr = Some(out.stderr.bytes);
        Ok(outcome)
    }

    fn normalise(
        &self,
        req: &StepRequest,
        exit: &ExitKind,
        parsed: &Parsed,
        out: &exec::ExecOutput,
        stderr: &str,
    ) -> StepOutcome {
        let name = &self.spec.name;
        let step = &req.step;
        let with_details = |mut o: StepOutcome, class: Option<FailureClass>| {
            if let Some(e) = o.error.as_mut() {
                e.details.insert("exit".into(), json!(exit.to_string()));
                if let Some(s) = &parsed.session_id {
                    e.details.insert("session_id".into(), json!(s));
                }
                if let Some(k) = &parsed.error_kind {
                    e.details.insert("agent_error_kind".into(), json!(k));
                }
                if let Some(c) = class {
                    let c = if c == FailureClass::Retryable {
                        "retryable"
                    } else {
                        "fatal"
                    };
                    e.details.insert("class".into(), json!(c));
                }
            }
            o
        };
        match exit {
            ExitKind::TimedOut => {
                return with_details(
                    StepOutcome::failure(
                        Status::Timeout,
                        ErrorInfo::new(
                            "timeout",
                            format!("{name} ran longer than timeout_sec={}", step.timeout_sec),
                        ),
                    ),
                    None,
                );
            }
            ExitKind::IdleTimedOut => {
                let secs = self.cfg.max_idle.map_or(0, |d| d.as_secs());
                return with_details(
                    StepOutcome::failure(
                        Status::Timeout,
                        ErrorInfo::new(
                            "idle_timeout",
                            format!(
                                "{name} printed nothing for {secs}s (RUNNER_MAX_IDLE_SEC={secs}) and was stopped"
                            ),
                        ),
                    ),
                    None,
                );
            }
            ExitKind::Cancelled => {
                return StepOutcome::cancelled(format!(
                    "{name} was stopped: the attempt was cancelled"
                ));
            }
            _ => {}
        }
        let failed = |class: FailureClass, code: &str, msg: String| {
            let status = match class {
                FailureClass::Retryable => Status::Retryable,
                FailureClass::Fatal => Status::Failed,
            };
            let mut o = StepOutcome::failure(status, ErrorInfo::new(code, msg.clone()));
            o.summary = one_line(&msg, 200);
            o.report_md = format!(
                "# Step {} ({}:{})\n\n**{}** — {}\n",
                step.step_id, name, step.role, status, msg
            );
            with_details(o, Some(class))
        };
        if let Some(err) = &parsed.error {
            let class = output::classify(parsed.error_kind.as_deref(), &format!("{err}\n{stderr}"));
            return failed(
                class,
                "agent_error",
                format!("{name} reported an error: {}", one_line(err, 500)),
            );
        }
        // bubblewrap's own set-up errors ("bwrap: Can't find source path
        // ...") mean the agent never started: fatal, with bwrap's reason,
        // since a retry would meet the same set-up.
        if !exit.success()
            && out.stdout.total_bytes == 0
            && let Some(reason) = stderr.lines().find(|l| l.starts_with("bwrap: "))
        {
            return failed(
                FailureClass::Fatal,
                "sandbox_setup",
                format!(
                    "the sandbox for {name} could not be set up: {}",
                    one_line(reason, 300)
                ),
            );
        }
        if !exit.success() {
            let class = output::classify_crash(stderr);
            let code = if class == FailureClass::Retryable {
                "agent_crashed"
            } else {
                "agent_failed"
            };
            let first = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no error output");
            return failed(
                class,
                code,
                format!("{name} ended with {exit}: {}", one_line(first, 300)),
            );
        }
        let Some(result) = &parsed.result else {
            if out.stdout.truncated {
                return failed(
                    FailureClass::Fatal,
                    "output_too_large",
                    format!(
                        "{name} printed {} bytes, more than MAX_SUBPROCESS_OUTPUT_CHARS={}, and its result could not be read; hint: raise MAX_SUBPROCESS_OUTPUT_CHARS",
                        out.stdout.total_bytes, self.cfg.exec.max_output_chars
                    ),
                );
            }
            return failed(
                FailureClass::Retryable,
                "no_result",
                format!(
                    "{name} exited 0 but printed no result ({} format)",
                    self.spec.format.as_str()
                ),
            );
        };
        let mut o = StepOutcome::new(Status::Success, one_line(result, 200));
        o.report_md = format!(
            "# Step {} ({}:{})\n\n{}\n",
            step.step_id,
            name,
            step.role,
            result.trim_end()
        );
        o
    }
}

fn base_metrics(elapsed: Duration) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("duration_ms".into(), json!(elapsed.as_millis() as u64));
    m.insert("simulated".into(), json!(false));
    m
}

/// The `{allowed_tools}` value: known tool names from the step (unknown
/// ones dropped with a warning); read-only roles get at most
/// Read, Grep, Glob.
fn allowed_tools(
    requested: Option<&[String]>,
    read_only: bool,
    logs: &mut String,
) -> Option<String> {
    let known: Option<Vec<String>> = requested.map(|r| {
        r.iter()
            .filter(|t| {
                let base = t.split('(').next().unwrap_or("");
                let ok = agents::CLAUDE_TOOLS.contains(&base);
                if !ok {
                    let _ = writeln!(
                        logs,
                        "[real] warning: unknown tool {t:?} dropped from allowed_tools"
                    );
                }
                ok
            })
            .cloned()
            .collect()
    });
    if read_only {
        let tools: Vec<String> = match known {
            Some(k) => k
                .into_iter()
                .filter(|t| READ_ONLY_TOOLS.contains(&t.as_str()))
                .collect(),
            None => Vec::new(),
        };
        let tools = if tools.is_empty() {
            READ_ONLY_TOOLS.iter().map(|s| (*s).to_owned()).collect()
        } else {
            tools
        };
        return Some(tools.join(","));
    }
    known.filter(|k| !k.is_empty()).map(|k| k.join(","))
}

fn one_line(s: &str, max: usize) -> String {
    // Redact before cutting: a cut secret no longer matches its rule.
    let (s, _) = artifacts::secrets::scan_and_redact(s);
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut out: String = line.chars().take(max).collect();
    if out.len() < line.len() {
        out.push('…');
    }
    out
}

impl Worker for RealAgent {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn run<'a>(&'a self, req: &'a StepRequest, cancel: CancellationToken) -> WorkerFuture<'a> {
        Box::pin(self.execute(req, cancel))
    }
}

impl From<ExecError> for ErrorInfo {
    fn from(e: ExecError) -> Self {
        ErrorInfo::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(Version::parse("1.10.0") > Version::parse("1.9.3"));
        assert_eq!(Version::parse("2.0"), Version::parse("2.0.0"));
        assert_eq!(
            Version::find("2.0.14 (Claude Code)"),
            Version::parse("2.0.14")
        );
        assert_eq!(Version::find("codex-cli 0.46.0"), Version::parse("0.46.0"));
        assert_eq!(Version::find("no digits"), None);
    }

    #[test]
    fn reviewer_tools_are_read_only() {
        let mut logs = String::new();
        assert_eq!(
            allowed_tools(None, true, &mut logs).as_deref(),
            Some("Read,Grep,Glob")
        );
        let req = vec![
            "Read".to_owned(),
            "Write".to_owned(),
            "Frobnicate".to_owned(),
        ];
        assert_eq!(
            allowed_tools(Some(&req), true, &mut logs).as_deref(),
            Some("Read")
        );
        assert_eq!(
            allowed_tools(Some(&req), false, &mut logs).as_deref(),
            Some("Read,Write")
        );
        assert!(logs.contains("Frobnicate"));
        assert_eq!(allowed_tools(None, false, &mut logs), None);
    }
}
