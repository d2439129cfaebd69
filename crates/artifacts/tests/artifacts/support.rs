//! Fixtures shared by the artifacts integration tests: a complete job, its
//! state, step results, and validation against the shipped result schema.

use contracts::{Job, JobState, ResultDoc, Status, StepState};
use std::path::Path;

/// A complete three-step job (the default pipeline's shape).
pub fn job_fixture(id: &str) -> Job {
    serde_json::from_value(serde_json::json!({
        "schema_version": "1.0",
        "job_id": id,
        "created_at": "2024-05-01T10:00:00Z",
        "source": {"type": "manual", "meta": {}},
        "goal": "add a greeting",
        "workdir": "/srv/orch/workspaces/x/work",
        "steps": [
            {"step_id": "01_plan", "agent": "opencode", "role": "planner", "prompt": "plan it"},
            {"step_id": "02_implement", "agent": "codex", "role": "implementer", "prompt": "do it",
             "input_artifacts": ["steps/01_plan/report.md"]},
            {"step_id": "03_review", "agent": "claude", "role": "reviewer", "prompt": "review it"}
        ],
        "context_window": [{"role": "user", "content": "earlier"}],
        "context_strategy": "full"
    }))
    .expect("fixture job deserialises")
}

pub fn state_fixture(job: &Job) -> JobState {
    JobState {
        job_id: job.job_id.to_string(),
        status: Status::Running,
        started_at: Some(contracts::now_rfc3339()),
        finished_at: None,
        current_step: Some(job.steps[0].step_id.to_string()),
        attempt: 1,
        gotos: 0,
        steps: job
            .steps
            .iter()
            .map(|s| {
                (
                    s.step_id.to_string(),
                    StepState {
                        status: Status::Running,
                        attempt: 0,
                        agent: s.agent.clone(),
                        role: s.role.clone(),
                        started_at: None,
                        finished_at: None,
                        summary: String::new(),
                    },
                )
            })
            .collect(),
    }
}

/// A finished result for step `i` of `job`.
pub fn step_result(job: &Job, i: usize, status: Status) -> ResultDoc {
    let mut r = artifacts::running_step_result(&job.job_id, &job.steps[i], 1);
    r.status = status;
    r.finished_at = contracts::now_rfc3339();
    r.summary = format!("{} {status}", job.steps[i].step_id);
    r.metrics.insert("duration_ms".into(), 12.into());
    r
}

/// Asserts the file at `path` validates against `contracts/result.schema.json`.
pub fn validate_result(path: &Path) {
    let schema: serde_json::Value =
        serde_json::from_str(contracts::schema::RESULT_SCHEMA).expect("schema parses");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("result readable"))
            .expect("result parses");
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{}: {errors:?}", path.display());
}
