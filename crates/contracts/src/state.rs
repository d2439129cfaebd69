//! The job-level operational documents: `state.json` (rewritten at every
//! transition so an observer always sees the truth) and `context.json` (the
//! conversation handed from step to step). Their JSON Schemas are
//! `contracts/state.schema.json` and `contracts/context.schema.json`.
//!
//! Fields the Python MVP did not write (the claim `attempt`) default when
//! absent so its documents keep loading.

use crate::job::{ContextMessage, ContextStrategy};
use crate::result::Status;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `state.json`: the job's status and every started step's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub job_id: String,
    pub status: Status,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub current_step: Option<String>,
    /// The queue claim number this state was written under (the fencing token).
    #[serde(default)]
    pub attempt: u32,
    /// `goto` jumps taken so far (bounded by `RUNNER_MAX_GOTO`); kept here
    /// so a reclaimed or resumed job does not start counting again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gotos: u32,
    /// Keyed by step id.
    pub steps: BTreeMap<String, StepState>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One step's entry in `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub status: Status,
    /// Attempts made so far.
    #[serde(default)]
    pub attempt: u32,
    pub agent: String,
    pub role: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    #[serde(default)]
    pub summary: String,
}

/// `context.json`: the conversation after the job's `context_strategy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextDoc {
    pub strategy: ContextStrategy,
    pub messages: Vec<ContextMessage>,
    pub updated_at: String,
}
