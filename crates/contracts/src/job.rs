//! The job document (`job.json` and every queue file): what to run, in which
//! steps, under which policy. Unknown keys are refused (the MVP silently
//! dropped them); `validate::validate_job` reports every rule violation with
//! a JSON Pointer before a value is ever deserialised into these types.

use crate::ids::{JobId, StepId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub schema_version: String,
    pub job_id: JobId,
    pub created_at: String,
    pub source: Source,
    pub goal: String,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default = "default_workdir")]
    pub workdir: String,
    #[serde(default)]
    pub callback_url: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub context_window: Vec<ContextMessage>,
    #[serde(default)]
    pub context_strategy: ContextStrategy,
    #[serde(default)]
    pub artifact_handoff: ArtifactHandoff,
    #[serde(default)]
    pub policy: Policy,
}

fn default_workdir() -> String {
    ".".to_owned()
}

impl Job {
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.step_id.as_str() == id)
    }

    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.step_id.as_str() == id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[serde(rename = "type")]
    pub kind: SourceType,
    #[serde(default)]
    pub meta: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceType {
    Webhook,
    Manual,
    Cron,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub step_id: StepId,
    pub agent: String,
    pub role: String,
    pub prompt: String,
    #[serde(default = "default_timeout")]
    pub timeout_sec: u32,
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    #[serde(default = "default_backoff")]
    pub retry_backoff_sec: u32,
    #[serde(default)]
    pub input_artifacts: Vec<String>,
    #[serde(default)]
    pub apply_patches_from: Vec<String>,
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// `read` or `write`; absent means the role's default
    /// ([`crate::access::default_access`]). Normalisation fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<crate::Access>,
}

impl Step {
    /// What this step may do to its workspace: the explicit `access`, else
    /// the role table's default (read-only for any unknown role).
    pub fn access(&self) -> crate::Access {
        self.access
            .unwrap_or_else(|| crate::access::default_access(&self.role))
    }
}

pub const DEFAULT_STEP_TIMEOUT_SEC: u32 = 600;
pub const DEFAULT_MAX_RETRIES: u32 = 1;
pub const DEFAULT_RETRY_BACKOFF_SEC: u32 = 2;

fn default_timeout() -> u32 {
    DEFAULT_STEP_TIMEOUT_SEC
}
fn default_retries() -> u32 {
    DEFAULT_MAX_RETRIES
}
fn default_backoff() -> u32 {
    DEFAULT_RETRY_BACKOFF_SEC
}

/// What happens after a step's final attempt fails.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OnFailure {
    #[default]
    Stop,
    Continue,
    AskHuman,
    Goto(StepId),
}

impl OnFailure {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stop" => Some(Self::Stop),
            "continue" => Some(Self::Continue),
            "ask_human" => Some(Self::AskHuman),
            _ => s
                .strip_prefix("goto:")
                .and_then(|t| StepId::parse(t).ok())
                .map(Self::Goto),
        }
    }

    pub fn as_string(&self) -> String {
        match self {
            Self::Stop => "stop".into(),
            Self::Continue => "continue".into(),
            Self::AskHuman => "ask_human".into(),
            Self::Goto(id) => format!("goto:{id}"),
        }
    }
}

impl Serialize for OnFailure {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_string())
    }
}

impl<'de> Deserialize<'de> for OnFailure {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        OnFailure::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "on_failure must be stop, continue, ask_human or goto:<step_id>, got {s:?}"
            ))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContextStrategy {
    Full,
    Summarize,
    #[default]
    Sliding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactHandoff {
    #[default]
    Manual,
    PatchFirst,
    WorkspaceFirst,
}

impl ArtifactHandoff {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "manual" => Some(Self::Manual),
            "patch_first" => Some(Self::PatchFirst),
            "workspace_first" => Some(Self::WorkspaceFirst),
            _ => None,
        }
    }
}

/// One message of the conversation context. Extra keys are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextMessage {
    pub role: String,
    pub content: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default = "yes")]
    pub sandbox: bool,
    #[serde(default)]
    pub network: NetworkPolicy,
    #[serde(default)]
    pub allowed_binaries: Vec<String>,
    #[serde(default)]
    pub requires_approval: bool,
    /// Resource limits this job asks for; each can only lower the runner's
    /// `SANDBOX_*` maxima (and an agent's own `limits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceLimits>,
}

/// Per-step resource limits a job or an agent definition asks for. Every
/// field is optional; a value above the operator's maximum is lowered to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    /// Address space of one agent process, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Processes of the sandbox uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// CPU seconds of one agent process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_sec: Option<u64>,
    /// Size of the sandbox's private /tmp, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp_mb: Option<u64>,
    /// Size of the job's workspace while an agent runs, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_mb: Option<u64>,
}

/// The keys of [`ResourceLimits`] and their ranges (for the validator).
pub const RESOURCE_LIMIT_KEYS: &[(&str, u64, u64)] = &[
    ("memory_mb", 16, 1 << 24),
    ("processes", 1, 1 << 22),
    ("cpu_sec", 1, 1 << 31),
    ("tmp_mb", 1, 1 << 24),
    ("workspace_mb", 1, 1 << 30),
];

fn yes() -> bool {
    true
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            sandbox: true,
            network: NetworkPolicy::Deny,
            allowed_binaries: Vec::new(),
            requires_approval: false,
            limits: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkPolicy {
    #[default]
    Deny,
    Allow,
}
