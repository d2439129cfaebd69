//! `result.json`, per step (`kind: step`) and per job (`kind: job`), as the
//! Python MVP wrote it. Every result orch writes validates against
//! `contracts/result.schema.json`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Success,
    Failed,
    Retryable,
    Timeout,
    Cancelled,
    NeedsHuman,
    Running,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Retryable => "retryable",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::NeedsHuman => "needs_human",
            Self::Running => "running",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultKind {
    Step,
    Job,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultArtifacts {
    pub report_md: String,
    pub patch_diff: String,
    pub logs_txt: String,
    pub result_json: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub details: Map<String, Value>,
}

impl ErrorInfo {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            details: Map::new(),
        }
    }
}

/// A step or job result. Step-only fields (`step_id`, `agent`, `role`) are
/// `None` on job results and `steps` is `None` on step results, so the
/// serialised form never carries the other kind's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultDoc {
    pub schema_version: String,
    pub kind: ResultKind,
    pub job_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub status: Status,
    pub attempts: u32,
    pub started_at: String,
    pub finished_at: String,
    pub summary: String,
    pub change_status: Option<String>,
    pub secrets_check: Option<String>,
    pub artifacts: ResultArtifacts,
    pub metrics: Map<String, Value>,
    pub error: Option<ErrorInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<ResultDoc>>,
}
