//! The interface between the runner and an agent: a `StepRequest` goes in, a
//! `StepOutcome` comes out, and a `Registry` maps the `agent` names of job
//! steps to the workers that run them.
//!
//! `Worker::run` returns a boxed future rather than being an `async fn` so
//! the trait stays object-safe: the registry holds `Arc<dyn Worker>` and the
//! runner does not care whether an agent is simulated or a real CLI.
//! A worker never panics and never returns `Err`: every failure is an
//! outcome with an honest `status` and an `ErrorInfo`, because the runner
//! has to publish a `result.json` for it either way.

use crate::real::{RealAgent, RealConfig, RealConfigError};
use contracts::env::{self as ev, EnvSource};
use contracts::{ErrorInfo, Job, JobId, Policy, Status, Step};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// One attempt of one step, fully prepared by the runner.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRequest {
    pub job_id: JobId,
    pub step: Step,
    /// 1-based attempt number of this step.
    pub attempt: u32,
    /// The fully built prompt (system prompt, task, context, input
    /// artifacts). Agents receive it on stdin or in a file, never on argv.
    pub prompt: String,
    /// The agent's working directory: `workspaces/<job_id>/work`.
    pub workdir: PathBuf,
    /// A private per-job directory for the agent CLI's own state and config
    /// (concurrent agents sharing one user config corrupt it).
    pub state_dir: PathBuf,
    /// The job's goal, for adapters that report on it.
    pub goal: String,
    /// The job's policy: sandbox, network, allowed binaries (real agents
    /// enforce it; simulated ones ignore it).
    pub policy: Policy,
}

/// What an attempt produced. `status` is one of `success`, `failed` (fatal),
/// `retryable`, `timeout`, `cancelled`, `needs_human`; never `running`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub status: Status,
    /// One line for `result.json`'s `summary` and `state.json`.
    pub summary: String,
    /// The step's `report.md`.
    pub report_md: String,
    /// The step's `logs.txt` (orch's own account of the run).
    pub logs: String,
    /// `duration_ms`, `cost_usd`, `tokens_in`, `tokens_out`, and any extra
    /// keys (`session_id`, `simulated`, ...).
    pub metrics: Map<String, Value>,
    pub error: Option<ErrorInfo>,
    /// The agent's complete streams (real-CLI mode), before redaction.
    pub raw_stdout: Option<Vec<u8>>,
    pub raw_stderr: Option<Vec<u8>>,
}

impl StepOutcome {
    /// An outcome with the given status and summary and nothing else.
    pub fn new(status: Status, summary: impl Into<String>) -> Self {
        Self {
            status,
            summary: summary.into(),
            report_md: String::new(),
            logs: String::new(),
            metrics: Map::new(),
            error: None,
            raw_stdout: None,
            raw_stderr: None,
        }
    }

    /// A non-success outcome whose summary is the error's message.
    pub fn failure(status: Status, error: ErrorInfo) -> Self {
        let mut out = Self::new(status, error.message.clone());
        out.error = Some(error);
        out
    }

    /// The outcome of an attempt stopped through its cancellation token.
    pub fn cancelled(detail: impl Into<String>) -> Self {
        Self::failure(Status::Cancelled, ErrorInfo::new("cancelled", detail))
    }

    /// True when the runner may retry this outcome (SPEC §5.3: only
    /// retryable outcomes and timeouts; never `needs_human` or fatal ones).
    pub fn is_retryable(&self) -> bool {
        matches!(self.status, Status::Retryable | Status::Timeout)
    }
}

/// The future a worker returns.
pub type WorkerFuture<'a> = Pin<Box<dyn Future<Output = StepOutcome> + Send + 'a>>;

/// An agent adapter.
pub trait Worker: Send + Sync {
    /// The agent name job steps use (`opencode`, `codex`, `claude`, ...).
    fn name(&self) -> &str;

    /// Runs one attempt. When `cancel` fires the worker stops its agent
    /// promptly and returns a `cancelled` outcome; the runner applies the
    /// step's timeout by cancelling too (and then reports `timeout`).
    fn run<'a>(&'a self, req: &'a StepRequest, cancel: CancellationToken) -> WorkerFuture<'a>;
}

