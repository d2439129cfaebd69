//! Constructors for the `result.json` documents the store writes on its own:
//! the `running` placeholders that exist from the moment a job or step starts
//! (SPEC §4: every file exists once started), so an observer never finds a
//! missing result and never mistakes a half-run step for a finished one.

use crate::layout::{job_result_paths, step_result_paths};
use contracts::{JobId, ResultDoc, ResultKind, SCHEMA_VERSION, Status, Step, now_rfc3339};
use serde_json::Map;

/// A step result with status `running`, started now. `attempt` is clamped to
/// at least 1 (the schema's minimum). `finished_at` is empty until the step
/// finishes: an empty string is honest, a made-up time is not.
pub fn running_step_result(job_id: &JobId, step: &Step, attempt: u32) -> ResultDoc {
    ResultDoc {
        schema_version: SCHEMA_VERSION.to_owned(),
        kind: ResultKind::Step,
        job_id: job_id.to_string(),
        step_id: Some(step.step_id.to_string()),
        agent: Some(step.agent.clone()),
        role: Some(step.role.clone()),
        status: Status::Running,
        attempts: attempt.max(1),
        started_at: now_rfc3339(),
        finished_at: String::new(),
        summary: format!("step {} attempt {} running", step.step_id, attempt.max(1)),
        change_status: None,
        secrets_check: None,
        artifacts: step_result_paths(&step.step_id),
        metrics: Map::new(),
        error: None,
        steps: None,
    }
}

/// A job result with status `running` and no step results yet.
pub fn running_job_result(job_id: &JobId) -> ResultDoc {
    ResultDoc {
        schema_version: SCHEMA_VERSION.to_owned(),
        kind: ResultKind::Job,
        job_id: job_id.to_string(),
        step_id: None,
        agent: None,
        role: None,
        status: Status::Running,
        attempts: 1,
        started_at: now_rfc3339(),
        finished_at: String::new(),
        summary: format!("job {job_id} running"),
        change_status: None,
        secrets_check: None,
        artifacts: job_result_paths(),
        metrics: Map::new(),
        error: None,
        steps: Some(Vec::new()),
    }
}