/// Agent name → worker, plus the real-mode configuration when the workers
/// are real CLIs (for per-job preflight).
#[derive(Clone, Default)]
pub struct Registry {
    workers: BTreeMap<String, Arc<dyn Worker>>,
    real: Option<Arc<RealConfig>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The three simulated agents (`opencode`, `codex`, `claude`).
    /// `step_ms` overrides every simulated step's duration
    /// (`SIMULATION_STEP_MS`; `Some(0)` = no sleep); `None` keeps the MVP's
    /// per-agent durations (400/600/300 ms).
    pub fn simulated(step_ms: Option<u64>) -> Self {
        let mut r = Self::new();
        for agent in crate::sim::SimulatedAgent::builtin(step_ms) {
            r.insert(Arc::new(agent));
        }
        r
    }

    /// What a binary builds at start-up: real CLIs when `ENABLE_REAL_CLI=1`
    /// (refusing to start when `SANDBOX=1` and no sandbox works, or the
    /// agents config is invalid), otherwise the simulated agents plus a
    /// simulated stand-in for every custom agent of `AGENTS_CONFIG` (so
    /// jobs naming them run in simulation too).
    pub fn from_env(src: &EnvSource, step_ms: Option<u64>) -> Result<Self, RealConfigError> {
        if src.get_bool(&ev::ENABLE_REAL_CLI)? {
            return Ok(Self::real(Arc::new(RealConfig::from_env(src)?)));
        }
        let mut r = Self::simulated(step_ms);
        let path = contracts::config::path_opt(src, &ev::AGENTS_CONFIG)?;
        for spec in crate::agents::load(path.as_deref())? {
            if !r.contains(&spec.name) {
                let ms = step_ms.unwrap_or(crate::sim::DEFAULT_STEP_MS[0].1);
                r.insert(Arc::new(crate::sim::SimulatedAgent::new(
                    spec.name,
                    crate::sim::SimBehaviour::Plan,
                    ms,
                )));
            }
        }
        Ok(r)
    }

    /// Real CLI workers for every agent of `cfg` (built-in and custom).
    pub fn real(cfg: Arc<RealConfig>) -> Self {
        let mut r = Self::new();
        for spec in &cfg.agents {
            r.insert(Arc::new(RealAgent::new(spec.clone(), cfg.clone())));
        }
        r.real = Some(cfg);
        r
    }

    /// True when the workers are real CLIs.
    pub fn is_real(&self) -> bool {
        self.real.is_some()
    }

    /// The real-mode configuration, if any.
    pub fn real_config(&self) -> Option<&Arc<RealConfig>> {
        self.real.as_ref()
    }

    /// Checks, before a job's first step, that every agent it names can
    /// run (see `RealConfig::preflight`); the error has code `preflight`
    /// and lists every problem. Simulated registries only check that the
    /// agents exist.
    pub async fn preflight(&self, job: &Job) -> Result<(), ErrorInfo> {
        if let Some(cfg) = &self.real {
            return cfg.preflight(job).await;
        }
        let missing: Vec<String> = job
            .steps
            .iter()
            .filter(|s| !self.contains(&s.agent))
            .map(|s| format!("step {}: unknown agent {:?}", s.step_id, s.agent))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut e = ErrorInfo::new(
            "preflight",
            format!("preflight failed: {}", missing.join("; ")),
        );
        e.details
            .insert("problems".into(), serde_json::json!(missing));
        Err(e)
    }

    /// Adds (or replaces) the worker for `worker.name()`, returning the one
    /// it replaced.
    pub fn insert(&mut self, worker: Arc<dyn Worker>) -> Option<Arc<dyn Worker>> {
        self.workers.insert(worker.name().to_owned(), worker)
    }

    pub fn get(&self, agent: &str) -> Option<Arc<dyn Worker>> {
        self.workers.get(agent).cloned()
    }

    pub fn contains(&self, agent: &str) -> bool {
        self.workers.contains_key(agent)
    }

    /// Registered agent names, sorted (for `known_agents` validation).
    pub fn names(&self) -> Vec<&str> {
        self.workers.keys().map(String::as_str).collect()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("agents", &self.names())
            .field("real", &self.is_real())
            .finish()
    }
}
